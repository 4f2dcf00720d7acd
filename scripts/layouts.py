"""How to spend a machine's cores on ZO runs: the Trainer's real ZO step, timed in the layouts a sweep can use,
run count x threads per run (default: 1 x 1, 1 x 2 and 2 x 1 on a 2-core machine). Each run is a child process
that builds the trainer run.py builds (real weights, real SST-2 batch; ``bench.step.real_trainer``), takes
``--warmup`` untimed steps, then ``--steps`` timed ones; the runs of a layout start together. Printed: each layout's
steps a second summed over its runs (the sweep's throughput), and each against 1 x 1.

    python scripts/layouts.py --model smollm2-135m --data-dir ../shared/data --mode lora --steps 8
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("1x1", "1x2", "2x1")
MODES = {"lora": ("--lora",), "xgblora": ("--xgblora", "--xgblora_steps_per_iteration", "1000"), "ft": ()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="--model_name of the runs (hub id, folder, alias)")
    p.add_argument("--data-dir", default="../shared/data", help="SST-2's original files (GLUE TSV)")
    p.add_argument("--mode", choices=sorted(MODES), default="lora")
    p.add_argument("--examples", type=int, default=16, help="batch size")
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="runs x threads, comma-separated")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--run-flags", default="", help="extra run.py flags of the runs, written --run-flags=--zo_pair_batched")
    p.add_argument("--out", default=None, help="JSON path for the measurements")
    p.add_argument("--_child", dest="child", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args: argparse.Namespace) -> None:
    """One run: build the trainer, step, print the seconds of the timed steps as JSON."""
    import torch

    from bench.step import real_trainer

    torch.set_num_threads(args.child)
    bench_args = argparse.Namespace(trainer_step_model=args.model, data_dir=args.data_dir, examples=args.examples,
                                    seed=0)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer, _ = real_trainer(bench_args, out_dir, MODES[args.mode], tuple(args.run_flags.split()))
        features, collate = list(trainer.train_dataset), trainer.data_collator
        for _ in range(args.warmup):
            trainer.training_step(trainer.model, collate(features))
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.training_step(trainer.model, collate(features))
        print(json.dumps({"seconds": time.perf_counter() - start, "steps": args.steps}))


def run_layout(layout: str, args: argparse.Namespace) -> dict:
    """Start the layout's runs together; their steps a second, each and summed."""
    runs, threads = (int(x) for x in layout.split("x"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--data-dir", args.data_dir,
           "--mode", args.mode, "--examples", str(args.examples), "--steps", str(args.steps), "--warmup",
           str(args.warmup), f"--run-flags={args.run_flags}", "--_child", str(threads)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(runs)]
    rates = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"layouts.py: a {layout} run failed:\n{err[-3000:]}")
        timing = json.loads(out.strip().splitlines()[-1])
        rates.append(timing["steps"] / timing["seconds"])
    return {"layout": layout, "runs": runs, "threads": threads, "steps_per_s_each": rates,
            "steps_per_s_total": sum(rates)}


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.child is not None:
        child(args)
        return []
    rows = [run_layout(layout, args) for layout in args.layouts.split(",")]
    base = rows[0]["steps_per_s_total"]
    print(f"| layout (runs x threads) | steps/s each | steps/s total | total / {rows[0]['layout']} |")
    print("|---|---|---:|---:|")
    for row in rows:
        each = ", ".join(f"{r:.3f}" for r in row["steps_per_s_each"])
        print(f"| {row['layout']} | {each} | {row['steps_per_s_total']:.3f} | {row['steps_per_s_total'] / base:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "mode": args.mode, "examples": args.examples,
                                              "run_flags": args.run_flags, "steps": args.steps, "layouts": rows},
                                             indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
