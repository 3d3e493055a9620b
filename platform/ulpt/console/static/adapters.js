// The adapters table (the catalog's filters, sort and cursor) and a page per adapter.

import { api, download } from "./api.js";
import { el, errorBox, facts, field, fmt, table, when } from "./dom.js";

const FILTERS = [
  ["name", "Name", "text"], ["tag", "Tag (key=value)", "text"], ["base_model", "Base model", "text"],
  ["rank", "Rank", "number"], ["metric", "Metric threshold (e.g. eval_accuracy>=0.8)", "text"],
  ["created_after", "Created since", "date"],
];
const METHODS = ["", "ulpt", "pt", "dpt", "lopt1", "lopt2"];
const SORTS = [["-created_at", "Newest"], ["created_at", "Oldest"], ["name", "Name"],
  ["-metrics.eval_accuracy", "Best eval accuracy"], ["metrics.eval_loss", "Lowest eval loss"]];

const adapterLink = (record) => el("a", { href: `#/adapters/${encodeURIComponent(record.ref)}` }, record.ref);

function filterForm(params) {
  const input = ([name, text, type]) => field(text,
    el("input", { id: `filter-${name}`, name, type, value: params.get(name) ?? "", min: type === "number" ? 1 : undefined }));
  const select = (name, text, options) => field(text, el("select", { id: `filter-${name}`, name },
    options.map(([value, label]) => el("option", { value, selected: params.get(name) === value }, label))));
  return el("form", { class: "filters", role: "search", "aria-label": "Filter adapters", onsubmit: (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [name, value] of new FormData(event.target)) if (value) query.set(name, value);
    location.hash = `#/adapters?${query}`;
  } },
  FILTERS.map(input),
  select("method", "Method", METHODS.map((m) => [m, m || "any"])),
  select("sort", "Sort", SORTS),
  el("button", { type: "submit" }, "Apply"));
}

export async function adaptersPage(view, params) {
  view.append(el("h1", {}, "Adapters"), filterForm(params));
  const query = new URLSearchParams({ limit: "25" });
  for (const [name, value] of params) {
    if (name === "created_after") query.set(name, new Date(value).toISOString());
    else if (value) query.set(name, value);
  }
  const page = await api(`/v1/adapters?${query}`);
  const rows = page.items.map((r) => [adapterLink(r), r.method, r.rank, r.n_tokens, r.base_model,
    fmt(r.metrics.eval_accuracy), fmt(r.metrics.eval_loss), r.metrics.learned === undefined ? "" : r.metrics.learned >= 1 ? "yes" : "no",
    when(r.created_at)]);
  view.append(page.items.length
    ? table(["Adapter", "Method", "r", "n", "Base model", "Eval accuracy", "Eval loss", "Learned", "Created"], rows,
      `${page.items.length} adapter(s) on this page`)
    : el("p", { class: "muted", role: "status" }, "No adapters match."));
  const actions = el("div", { class: "actions" });
  if (params.get("cursor")) {
    const first = new URLSearchParams(params);
    first.delete("cursor");
    actions.append(el("a", { href: `#/adapters?${first}` }, "First page"));
  }
  if (page.next_cursor) {
    const next = new URLSearchParams(params);
    next.set("cursor", page.next_cursor);
    actions.append(el("a", { href: `#/adapters?${next}`, rel: "next" }, "Next page"));
  }
  view.append(actions);
}

function aliasControls(record, aliases, refresh) {
  const mine = aliases.filter((a) => a.ref === record.ref);
  const input = el("input", { id: "alias-name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}" });
  const status = el("p", { role: "status" });
  const act = (work) => async (event) => {
    event.preventDefault();
    try { await work(); await refresh(); } catch (error) { status.replaceChildren(errorBox(error)); }
  };
  return el("section", { "aria-labelledby": "aliases-title" },
    el("h2", { id: "aliases-title" }, "Aliases"),
    mine.length ? el("ul", {}, mine.map((a) => el("li", {}, `${a.alias} → ${a.ref} `,
      el("button", { type: "button", class: "secondary",
        onclick: act(() => api(`/v1/aliases/${encodeURIComponent(a.alias)}/rollback`, { method: "POST" })) },
      `Roll back ${a.alias}`))))
      : el("p", { class: "muted" }, "No alias points here."),
    el("form", { onsubmit: act(() => api(`/v1/aliases/${encodeURIComponent(input.value)}`, { method: "PUT", body: { target: record.ref } })) },
      field("Promote to alias", input), el("button", { type: "submit" }, "Promote")),
    status);
}

export async function adapterPage(view, ref) {
  const record = await api(`/v1/adapters/${encodeURIComponent(ref)}`);
  const [versions, aliases] = await Promise.all([
    api(`/v1/adapters?${new URLSearchParams({ name: record.name, status: "all", sort: "-version", limit: "50" })}`),
    api("/v1/aliases"),
  ]);
  const lineage = record.lineage || {};
  const spec = `${record.method}, n_tokens ${record.n_tokens}, rank ${record.rank}, ${record.projection ?? ""}`;
  view.append(
    el("h1", {}, `Adapter ${record.ref}`),
    facts([["Status", record.status], ["Specification", spec], ["Seed", record.seed],
      ["Projection fingerprint", record.projection_fingerprint], ["Trainable parameters", record.num_trainable_params],
      ["Bytes", record.blob_size], ["Base model", record.base_model], ["Created", when(record.created_at)],
      ["Tags", Object.entries(record.tags).map(([k, v]) => `${k}=${v}`).join(", ")]]),
    el("h2", {}, "Metrics"),
    facts(Object.entries(record.metrics).filter(([, v]) => typeof v !== "object").map(([k, v]) => [k, fmt(v, 4)])),
    el("h2", {}, "Lineage"),
    facts([["Job", lineage.job ? el("a", { href: `#/jobs/${lineage.job.id ?? lineage.job}` }, String(lineage.job.id ?? lineage.job)) : null],
      ["Parent", lineage.parent ? el("a", { href: `#/adapters/${encodeURIComponent(lineage.parent)}` }, lineage.parent) : null],
      ["Dataset fingerprint", lineage.dataset_fingerprint]]),
    el("h2", {}, "Versions"),
    table(["Version", "Status", "Eval accuracy", "Created"], versions.items.map((v) => [adapterLink(v), v.status, fmt(v.metrics.eval_accuracy), when(v.created_at)])),
  );
  const aliasBox = el("div");
  const refresh = async () => aliasBox.replaceChildren(aliasControls(record, (await api("/v1/aliases")).items, refresh));
  aliasBox.append(aliasControls(record, aliases.items, refresh));
  const status = el("p", { role: "status" });
  const get = (format, name) => async () => {
    try { await download(`/v1/adapters/${encodeURIComponent(record.ref)}/download?format=${format}`, name); }
    catch (error) { status.replaceChildren(errorBox(error)); }
  };
  view.append(aliasBox, el("h2", {}, "Download"), el("div", { class: "actions" },
    el("button", { type: "button", onclick: get("ulpt", `${record.name}-v${record.version}.safetensors`) }, "ulpt (safetensors)"),
    el("button", { type: "button", class: "secondary", onclick: get("peft", `${record.name}-v${record.version}-peft.zip`) }, "PEFT (zip)")),
    status);
}
