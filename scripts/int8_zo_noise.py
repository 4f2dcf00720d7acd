"""How much the int8 base (``--load_int8`` on the CPU) changes a ZO-LoRA step's projected gradients.

The same LoRA adapters (same seed) on a float32 base and on an int8 base, one real SST-2 batch: for each ``--eps``
and each of ``--directions`` seeds, the SPSA projected gradient g = (L(theta + eps z) - L(theta - eps z)) / (2 eps)
of the ZO step (``zo.estimate``, the trainer's own loss closure) on both bases. Printed per eps: the mean |g| of
each, their correlation over the directions, and the root-mean-square of g_int8 - g_float32 over that of
g_float32 (0: the int8 step moves as the float32 step; 1: as much noise as signal). The activations' int8 rounding
changes with the perturbation, so its error enters L(+) - L(-) and is divided by 2 eps: a larger eps shrinks it.

    python scripts/int8_zo_noise.py --model smollm2-135m --data-dir ../shared/data --threads 1
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from transformers import set_seed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench.step import real_trainer  # noqa: E402
from mezo_engine import zo  # noqa: E402
from mezo_engine.trainer import zo_optimizer  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="--model_name (alias, folder, .gguf)")
    p.add_argument("--data-dir", default="../shared/data", help="SST-2's original files")
    p.add_argument("--examples", type=int, default=16, help="the batch")
    p.add_argument("--eps", default="1e-2,3e-2,1e-1", help="comma-separated perturbation scales")
    p.add_argument("--directions", type=int, default=12, help="directions (seeds) per eps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON path")
    return p.parse_args(argv)


def projected(trainer, batch: dict, seeds: list[int], eps: float) -> list[float]:
    """The projected gradient along each seed's z at the trainer's current adapters (left as they were)."""
    trainer.model.eval()  # as the trainer's zo step runs its forwards
    params = zo_optimizer(trainer.optimizer).zo_params()
    loss_fn = trainer._zo_loss_fn(trainer.model, batch)
    return [g for _, g in zo.estimate(params, loss_fn, seeds, eps, cache=True)]


def compare(g_float: list[float], g_int8: list[float]) -> dict:
    """Mean |g| of each, correlation, and rms(int8 - float) / rms(float)."""
    def rms(values):
        return math.sqrt(sum(v * v for v in values) / len(values))
    return {"mean_abs_float32": statistics.fmean(abs(g) for g in g_float),
            "mean_abs_int8": statistics.fmean(abs(g) for g in g_int8),
            "correlation": statistics.correlation(g_float, g_int8),
            "rms_diff_over_rms_float32": rms([a - b for a, b in zip(g_int8, g_float)]) / rms(g_float)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    bench_args = argparse.Namespace(trainer_step_model=args.model, data_dir=args.data_dir, examples=args.examples,
                                    seed=0)
    seeds = zo.spread_seeds(12345, args.directions)
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        trainers = {}
        for base, extra in (("float32", ()), ("int8", ("--load_int8",))):
            set_seed(0)  # the same adapter initialisation on both bases (checked below)
            trainers[base] = real_trainer(bench_args, out_dir, ("--lora",), extra)[0]
        starts = [zo_optimizer(t.optimizer).zo_params() for t in trainers.values()]
        if not all(torch.equal(a, b) for a, b in zip(*starts)):
            raise SystemExit("int8_zo_noise.py: the two trainers' adapters did not start equal")
        batch = trainers["float32"].data_collator(list(trainers["float32"].train_dataset))
        for eps in (float(e) for e in args.eps.split(",")):
            grads = {base: projected(t, batch, seeds, eps) for base, t in trainers.items()}
            rows.append({"eps": eps, **compare(grads["float32"], grads["int8"]), "grads": grads})
    print("| eps | mean abs g, float32 | mean abs g, int8 | correlation | rms(int8 - float32) / rms(float32) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['eps']:g} | {r['mean_abs_float32']:.3f} | {r['mean_abs_int8']:.3f} | {r['correlation']:.3f} "
              f"| {r['rms_diff_over_rms_float32']:.3f} |")
    result = {"model": args.model, "examples": args.examples, "directions": args.directions, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
