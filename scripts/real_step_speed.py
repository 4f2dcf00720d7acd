"""A real run's seconds per training step against the benchmark row of the same step.

For each mode (full-parameter, LoRA, XGBLoRA), on the same 16 SST-2 training examples (one batch, so every step
collates the same rows and pads them alike) and at one thread:

* **benchmark row**: the Trainer's ZO step as ``scripts/layouts.py`` times it (``bench.step.real_trainer``: the
  trainer run.py builds, ``training_step`` on a freshly collated batch), ``--warmup`` untimed steps, then the mean
  of ``--steps``;
* **real run**: ``large_models/run.py`` with the drivers' settings (logging every 10 steps, progress bar, dev
  evaluation and checkpoints off so that only training is timed), run twice, for ``--warmup`` and for
  ``--warmup + --steps`` steps; its training loop's wall seconds without evaluation and saving (the result's
  ``ledger``: ``loop_wall_s - eval_s - checkpoint_s``) differ by the ``--steps`` steps, so what happens once per
  run (building the loop, the first steps' warm-up) cancels.

Printed per mode: both seconds per step and real / benchmark (target <= 1.15), and where the real run's time went
(its ledger's phases over the same steps). Each measurement is a child process, one after another.

    python scripts/real_step_speed.py --model smollm2-135m --data-dir ../shared/data --steps 20
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from layouts import MODES  # noqa: E402  (the modes' run.py flags, shared with the layouts benchmark)

TARGET = 1.15
PHASES = ("forward_s", "step_other_s", "between_steps_s", "data_s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="--model_name (hub id, folder, alias)")
    p.add_argument("--data-dir", default="../shared/data", help="SST-2's original files (GLUE TSV)")
    p.add_argument("--modes", default="ft,lora,xgblora", help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--examples", type=int, default=16, help="training examples, one batch")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="steps before the timed ones")
    p.add_argument("--out", default=None, help="JSON path for the measurements")
    return p.parse_args(argv)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")])}


def _check(proc: subprocess.CompletedProcess, what: str) -> str:
    if proc.returncode:
        raise SystemExit(f"real_step_speed.py: {what} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def bench_row(args: argparse.Namespace, mode: str) -> float:
    """Seconds per step of the Trainer's step as the layouts benchmark times it (one thread)."""
    cmd = [sys.executable, str(ROOT / "scripts" / "layouts.py"), "--model", args.model, "--data-dir", args.data_dir,
           "--mode", mode, "--examples", str(args.examples), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--_child", "1"]
    out = _check(subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=ROOT), f"the {mode} bench row")
    timing = json.loads(out.strip().splitlines()[-1])
    return timing["seconds"] / timing["steps"]


def run_flags(args: argparse.Namespace, mode: str, steps: int, out: Path) -> list[str]:
    """run.py's flags for a real ``steps``-step run in ``mode``: the bench row's trainer settings, the drivers'
    logging, no dev evaluation or checkpoint, a 16-example final evaluation."""
    size = str(args.examples)
    return ["--model_name", args.model, "--task_name", "SST2", "--data_dir", args.data_dir, "--trainer", "zo",
            *MODES[mode], "--num_train", size, "--train_set_seed", "0", "--num_eval", size,
            "--per_device_train_batch_size", size, "--train_as_classification", "--learning_rate", "1e-4",
            "--zo_eps", "1e-3", "--max_steps", str(steps), "--logging_steps", "10", "--eval_strategy", "no",
            "--save_strategy", "no", "--report_to", "none", "--seed", "0", "--result_file", str(out),
            "--output_dir", str(out.with_suffix(""))]


def real_run(args: argparse.Namespace, mode: str, steps: int, folder: Path) -> dict:
    """The ledger of a real run.py run of ``steps`` steps."""
    out = folder / f"{mode}-{steps}.json"
    cmd = [sys.executable, str(ROOT / "large_models" / "run.py"), *run_flags(args, mode, steps, out)]
    _check(subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=ROOT), f"the {mode} real run")
    return json.loads(out.read_text())["ledger"]


def loop_seconds(ledger: dict) -> float:
    """The training loop's wall seconds without dev evaluation and checkpoint saving."""
    return ledger["loop_wall_s"] - ledger["eval_s"] - ledger["checkpoint_s"]


def measure(args: argparse.Namespace, mode: str, folder: Path) -> dict:
    """The bench row, the two real runs, and real / bench."""
    bench = bench_row(args, mode)
    short, long = (real_run(args, mode, n, folder) for n in (args.warmup, args.warmup + args.steps))
    real = (loop_seconds(long) - loop_seconds(short)) / args.steps
    phases = {k: (long[k] - short[k]) / args.steps for k in PHASES}
    return {"mode": mode, "bench_s_per_step": bench, "real_s_per_step": real, "real_over_bench": real / bench,
            "target": f"<= {TARGET}", "pass": real / bench <= TARGET, "real_phases_s_per_step": phases,
            "ledgers": {"short": short, "long": long}}


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"--modes: unknown {', '.join(sorted(unknown))}; known: {', '.join(MODES)}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(args, mode, Path(tmp)) for mode in modes]
    print("| mode | benchmark row s/step | real run s/step | real / benchmark | target | forwards | perturb+update "
          "| between steps (data) |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        ph = r["real_phases_s_per_step"]
        print(f"| {r['mode']} | {r['bench_s_per_step']:.3f} | {r['real_s_per_step']:.3f} | {r['real_over_bench']:.3f} "
              f"| {r['target']}: {'met' if r['pass'] else 'NOT met'} | {ph['forward_s']:.3f} | {ph['step_other_s']:.3f} "
              f"| {ph['between_steps_s']:.3f} ({ph['data_s']:.3f}) |")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "examples": args.examples, "steps": args.steps,
                                              "warmup": args.warmup, "threads": 1, "rows": rows}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
