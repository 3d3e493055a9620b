"""The GPU path's device check: one short run that says whether the CUDA code does what the CPU tests
can only count. Under 4 minutes on one H100, no network, no Ray, no vLLM.

    python benchmarks/gpu_check.py                      # CUDA: tiny and SmolLM2-sized models, bf16
    python benchmarks/gpu_check.py --device cpu         # the same code at a small size, a few minutes

Needs torch and transformers (older releases than the locks will do; the versions are printed) plus
ulpt's source on PYTHONPATH (platform/) and the few pure-Python packages its model and training code
import: pydantic (with pydantic-core, annotated-types, typing-inspection), sqlalchemy and rich, about
8 MiB of wheels. No weights: both models are random, built from a config (SmolLM2-135M's own shape).

It reports, and exits non-zero when a goal is missed:
  (1) syncs: one packed step of 64 fits under `torch.cuda.set_sync_debug_mode("warn")`, counting
      the host syncs and where they happen (goal: at most 1, the read of the step's losses), then
      under "error" where the first one raises;
  (2) training: packed fits/s and MFU at K = 1, 64 and 1,024 fits on each model (FLOPs counted as
      `gpu_flops.py` does, against the exact device's dense peak in the model's dtype);
  (3) decoding: the native engine's tokens/s, rows mixing 64 adapters against the base model alone;
  (4) bf16 mixed vs solo: each row's greedy tokens over 32 steps and its next-token logits, mixed
      into one batch and alone (goal: the same tokens, logits within 2e-2; a divergence where the
      solo run's top two logits are within that tolerance is a tie, reported but not a failure).
Writes benchmarks/results/gpu_check.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import transformers
from gpu_flops import device_name, peak_tflops, training_flops

try:
    import ulpt
    from ulpt.models.loading import wrap_base_model
    from ulpt.models.tiny import build_tiny_model, build_tokenizer
    from ulpt.training import FitRequest, FitState, PackedTrainer, TrainConfig
    from ulpt.training.api import prepare_fit
except ImportError as exc:
    sys.exit(
        f"gpu_check: cannot import ulpt's model code ({exc}); put platform/ on PYTHONPATH and carry the wheel"
    )

HERE = Path(__file__).resolve().parent
SMOLLM2_135M = {  # SmolLM2-135M's config.json, less its token ids: the shape is what costs
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rope_theta": 100000,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 1,
}
FULL = {"fits": (1, 64, 1024), "smollm2_fits": (1, 64, 1024), "steps": 3, "rows_per_forward": 256,
        "decode_rows": 64, "decode_tokens": 32, "smollm2_layers": 30}  # fmt: skip
SMALL = {"fits": (1, 4, 16), "smollm2_fits": (1, 4), "steps": 2, "rows_per_forward": 16,
         "decode_rows": 4, "decode_tokens": 8, "smollm2_layers": 2}  # fmt: skip
LOGITS_TOL = 2e-2
GREEDY_STEPS = 32


def smollm2_sized(device: torch.device, dtype: torch.dtype, layers: int) -> ulpt.BaseModel:
    """A random model of SmolLM2-135M's shape, built from a config file (no weights), on `device`."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps({**SMOLLM2_135M, "num_hidden_layers": layers}))
        config = transformers.AutoConfig.from_pretrained(tmp)
    torch.manual_seed(0)
    with torch.device(device):
        hf = transformers.AutoModelForCausalLM.from_config(config)
    return wrap_base_model(hf.to(dtype), build_tokenizer(), name=f"smollm2-135m-shaped-{layers}l")


