"""The local executor: a queue of ``--jobs`` concurrent runs, each pinned to its own share of the machine.

Slot ``i`` owns a contiguous block of the CPU cores this process may use (``taskset -c``, and as many
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``) and of the GPUs (``CUDA_VISIBLE_DEVICES``); a run starts as soon as a
slot is free. Runs start in their own session, so a Ctrl-C in the terminal reaches only the sweep, which then
sends each running driver SIGTERM: run.py saves a checkpoint, writes ``interrupted at step N`` and exits 75, and
the next ``sweep.py`` call resumes it. No new run starts after that.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm

from .worker import Launch, open_log, outcome

logger = logging.getLogger("sweep")


class SlotError(ValueError):
    """``--jobs``, ``--cpus-per-run`` or ``--gpus`` cannot be shared out; the message says which and why."""


@dataclass(frozen=True)
class Slot:
    """A share of the machine: CPU core ids and GPU ids (strings, as CUDA_VISIBLE_DEVICES lists them)."""

    cpus: tuple[int, ...]
    gpus: tuple[str, ...] | None

    def env(self) -> dict[str, str]:
        threads = str(len(self.cpus))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return env

    def prefix(self) -> list[str]:
        """``taskset -c <cores>`` where taskset exists (util-linux), else nothing (threads are still capped)."""
        return ["taskset", "-c", ",".join(map(str, self.cpus))] if shutil.which("taskset") else []


def default_jobs(gpus: list[str] | None) -> int:
    """Runs at once when ``--jobs`` is not given: one per GPU's share as before (1) with GPUs, else one per core
    at one thread each, the fastest layout measured on a 2-core CPU (docs/benchmarks.md, "Layouts": 2 runs x 1
    thread gave 1.13x the steps a second of 1 run x 2 threads)."""
    return 1 if gpus else len(os.sched_getaffinity(0))


def make_slots(jobs: int, cpus_per_run: int | None, gpus: list[str] | None, gpus_per_run: int | None = None,
               cores: list[int] | None = None) -> list[Slot]:
    """``jobs`` slots over ``cores`` (default: the cores this process may run on) and ``gpus`` (None: no GPU
    handling; [] hides every GPU). Blocks are contiguous and never overlap."""
    cores = sorted(os.sched_getaffinity(0)) if cores is None else cores
    if jobs < 1:
        raise SlotError(f"--jobs {jobs}: give at least 1")
    per_cpu = cpus_per_run or max(1, len(cores) // jobs)
    if per_cpu * jobs > len(cores):
        raise SlotError(f"--jobs {jobs} x --cpus-per-run {per_cpu} needs {per_cpu * jobs} cores; this process may "
                        f"use {len(cores)} ({','.join(map(str, cores))}): lower --jobs or --cpus-per-run")
    per_gpu = _gpus_per_slot(jobs, gpus, gpus_per_run)
    return [Slot(tuple(cores[i * per_cpu:(i + 1) * per_cpu]),
                 None if gpus is None else tuple(gpus[i * per_gpu:(i + 1) * per_gpu])) for i in range(jobs)]


def _gpus_per_slot(jobs: int, gpus: list[str] | None, gpus_per_run: int | None) -> int:
    if not gpus:
        return 0
    per = gpus_per_run if gpus_per_run is not None else len(gpus) // jobs
    if per * jobs > len(gpus) or (gpus_per_run is None and per == 0):
        raise SlotError(f"--jobs {jobs} runs with {per or 1} GPU(s) each need {jobs * (per or 1)} GPUs; "
                        f"--gpus gives {len(gpus)} ({','.join(gpus)}): lower --jobs or --gpus-per-run, "
                        f"or pass --gpus none to run on CPU")
    return per


def detect_gpus() -> list[str] | None:
    """The GPUs to share: CUDA_VISIBLE_DEVICES if set, else those ``nvidia-smi`` lists, else None (no GPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                         capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] or None


class LocalQueue:
    """Runs launches in ``slots``, at most one per slot at a time, and reports each one's outcome."""

    poll_s = 0.2

    def __init__(self, slots: list[Slot]):
        self.slots = slots
        self.running: dict[int, tuple[Launch, subprocess.Popen, object]] = {}
        self.stopping = False

    def run(self, launches: list[Launch], more: Callable[[set[str]], list[Launch]] | None = None) -> dict[str, str]:
        """Run every launch (in order, as slots free up); ``{name: outcome}``. ``more(running)``: asked, whenever
        a slot is free and no launch is left, for what to run next (its first launch not named in ``running``, the
        names of the runs going on, takes the slot; an empty list: nothing more)."""
        pending, outcomes = list(launches), {}
        handlers = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with tqdm(total=None if more else len(launches), desc="sweep", unit="run") as bar:
                while not self.stopping or self.running:
                    self._fill(pending, more)
                    if not self.running:
                        break
                    self._reap(outcomes, bar)
                    time.sleep(self.poll_s)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        outcomes.update({launch.name: "not started (the sweep was stopped)" for launch in pending})
        return outcomes

    def _fill(self, pending: list[Launch], more: Callable[[set[str]], list[Launch]] | None = None) -> None:
        for i, slot in enumerate(self.slots):
            if i in self.running or self.stopping:
                continue
            if not pending and more is not None:
                running = {launch.name for launch, _, _ in self.running.values()}
                pending = [launch for launch in more(running) if launch.name not in running][:1]
            if not pending:
                continue
            launch = pending.pop(0)
            log = open_log(launch)
            proc = subprocess.Popen(slot.prefix() + launch.command(), env=launch.environment(slot.env()),
                                    cwd=launch.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.running[i] = (launch, proc, log)
            logger.info("started %s (slot %d: cores %s)", launch.name, i, ",".join(map(str, slot.cpus)))

    def _reap(self, outcomes: dict[str, str], bar) -> None:
        for i, (launch, proc, log) in list(self.running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del self.running[i]
            outcomes[launch.name] = outcome(launch, proc.returncode)
            logger.info("%s: %s", launch.name, outcomes[launch.name])
            bar.update(1)

    def _stop(self, signum, frame) -> None:
        """Ctrl-C or SIGTERM: start nothing new; ask every running driver to checkpoint and stop."""
        self.stopping = True
        logger.warning("%s: stopping; running runs save a checkpoint and stop (re-run the sweep to resume)",
                       signal.Signals(signum).name)
        for _, proc, _ in self.running.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
