"""The path of a completion or chat request, from its HTTP request to its answer or its event stream.

Everything that can be refused is checked before the request joins the decode loop (caller, body,
model, limits, sampling: see `admission`), so a refusal never costs a decode step. Every request then
streams from that loop token by token; a non-streaming one just collects. However a request ends, it
writes exactly one request log line, with the tokens really decoded for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ulpt_serving import answers, openapi, protocol, responses
from ulpt_serving.admission import MAX_BODY_BYTES, Admission
from ulpt_serving.bodies import read_body
from ulpt_serving.chat_template import chat_prompt
from ulpt_serving.decodeloop import DecodeLoop
from ulpt_serving.engine import BatchItem, RowFailure, TextStream
from ulpt_serving.limits import HeldStream
from ulpt_serving.protocol import ApiError, ChatCompletionRequest, CompletionRequest
from ulpt_serving.requestlog import RequestInfo, RequestLog
from ulpt_serving.resolve import AdapterResolution
from ulpt_serving.vllm_engine import VllmDecodeLoop

logger = logging.getLogger("ray.serve").getChild("ulpt")


class Generation:
    """`/v1/completions` and `/v1/chat/completions` of one replica."""

    def __init__(
        self,
        admission: Admission,
        adapters: AdapterResolution,
        loop: DecodeLoop | VllmDecodeLoop,
        requests: RequestLog,
    ) -> None:
        self.admission = admission
        self.adapters = adapters
        self.loop = loop
        self.requests = requests
        self.model = loop.engine.model

    async def respond(self, request: Request, chat: bool) -> Response:
        info = RequestInfo("chat" if chat else "completions")
        rid = responses.new_id("chatcmpl" if chat else "cmpl")
        items: list[BatchItem] = []
        held: dict[str, bool] = {}  # the tenant's slots this request holds: request, stream
        try:
            info.tenant = await self.admission.tenant(request)
            self.admission.take_slot(info.tenant)
            held["request"] = True
            raw = await read_body(request, MAX_BODY_BYTES, ApiError, limits=self.admission.config.limits)
            body: Any = protocol.parse_body(raw, ChatCompletionRequest if chat else CompletionRequest)
            target = await self.adapters.target(info.tenant, body.model)
            info.label = target.label
            texts = [chat_prompt(self.model.tokenizer, body.messages)] if chat else body.prompts
            self.admission.check_prompts(texts, body.stream)
            inputs = self.admission.tokenize_inputs(texts, target.n_tokens, chat)
            counts = [len(ids) for ids in inputs]
            params = self.admission.sampling(body, chat, max(counts) + target.n_tokens)
            items = [
                BatchItem(t, params, target.adapter_key, target.adapter, token_ids=tuple(ids))
                for t, ids in zip(texts, inputs)
            ]
            info.prompt_tokens = sum(counts)
            if body.stream:
                self.admission.take_slot(info.tenant, stream=True)
                held["stream"] = True
                info.stream = True
                events = self._stream(items[0], body, rid, chat, info)
                release = partial(self.admission.slots.release, info.tenant, stream=True)
                held.clear()  # the response gives them back when the stream is over
                return HeldStream(
                    events, release, media_type="text/event-stream", headers=responses.SSE_HEADERS
                )
            results = await self._collect_all(items)
        except ApiError as exc:
            self.requests.record(info, exc.status)
            return responses.error_response(exc)
        except asyncio.CancelledError:
            self.requests.record(info, 499, sum(it.control.generated for it in items))  # client went away
            raise
        except Exception:
            logger.exception("request %s failed", rid)
            self.requests.record(info, 500, sum(it.control.generated for it in items))
            return responses.error_response(answers.internal_error())
        finally:
            if held:
                self.admission.slots.release(info.tenant, stream=held.get("stream", False))
        completion_tokens = sum(len(r.token_ids) for r in results)
        self.requests.record(info, 200, completion_tokens)
        if chat:
            first = results[0]
            out = responses.chat(
                rid,
                body.model,
                first.sent,
                first.finish_reason or "length",
                info.prompt_tokens,
                completion_tokens,
            )
        else:
            choices = [(r.sent, r.finish_reason or "length") for r in results]
            out = responses.completion(rid, body.model, choices, info.prompt_tokens, completion_tokens)
        return JSONResponse(out)

    async def _collect_all(self, items: list[BatchItem]) -> list[TextStream]:
        """Every prompt of a request; when one fails (or the client leaves), the others stop decoding."""
        try:
            return list(await asyncio.gather(*(self._collect(item) for item in items)))
        except BaseException:
            for item in items:
                item.control.abandon()
            raise

    async def _collect(self, item: BatchItem) -> TextStream:
        return await collect_row(self.loop, item)

    async def _stream(
        self, item: BatchItem, body: Any, rid: str, chat: bool, info: RequestInfo
    ) -> AsyncIterator[bytes]:
        """Server-sent events of one row. A client that disconnects (499) abandons the row, which leaves
        the batch at the next step; its log line is written then, with the tokens really decoded."""
        stream = TextStream(self.model, item.params)
        status = 200

        def chunk(text: str | None, finish: str | None) -> bytes:
            if chat:
                delta = openapi.ChatDelta() if text is None else openapi.ChatDelta(content=text)
                return responses.sse(responses.chat_chunk(rid, body.model, delta, finish))
            return responses.sse(responses.completion_chunk(rid, body.model, text or "", finish))

        try:
            if chat:
                opening = openapi.ChatDelta(role="assistant", content="")
                yield responses.sse(responses.chat_chunk(rid, body.model, opening, None))
            async for token in self.loop.rows(item):
                if isinstance(token, RowFailure):
                    raise token.error
                delta = stream.push(token)
                if delta:
                    yield chunk(delta, None)
                if stream.done:
                    break
            tail = stream.finish()
            if tail:
                yield chunk(tail, None)
            yield chunk(None, stream.finish_reason)
            if body.include_usage:
                usage = responses.usage_chunk(
                    rid, body.model, chat, info.prompt_tokens, len(stream.token_ids)
                )
                yield responses.sse(usage)
            yield responses.SSE_DONE
        except (asyncio.CancelledError, GeneratorExit):
            status = 499  # the client went away
            raise
        except Exception:
            status = 500
            logger.exception("stream %s failed", rid)
            yield responses.sse(responses.error_body(answers.internal_error()))
            yield responses.SSE_DONE
        finally:
            if stream.done or status != 499:
                item.control.abandon()
                self.requests.record(info, status, item.control.generated)
            else:
                item.control.abandon(partial(self.requests.record, info, status))


async def collect_row(loop: DecodeLoop | VllmDecodeLoop, item: BatchItem) -> TextStream:
    """One row of a non-streaming request: its tokens into a TextStream until it says done.

    A row that ends early (a failure, or the request abandoned) stops decoding for the others' sake.
    """
    stream = TextStream(loop.engine.model, item.params, incremental=False)
    try:
        async for token in loop.rows(item):
            if isinstance(token, RowFailure):
                raise token.error
            stream.push(token)
            if stream.done:
                break
    finally:
        if not stream.done:
            item.control.abandon()
    stream.finish()
    return stream