def fits(model: ulpt.BaseModel, count: int, steps: int) -> list[FitState]:
    """`count` ULPT r=2 fits, each with its own rows (tokenized here, before any clock starts)."""
    words = "good bad quiet loud clean dirty fast slow warm cold friendly rude cheap pricey".split()
    out = []
    for i in range(count):
        rows = [
            {"input": "Review: " + " ".join(words[(i + j * k) % 14] for k in range(6 + j)) + "\nVerdict:",
             "target": " positive" if (i + j) % 2 else " negative"}
            for j in range(8)
        ]  # fmt: skip
        spec = ulpt.AdapterSpec(method="ulpt", n_tokens=10, rank=2, seed=i)
        config = TrainConfig(steps=steps, lr=0.1, batch_size=4, seed=i)
        out.append(prepare_fit(model, FitRequest(f"fit-{i}", spec, rows, (), config)))
    for fit in out:
        fit.adapter.to(model.device)
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sync_check(model: ulpt.BaseModel, sizes: dict[str, Any]) -> dict[str, Any]:
    """Host syncs of one steady-state packed step of 64 fits (CUDA only)."""
    if model.device.type != "cuda":
        return {"skipped": "set_sync_debug_mode needs CUDA", "ok": True}
    pack = fits(model, 64, 10)
    trainer = PackedTrainer(model, max_rows_per_forward=sizes["rows_per_forward"])
    trainer.train_step(pack)  # joins the stacks: once per fit, not per step
    synchronize(model.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.train_step(pack)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    places = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    first_error = None
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_step(pack)
    except RuntimeError as exc:
        first_error = str(exc).splitlines()[0]
        import traceback

        frames = traceback.extract_tb(exc.__traceback__)
        first_error += " at " + " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[-3:][::-1])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return {"syncs_per_step": len(syncs), "where": dict(places.most_common(10)),
            "first_under_error": first_error, "ok": len(syncs) <= 1}  # fmt: skip


def training(model: ulpt.BaseModel, sizes: dict[str, Any], counts: tuple[int, ...]) -> dict[str, Any]:
    peak = peak_tflops(device_name(model.device), model.token_embeddings.dtype)
    PackedTrainer(model, max_rows_per_forward=sizes["rows_per_forward"]).run(fits(model, 2, 1))  # warm-up
    runs = []
    for count in counts:
        pack = fits(model, count, sizes["steps"])
        trainer = PackedTrainer(model, max_rows_per_forward=sizes["rows_per_forward"])
        synchronize(model.device)
        started = time.perf_counter()
        trainer.run(pack)
        synchronize(model.device)
        seconds = time.perf_counter() - started
        tflops = training_flops(model, pack) / seconds / 1e12
        failed = sum(f.status != "done" for f in pack)
        runs.append({"fits": count, "seconds": round(seconds, 3), "fits_per_s": round(count / seconds, 2),
                     "fit_steps_per_s": round(count * sizes["steps"] / seconds, 1),
                     "tflops": round(tflops, 3), "mfu": round(tflops / peak, 4) if peak else None,
                     "failed": failed})  # fmt: skip
        print(f"  {model.name} K={count}: {runs[-1]}", flush=True)
    return {"model": model.name, "peak_tflops": peak, "runs": runs, "ok": all(r["failed"] == 0 for r in runs)}


def adapters(model: ulpt.BaseModel, count: int) -> list[ulpt.Adapter]:
    out = []
    for i in range(count):
        adapter = ulpt.Adapter.create(ulpt.AdapterSpec(n_tokens=4 + i % 7, rank=2, seed=i), model.hidden_size)
        out.append(adapter.to(model.device))
    return out


def decoding(model: ulpt.BaseModel, sizes: dict[str, Any]) -> dict[str, Any]:
    """Tokens/s of the native decode loop: every row its own adapter vs the base model alone."""
    n = sizes["decode_rows"]
    texts = [
        f"Review: the room was {w} and the staff {w}.\nVerdict:"
        for w in ["clean", "loud", "warm", "cold"] * n
    ][:n]
    params = [ulpt.SamplingParams(max_new_tokens=sizes["decode_tokens"], ignore_eos=True)] * n
    modes = {"base": [(None, t) for t in texts], "mixed": list(zip(adapters(model, n), texts))}
    rates = {}
    for name, rows in modes.items():
        model.generate_batch(rows[:2], params[:2])  # warm-up
        synchronize(model.device)
        started = time.perf_counter()
        generated = model.generate_batch(rows, params)
        synchronize(model.device)
        rates[name] = round(sum(len(g.token_ids) for g in generated) / (time.perf_counter() - started), 1)
    return {
        "rows": n,
        "tokens_per_s": rates,
        "mixed_over_base": round(rates["mixed"] / rates["base"], 3),
        "ok": True,
    }


