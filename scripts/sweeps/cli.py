"""``python scripts/sweep.py SWEEP.toml``: run every point of a sweep that is not finished.

Completed points are skipped, missing and interrupted ones run (resuming from their checkpoint), diverged ones
are reported and not retried, and ``--dry-run`` prints what would happen, with each command, and runs nothing.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter

from mezo_engine.status import Kind, Status

from .load import check_run_py_flags, load_sweep
from .local import LocalQueue, SlotError, default_jobs, detect_gpus, make_slots
from .slurm import SlurmOptionError, executor_parameters, slurm_options, submit, wait
from .spec import Point, Sweep, SweepError
from .state import State, read_state
from .worker import Launch, make_launch

logger = logging.getLogger("sweep")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", help="the sweep file (TOML), e.g. scripts/sweeps/example.toml")
    p.add_argument("--dry-run", action="store_true", help="print each point's state and command; run nothing")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: a queue on this machine; slurm: one job array (default: local)")
    p.add_argument("--jobs", type=int, help="runs at once (local default: one per CPU core without GPUs, else 1; slurm: the array's "
                        "%%limit)")
    p.add_argument("--cpus-per-run", type=int, help="CPU cores per run (local default: the cores / --jobs)")
    p.add_argument("--gpus", help="local: GPU ids to share out, e.g. 0,1,2,3, or 'none' "
                                  "(default: CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists)")
    p.add_argument("--gpus-per-run", type=int, help="GPUs per run (local default: the GPUs / --jobs)")
    p.add_argument("--partition", help="slurm: partition (overrides [slurm] partition)")
    p.add_argument("--time", help="slurm: time limit per run, minutes or HH:MM:SS")
    p.add_argument("--mem", help="slurm: memory per run, e.g. 32G")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the array and report each run")
    return p.parse_args(argv)


def plan(sweep: Sweep) -> list[tuple[Point, State, Launch]]:
    """Every point with its state and its launch."""
    return [(p, read_state(p.result_file, p.output_dir), make_launch(sweep, p)) for p in sweep.points()]


def print_plan(rows: list[tuple[Point, State, Launch]]) -> None:
    """One line per point (action, grid values, state), the command under those that would run, and counts."""
    for point, state, launch in rows:
        print(f"{state.action:<9} {point.label()}  [{state.detail}]")
        if state.runs:
            print(f"          {launch.shell_line()}")
    counts = Counter(state.action for _, state, _ in rows)
    print(f"{len(rows)} points: " + ", ".join(f"{n} {action}" for action, n in counts.items()))


def run_local(args, sweep: Sweep, launches: list[Launch]) -> dict[str, str] | None:
    """Run ``launches`` in a local queue of ``--jobs`` slots (with --dry-run: print the slots only)."""
    gpus = [] if args.gpus == "none" else args.gpus.split(",") if args.gpus else detect_gpus()
    slots = make_slots(args.jobs or default_jobs(gpus), args.cpus_per_run, gpus, args.gpus_per_run)
    for i, slot in enumerate(slots):
        print(f"slot {i}: cores {','.join(map(str, slot.cpus))}" + (f", GPUs {','.join(slot.gpus) or 'none'}"
                                                                     if slot.gpus is not None else ""))
    return None if args.dry_run else LocalQueue(slots).run(launches)


def run_slurm(args, sweep: Sweep, launches: list[Launch]) -> dict[str, str] | None:
    """Submit ``launches`` as one job array (with --dry-run: print its sbatch parameters only)."""
    flags = {"partition": args.partition, "time": args.time, "mem": args.mem, "jobs": args.jobs,
             "cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run}
    params = executor_parameters(slurm_options(sweep.slurm, flags), sweep.name, launches[0].cwd)
    if args.dry_run:
        print("sbatch (through submitit):", ", ".join(f"{k}={v}" for k, v in params.items()))
        return None
    jobs = submit(launches, params, sweep.result_dir / "slurm")
    print(f"submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} runs)")
    return wait(jobs, launches) if args.wait else None


def report(outcomes: dict[str, str]) -> int:
    """Print each outcome; exit status 1 if any run failed, stopped early or did not start."""
    for name, outcome in outcomes.items():
        print(f"{name}: {outcome}")
    bad = [o for o in outcomes.values() if Status.parse(o).kind not in (Kind.COMPLETED, Kind.BUDGET, Kind.DIVERGED)]
    print(f"{len(outcomes)} runs: {len(outcomes) - len(bad)} finished (completed, budget reached or diverged), "
          f"{len(bad)} not")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("submitit").propagate = False  # it prints its own messages; do not print them twice
    args = parse_args(argv)
    try:
        sweep = load_sweep(args.sweep)
        check_run_py_flags(sweep)
        rows = plan(sweep)
        print_plan(rows)
        launches = [launch for _, state, launch in rows if state.runs]
        execute = run_slurm if args.executor == "slurm" else run_local
        outcomes = execute(args, sweep, launches) if launches else None
    except (SweepError, SlotError, SlurmOptionError) as err:
        sys.exit(f"sweep.py: error: {err}")
    refused = [p.label() for p, state, _ in rows if state.action == "refuse"]
    code = report(outcomes) if outcomes is not None else 0
    return 1 if refused else code
