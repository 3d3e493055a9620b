"""A chat conversation as the one prompt text the base model continues, in the model's own template."""

from __future__ import annotations

from typing import Any

from ulpt_serving.protocol import ApiError, ChatMessage


def chat_prompt(tokenizer: Any, messages: list[ChatMessage]) -> str:
    """The conversation, ending where the assistant's answer starts. `developer` is OpenAI's newer name
    for `system`, which is the role chat templates know."""
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in messages]
    if not getattr(tokenizer, "chat_template", None):
        # A model without a chat template (tiny test models): a plain transcript.
        return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant:"
    try:
        return str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
    except Exception as exc:  # jinja raises its own errors for conversations the template refuses
        raise ApiError(
            400, f"messages: the model's chat template refused them: {exc}", param="messages"
        ) from None