def mixed_vs_solo(model: ulpt.BaseModel) -> dict[str, Any]:
    """Greedy tokens and next-token logits of each row mixed into one batch and alone.

    Logit gaps are relative to the row's largest logit (bf16 keeps ~3 significant digits, so a
    random model's logits of ~10 differ by ~0.05 between paddings). A greedy divergence is a tie when
    the solo run's top two logits there are closer than twice that row's mixed-vs-solo gap.
    """
    texts = ["the food was", "Review: quiet room, rude staff.\nVerdict:", "a", "Translate: cat ->", "1 + 1 ="]
    rows: list[Any] = [(a, t) for a, t in zip(adapters(model, 4), texts)] + [(None, texts[-1])]
    params = [ulpt.SamplingParams(max_new_tokens=GREEDY_STEPS, ignore_eos=True)]
    mixed_tokens = [g.token_ids for g in model.generate_batch(rows, params * len(rows))]
    solo_tokens = [model.generate_batch([row], params)[0].token_ids for row in rows]
    mixed_logits = model.score(rows)
    gaps, relative = [], []
    for i, row in enumerate(rows):
        solo = model.score([row])[0]
        gaps.append(float((mixed_logits[i] - solo).abs().max()))
        relative.append(gaps[-1] / max(1.0, float(solo.abs().max())))
    divergences = []
    for i, (mixed, solo) in enumerate(zip(mixed_tokens, solo_tokens)):
        if mixed != solo:
            step = next(k for k, (a, b) in enumerate(zip(mixed, solo)) if a != b)
            top2 = model.score([(rows[i][0], model.encode(rows[i][1]) + list(solo[:step]))])[0].topk(2).values
            margin = float(top2[0] - top2[1])
            divergences.append(
                {"row": i, "step": step, "top2_margin": round(margin, 4), "tie": margin <= 2 * gaps[i]}
            )
    same = sum(m == s for m, s in zip(mixed_tokens, solo_tokens))
    return {"model": model.name, "dtype": str(model.token_embeddings.dtype).removeprefix("torch."),
            "rows": len(rows), "greedy_steps": GREEDY_STEPS, "same_tokens": same, "divergences": divergences,
            "max_logit_gap": round(max(gaps), 5), "max_relative_gap": round(max(relative), 5),
            "ok": max(relative) <= LOGITS_TOL and all(d["tie"] for d in divergences)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (small sizes)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"no usable CUDA device (torch {torch.__version__}, CUDA {torch.version.cuda}); --device cpu"
        )
    sizes = FULL if device.type == "cuda" else SMALL
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    report: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": transformers.__version__, "device": device_name(device), "dtype": str(dtype)[6:],
    }  # fmt: skip
    print("  " + ", ".join(f"{k} {v}" for k, v in report.items()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tiny_dir = build_tiny_model(Path(tmp) / "tiny", "llama")
        tiny = ulpt.load_base_model(str(tiny_dir), device=device, dtype=dtype)
        tiny.name = "tiny-llama"
        tiny_bf16 = ulpt.load_base_model(str(tiny_dir), device=device, dtype="bfloat16")
        tiny_bf16.name = "tiny-llama"
    smol = smollm2_sized(device, dtype, sizes["smollm2_layers"])
    report["syncs"] = sync_check(smol, sizes)
    print(f"  syncs: {report['syncs']}", flush=True)
    report["training"] = [training(tiny, sizes, sizes["fits"]), training(smol, sizes, sizes["smollm2_fits"])]
    report["decoding"] = decoding(smol, sizes)
    print(f"  decoding: {report['decoding']}", flush=True)
    smol.hf.to(torch.bfloat16)  # its training runs are done
    report["mixed_vs_solo_bf16"] = [mixed_vs_solo(tiny_bf16), mixed_vs_solo(smol)]
    print(f"  mixed vs solo: {report['mixed_vs_solo_bf16']}", flush=True)
    report["imported_ray_or_vllm"] = sorted({"ray", "vllm"} & set(sys.modules))
    checks = [report["syncs"], *report["training"], report["decoding"], *report["mixed_vs_solo_bf16"]]
    report["ok"] = all(c["ok"] for c in checks) and not report["imported_ray_or_vllm"]
    report["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: {'ok' if report['ok'] else 'FAILED'} in {report['wall_s']} s; wrote {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
