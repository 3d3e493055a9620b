// Building the page from data without ever parsing it as HTML: text goes in as text.

/** el("a", {href: "#/x", class: "y"}, "text", child, ...) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const svg = (tag, attrs = {}, ...children) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

export function table(columns, rows, caption) {
  return el("table", {},
    caption ? el("caption", { class: "muted" }, caption) : null,
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))),
  );
}

export function facts(entries) {
  return el("dl", { class: "facts" }, entries.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value ?? "—")]));
}

export const fmt = (value, digits = 3) =>
  value === undefined || value === null ? "" : typeof value === "number" && !Number.isInteger(value) ? value.toFixed(digits) : String(value);

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

export function errorBox(error) {
  const message = error?.status === 404 ? "Not found (or not visible to this key)." : error?.message || String(error);
  return el("p", { class: "error", role: "alert" }, message);
}

/** A labelled control: the label names the control alone (its `for` points at the control's id). */
export function field(text, control) {
  return el("div", { class: "field" }, el("label", { for: control.id }, text), control);
}
