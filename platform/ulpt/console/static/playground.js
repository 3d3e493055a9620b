// Up to four adapters (or the base model) answer one input side by side, streamed.

import { inference, streamCompletion } from "./api.js";
import { el, errorBox, field } from "./dom.js";

const SLOTS = 4;

export async function playgroundPage(view) {
  const models = (await inference("/v1/models")).data.map((m) => m.id);
  const selects = Array.from({ length: SLOTS }, (_, i) => el("select", { id: `model-${i}`, name: `model-${i}` },
    el("option", { value: "" }, "— none —"), models.map((m) => el("option", { value: m }, m))));
  selects.forEach((s, i) => { if (models[i]) s.value = models[i]; });
  const prompt = el("textarea", { id: "prompt", rows: 3, cols: 70, required: true, maxlength: 4000 });
  const maxTokens = el("input", { id: "max-tokens", type: "number", min: 1, max: 256, value: 32 });
  const answers = el("div", { class: "answers", "aria-live": "polite" });
  const run = el("button", { type: "submit" }, "Run");
  const form = el("form", { "aria-label": "Playground", onsubmit: async (event) => {
    event.preventDefault();
    run.disabled = true;
    const chosen = selects.map((s) => s.value).filter(Boolean);
    const panels = chosen.map((model) => {
      const out = el("pre", { class: "answer-text" });
      return { model, out, box: el("article", { class: "answer", "data-model": model }, el("h2", {}, model), out) };
    });
    answers.replaceChildren(...panels.map((p) => p.box));
    await Promise.all(panels.map(async (p) => {
      try {
        await streamCompletion(p.model, prompt.value, Number(maxTokens.value), (piece) => p.out.append(piece));
        p.box.dataset.done = "true";
      } catch (error) {
        p.box.append(errorBox(error));
        p.box.dataset.done = "error";
      }
    }));
    run.disabled = false;
  } },
  el("div", { class: "filters" }, selects.map((s, i) => field(`Model ${i + 1}`, s))),
  field("Input", prompt),
  field("Max tokens", maxTokens),
  el("p", {}, run));
  view.append(el("h1", {}, "Playground"),
    el("p", { class: "muted" }, "Greedy answers from the inference app, with this tab's key."), form, answers);
}
