// Calls to the control plane and the inference app with the visitor's key (kept for this tab only).

const KEY = "ulpt.console.key";
let config = { api_base: "", inference_base: "", auth: true };

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function loadConfig() {
  const response = await fetch("config.json");
  config = await response.json();
  return config;
}

export const needsKey = () => config.auth && !sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const forgetKey = () => sessionStorage.removeItem(KEY);
export const hasKey = () => Boolean(sessionStorage.getItem(KEY));

function headers(json) {
  const out = {};
  const key = sessionStorage.getItem(KEY);
  if (key) out.Authorization = `Bearer ${key}`;
  if (json) out["Content-Type"] = "application/json";
  return out;
}

async function failure(response) {
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    message = body?.error?.message || body?.detail || message;
  } catch { /* not JSON */ }
  return new ApiError(response.status, message);
}

/** JSON from the control plane: api("/v1/jobs"), api(path, {method: "POST", body: {...}}). */
export async function api(path, { method = "GET", body, base = config.api_base } = {}) {
  const response = await fetch(base + path, {
    method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export const inference = (path) => api(path, { base: config.inference_base });

/** A file from the control plane (a download needs the key, so it cannot be a plain link). */
export async function download(path, filename) {
  const response = await fetch(config.api_base + path, { headers: headers(false) });
  if (!response.ok) throw await failure(response);
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Stream a completion; onText(piece) for each piece, resolves with the whole text. */
export async function streamCompletion(model, prompt, maxTokens, onText, signal) {
  const response = await fetch(`${config.inference_base}/v1/completions`, {
    method: "POST",
    headers: headers(true),
    body: JSON.stringify({ model, prompt, max_tokens: maxTokens, temperature: 0, stream: true }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  let text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    const events = buffered.split("\n\n");
    buffered = events.pop();
    for (const event of events) {
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message || "the stream failed");
      const piece = chunk.choices?.[0]?.text ?? "";
      text += piece;
      onText(piece);
    }
  }
  return text;
}
