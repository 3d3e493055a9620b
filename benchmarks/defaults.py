"""Do adapters learn by default? The measured defaults against a packed learning-rate sweep and the
paper's rate, at the same budget, on SmolLM2-135M and five BIG-bench tasks.

For each task, method (ULPT r=2, PT) and seed, three fits train packed in the same forward passes:
  - measured: no lr, so the method's measured default (`ulpt.training.defaults`, preset "measured");
  - sweep: `lr: [0.03, 0.1, 0.3]`, the best candidate on the fit's validation rows kept;
  - paper: preset "paper" (lr 1e-2 for every method, the paper's setting).
Each fit records its own verdict (`learned`: beat zero-shot on its validation rows beyond the binomial
95% half-width), and every kept adapter is scored on a separate test split, where the same rule gives
`learned on test`. Accuracies carry a 95% binomial interval over the test rows.

    .venv/bin/python benchmarks/defaults.py              # SmolLM2, 5 tasks (about an hour on 2 CPUs)
    .venv/bin/python benchmarks/defaults.py --smoke      # tiny random model, synthetic tasks, seconds

Writes benchmarks/results/defaults.json and its table into docs/accuracy.md (between markers).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy  # noqa: E402  (the accuracy benchmark's data, model and scoring helpers)
import torch  # noqa: E402

TASKS = accuracy.CANDIDATE_TASKS + ("unit_conversion/chained_conversion", "winowhy")
"""The accuracy benchmark's tasks, plus two chosen for room to learn: chained_conversion (zero-shot
0.28, a 16-step PT run 0.34 in the accuracy benchmark's screen) and winowhy (two labels, 2,862 rows)."""
ARMS = ("measured", "sweep", "paper")
SWEEP = [0.03, 0.1, 0.3]
BEGIN, END = "<!-- defaults:begin -->", "<!-- defaults:end -->"


@dataclass
class Settings:
    """Sizes of one run: 5 tasks x 2 methods x 3 arms x 2 seeds (20 candidates a task, packed)."""

    tasks: tuple[str, ...] = TASKS
    methods: tuple[tuple[str, int], ...] = (("ulpt", 2), ("pt", 2))
    n_tokens: int = 10
    steps: int = 30
    batch_size: int = 2
    eval_every: int = 15
    seeds: int = 2
    val_rows: int = 32
    test_rows: int = 64
    max_rows_per_forward: int = 64
    threads: int = 2
    smoke: bool = False


@dataclass
class Run:
    settings: dict[str, Any]
    started: str
    results: list[dict[str, Any]] = field(default_factory=list)  # one per kept adapter
    zero_shot: dict[str, float] = field(default_factory=dict)  # task -> test accuracy
    seconds: dict[str, float] = field(default_factory=dict)


def requests_for(task: accuracy.TaskData, s: Settings) -> list[Any]:
    from ulpt.adapters import AdapterSpec
    from ulpt.training import FitRequest, TrainConfig

    out = []
    for method, rank in s.methods:
        for seed in range(s.seeds):
            spec = AdapterSpec(method=method, n_tokens=s.n_tokens, rank=rank, seed=seed)
            base = TrainConfig(
                steps=s.steps, batch_size=s.batch_size, eval_every=s.eval_every, seed=seed,
                max_eval_rows=s.val_rows,
            )  # fmt: skip
            arms = {"measured": base, "sweep": base.model_copy(update={"lr": SWEEP})}
            arms["paper"] = base.model_copy(update={"preset": "paper"})
            for arm, config in arms.items():
                out.append(FitRequest(f"{method}|{seed}|{arm}", spec, task.train, task.val, config))
    return out


def run_task(model: Any, task: accuracy.TaskData, s: Settings, run: Run) -> None:
    from ulpt.training.verdict import accuracy_margin

    trained = accuracy.train_packed(model, requests_for(task, s), s, task.name)  # type: ignore[arg-type]
    prompts: dict[str, Any] = {key: adapter for key, (adapter, _) in trained.items()}
    test = accuracy.test_accuracy(model, {**prompts, "zero-shot": None}, task.test, s)  # type: ignore[arg-type]
    zero, n = test.pop("zero-shot"), len(task.test)
    run.zero_shot[task.name] = zero
    for key, (_, metrics) in trained.items():
        method, seed, arm = key.split("|")
        run.results.append(
            {
                "task": task.name, "method": method, "seed": int(seed), "arm": arm, "lr": metrics["lr"],
                "learned": metrics.get("learned"), "val_accuracy": metrics.get("eval_accuracy"),
                "zero_shot_val": metrics.get("zero_shot_accuracy"), "test_accuracy": test[key],
                "learned_on_test": float(test[key] - zero > accuracy_margin(zero, n)), "test_rows": n,
            }
        )  # fmt: skip


def interval(p: float, n: int) -> float:
    return 1.96 * math.sqrt(p * (1 - p) / n) if n else 0.0


def summary(run: Run) -> list[dict[str, Any]]:
    """Per method and arm over every task and seed: share learned (validation, test) and accuracy."""
    rows = []
    for method, _ in [tuple(m) for m in run.settings["methods"]]:
        for arm in ARMS:
            got = [r for r in run.results if r["method"] == method and r["arm"] == arm]
            if not got:
                continue
            n_test = sum(r["test_rows"] for r in got)
            acc = sum(r["test_accuracy"] * r["test_rows"] for r in got) / n_test
            lrs = sorted({r["lr"] for r in got})
            rows.append(
                {
                    "method": method, "arm": arm, "fits": len(got), "lr": lrs,
                    "learned": statistics.mean(r["learned"] or 0.0 for r in got),
                    "learned_on_test": statistics.mean(r["learned_on_test"] for r in got),
                    "test_accuracy": acc, "interval": interval(acc, n_test),
                }
            )  # fmt: skip
    return rows


