// The console's router: #/adapters, #/adapters/REF, #/jobs, #/jobs/ID, #/playground.

import { ApiError, api, forgetKey, hasKey, loadConfig, needsKey, setKey } from "./api.js";
import { adapterPage, adaptersPage } from "./adapters.js";
import { el, errorBox, field } from "./dom.js";
import { jobPage, jobsPage } from "./jobs.js";
import { playgroundPage } from "./playground.js";

const main = document.getElementById("main");
let visit = 0; // bumped on every navigation; a page's timers stop when it is no longer current

function keyForm(message) {
  const input = el("input", { id: "api-key", type: "password", autocomplete: "off", required: true, size: 48 });
  const form = el("form", { "aria-label": "Sign in", onsubmit: async (event) => {
    event.preventDefault();
    setKey(input.value.trim());
    try {
      await api("/v1/adapters?limit=1");
      route();
    } catch (error) {
      forgetKey();
      main.replaceChildren(keyForm(error instanceof ApiError && error.status === 401 ? "That key was refused." : error.message));
    }
  } },
  el("h1", {}, "Sign in with an API key"),
  el("p", { class: "muted" }, "The key stays in this tab only and is sent to the API as a bearer token."),
  field("API key", input),
  el("p", {}, el("button", { type: "submit" }, "Use this key")),
  message ? el("p", { class: "error", role: "alert" }, message) : null);
  return form;
}

async function route() {
  const token = ++visit;
  const alive = () => token === visit; // a page polls only while it is the one shown
  const [path, query] = (location.hash.slice(1) || "/adapters").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  document.getElementById("forget-key").hidden = !hasKey();
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.section === parts[0]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (needsKey()) {
    main.replaceChildren(keyForm());
    return;
  }
  const view = el("div");
  main.replaceChildren(view);
  try {
    if (parts[0] === "adapters" && parts.length > 1) await adapterPage(view, parts.slice(1).join("/"), alive);
    else if (parts[0] === "jobs" && parts.length > 1) await jobPage(view, parts[1], alive);
    else if (parts[0] === "jobs") await jobsPage(view, params, alive);
    else if (parts[0] === "playground") await playgroundPage(view, params, alive);
    else await adaptersPage(view, params, alive);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      forgetKey();
      main.replaceChildren(keyForm("The key was refused; enter another."));
    } else {
      view.append(errorBox(error));
    }
  }
}

document.getElementById("forget-key").addEventListener("click", () => { forgetKey(); route(); });
window.addEventListener("hashchange", route);
loadConfig().then(route, (error) => main.replaceChildren(errorBox(error)));
