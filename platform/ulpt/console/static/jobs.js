// The jobs list (live status) and a page per job: live progress, failures, curves, a histogram,
// cancel and resume.

import { api } from "./api.js";
import { histogram, lineChart } from "./charts.js";
import { el, errorBox, facts, field, table, when } from "./dom.js";

const POLL_MS = 1000;
const FINISHED = new Set(["done", "failed", "cancelled"]);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const statusText = (s) => el("span", { class: `status-${s}` }, s);

export async function jobsPage(view, params, alive) {
  view.append(el("h1", {}, "Jobs"));
  const box = el("div");
  view.append(box);
  while (alive()) {
    const jobs = (await api("/v1/jobs?limit=100")).items;
    box.replaceChildren(jobs.length
      ? table(["Job", "Name", "Status", "Done", "Failed", "Fits", "Created"], jobs.map((j) => [
        el("a", { href: `#/jobs/${j.id}` }, j.id.slice(0, 8)), j.name ?? "", statusText(j.status),
        j.counts.done, j.counts.failed, j.n_fits, when(j.created_at)]))
      : el("p", { class: "muted" }, "No jobs yet: `ulpt train` or POST /v1/jobs starts one."));
    if (jobs.every((j) => FINISHED.has(j.status))) return;
    await sleep(POLL_MS * 2);
  }
}

function rate(job) {
  const ended = job.counts.done + job.counts.failed;
  const started = job.started_at ? new Date(job.started_at).getTime() : null;
  const end = job.finished_at ? new Date(job.finished_at).getTime() : Date.now();
  if (!started || !ended || end <= started) return { perSecond: null, eta: null };
  const perSecond = ended / ((end - started) / 1000);
  const left = job.n_fits - ended;
  return { perSecond, eta: FINISHED.has(job.status) ? 0 : left / perSecond };
}

function progressBlock(job) {
  const ended = job.counts.done + job.counts.failed;
  const { perSecond, eta } = rate(job);
  const verdicts = job.verdicts || {};
  return el("section", { "aria-labelledby": "progress-title" },
    el("h2", { id: "progress-title" }, "Progress"),
    el("progress", { id: "job-progress", max: job.n_fits || 1, value: ended, "aria-label": `${ended} of ${job.n_fits} fits ended` }),
    el("p", { id: "job-counts" }, `${job.counts.done} done, ${job.counts.running} running, ${job.counts.failed} failed, `
      + `${job.counts.pending} pending of ${job.n_fits}`),
    facts([["Status", statusText(job.status)], ["Fits per second", perSecond ? perSecond.toFixed(2) : "—"],
      ["ETA", eta === null ? "—" : `${Math.round(eta)} s`],
      ["Learned", verdicts.evaluated ? `${verdicts.learned} of ${verdicts.evaluated} evaluated fits beat zero-shot` : "—"],
      ["Started", when(job.started_at)], ["Finished", when(job.finished_at)], ["Error", job.error]]));
}

function controls(job, refresh) {
  const status = el("p", { role: "status" });
  const act = (verb) => async () => {
    try { await api(`/v1/jobs/${job.id}/${verb}`, { method: "POST" }); status.replaceChildren(`${verb} requested`); await refresh(); }
    catch (error) { status.replaceChildren(errorBox(error)); }
  };
  return el("div", { class: "actions" },
    FINISHED.has(job.status) ? null : el("button", { type: "button", id: "cancel-job", onclick: act("cancel") }, "Cancel job"),
    job.status === "failed" || job.status === "cancelled"
      ? el("button", { type: "button", class: "secondary", id: "resume-job", onclick: act("resume") }, "Resume job") : null,
    status);
}

function curves(fits) {
  const shown = fits.filter((f) => f.metrics.train_curve?.length).slice(0, 12);
  const train = shown.map((f) => ({ label: f.key, points: f.metrics.train_curve.map((loss, i) => [i + 1, loss]) }));
  const evals = shown.map((f) => ({ label: f.key, points: (f.metrics.eval_history || [])
    .filter((h) => h.eval_loss !== undefined).map((h) => [h.step, h.eval_loss]) }));
  return el("div", { class: "charts" }, lineChart("Training loss", train, "loss"), lineChart("Evaluation loss", evals, "eval loss"));
}

function metricHistogram(fits) {
  const names = [...new Set(fits.flatMap((f) => Object.entries(f.metrics).filter(([, v]) => typeof v === "number").map(([k]) => k)))].sort();
  const chosen = names.includes("eval_accuracy") ? "eval_accuracy" : names[0];
  const box = el("div");
  const draw = (name) => box.replaceChildren(histogram(name, fits.map((f) => f.metrics[name]).filter((v) => typeof v === "number")));
  const select = el("select", { id: "histogram-metric", onchange: (e) => draw(e.target.value) },
    names.map((n) => el("option", { value: n, selected: n === chosen }, n)));
  if (chosen) draw(chosen);
  return el("section", {}, el("h2", {}, "Metric over the job's adapters"),
    names.length ? field("Metric", select) : null, box);
}

export async function jobPage(view, id, alive) {
  let job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
  const head = el("h1", {}, `Job ${job.id}${job.name ? ` — ${job.name}` : ""}`);
  const live = el("div"), actions = el("div"), failures = el("section"), charts = el("section");
  view.append(head, live, actions, failures, charts);
  const refresh = async () => {
    job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    live.replaceChildren(progressBlock(job));
    actions.replaceChildren(controls(job, refresh));
  };
  const details = async () => {
    const fits = (await api(`/v1/jobs/${encodeURIComponent(id)}/fits?curves=true`)).items;
    const failed = fits.filter((f) => f.status === "failed");
    failures.replaceChildren(el("h2", {}, `Failed fits (${failed.length})`), failed.length
      ? table(["Fit", "Attempts", "Reason"], failed.map((f) => [f.key, f.attempts, f.error ?? ""]))
      : el("p", { class: "muted" }, "None."));
    const done = fits.filter((f) => f.status === "done");
    charts.replaceChildren(el("h2", {}, "Curves"), curves(done), metricHistogram(done));
  };
  await refresh();
  await details();
  let tick = 0;
  while (alive() && !FINISHED.has(job.status)) {
    await sleep(POLL_MS);
    if (!alive()) return;
    try {
      await refresh();
      if (++tick % 5 === 0 || FINISHED.has(job.status)) await details();
    } catch (error) {
      live.append(errorBox(error));
      return;
    }
  }
}