def document(run: Run) -> str:
    s = run.settings
    zero = statistics.mean(run.zero_shot.values()) if run.zero_shot else 0.0
    lines = [
        BEGIN,
        "## Do adapters learn by default? (`benchmarks/defaults.py`)",
        "",
        f"{'a tiny random model (smoke run)' if s['smoke'] else 'SmolLM2-135M'}, "
        f"{s.get('task_source', 'BIG-bench')} tasks: "
        f"{', '.join(f'`{t}`' for t in run.zero_shot)}; {s['steps']} steps of "
        f"{s['batch_size']} rows, n_tokens {s['n_tokens']}, {s['seeds']} seeds; every fit's verdict on "
        f"its {s['val_rows']} validation rows, accuracy on {s['test_rows']} test rows per task "
        f"(zero-shot on test, mean over tasks: {zero:.3f}). `measured`: no lr given (the method's "
        f"default); `sweep`: lr {SWEEP}, best on validation kept; `paper`: lr 1e-2. Same budget per "
        "candidate, all packed in the same forward passes. ± is the 95% binomial half-width over all "
        "test rows of the cell.",
        "",
        "| method | arm | fits | lr used | learned (validation) | learned (test) | test accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary(run):
        lr = ", ".join(f"{x:g}" for x in r["lr"])
        lines.append(
            f"| {r['method']} | {r['arm']} | {r['fits']} | {lr} | {r['learned']:.0%} | "
            f"{r['learned_on_test']:.0%} | {r['test_accuracy']:.3f} ± {r['interval']:.3f} |"
        )
    lines += ["", "Per task (test accuracy, mean over seeds; zero-shot first):", ""]
    lines += ["| task | zero-shot | " + " | ".join(f"{m} {a}" for m, _ in s["methods"] for a in ARMS) + " |"]
    lines += ["|---|---|" + "---|" * (len(s["methods"]) * len(ARMS))]
    for task, z in run.zero_shot.items():
        cells = []
        for m, _ in s["methods"]:
            for a in ARMS:
                cell = (task, m, a)
                accs = [r["test_accuracy"] for r in run.results if (r["task"], r["method"], r["arm"]) == cell]
                cells.append(f"{statistics.mean(accs):.3f}" if accs else "")
        lines.append(f"| `{task}` | {z:.3f} | " + " | ".join(cells) + " |")
    total = run.seconds.get("total")
    missing = [t for t in s["tasks"] if t not in run.zero_shot]
    if missing:  # a stopped run reports what it finished, and says so
        lines += ["", f"A stopped run: {len(run.zero_shot)} of {len(s['tasks'])} tasks finished; not run: "
                  + ", ".join(f"`{t}`" for t in missing) + "."]  # fmt: skip
    lines += ["", f"Run {run.started}" + (f", {total:.0f} s." if total else "."), END]
    return "\n".join(lines) + "\n"


def write_section(doc: Path, section: str) -> None:
    """Replace the marked section of the accuracy document (or append it); the rest stays as written."""
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    doc.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny random model and synthetic tasks (seconds)"
    )
    parser.add_argument("--out", type=Path, default=accuracy.RESULTS, help="folder for defaults.json")
    parser.add_argument(
        "--doc", type=Path, default=accuracy.DOC, help="document whose marked section is written"
    )
    parser.add_argument("--tasks", help="comma-separated BIG-bench tasks instead of the defaults")
    parser.add_argument(
        "--fetch-bigbench",
        action="store_true",
        help="fetch missing BIG-bench tasks from the network (without it: the cache and $ULPT_BIGBENCH, "
        "else the tasks ulpt generates)",
    )
    parser.add_argument("--steps", type=int, help=f"optimizer steps per candidate (default {Settings.steps})")
    parser.add_argument("--seeds", type=int, help=f"seeds per method and arm (default {Settings.seeds})")
    parser.add_argument(
        "--report-only", action="store_true", help="the document from defaults.json (of a stopped run too)"
    )
    args = parser.parse_args(argv)
    if args.report_only:
        run = Run(**json.loads((args.out / "defaults.json").read_text()))
        write_section(args.doc, document(run))
        return 0
    s = Settings()
    if args.smoke:
        s = Settings(
            tasks=("synthetic/a", "synthetic/b"), n_tokens=4, steps=6, eval_every=3, val_rows=8,
            test_rows=12, threads=1, smoke=True,
        )  # fmt: skip
    if args.tasks:
        s = replace(s, tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()))
    s = replace(s, steps=args.steps or s.steps, seeds=args.seeds or s.seeds)
    torch.set_num_threads(s.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    run = Run(settings=asdict(s), started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    total = time.monotonic()
    sizes = accuracy.Settings(val_rows=s.val_rows, test_rows=s.test_rows, smoke=s.smoke)
    model = accuracy.load_model(sizes, args.out)
    if s.smoke:
        tasks = [accuracy.synthetic_task(name, i, sizes) for i, name in enumerate(s.tasks)]
        run.settings["task_source"] = "synthetic"
    else:
        tasks, run.settings["task_source"] = accuracy.candidate_tasks(s.tasks, sizes, args.fetch_bigbench)
    for task in tasks:
        started = time.monotonic()
        run_task(model, task, s, run)
        run.seconds[task.name] = time.monotonic() - started
        (args.out / "defaults.json").write_text(json.dumps(asdict(run), indent=2) + "\n")
    run.seconds["total"] = time.monotonic() - total
    (args.out / "defaults.json").write_text(json.dumps(asdict(run), indent=2) + "\n")
    section = document(run)
    write_section(args.doc, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
