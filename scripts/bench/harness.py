"""The timing harness: interleaved rounds of every case, wall and CPU seconds with the device drained, medians, and
how busy other processes kept the machine meanwhile."""
from __future__ import annotations

import argparse
import gc
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm

Samples = dict[str, dict[str, list[float]]]


def synchronizer(device: torch.device) -> Callable[[], None]:
    """torch.cuda.synchronize on CUDA, nothing elsewhere."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def release(device: torch.device) -> None:
    """Free what the last measurement left (its model and batches), so the next one starts from the same memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Inner:
    """What a step case returns: the wall and CPU seconds its own loss calls (its forwards) took inside it."""

    wall: float
    cpu: float


class ForwardClock:
    """A loss function that adds up the wall and CPU time of its calls, to split a step into forwards and rest."""

    def __init__(self, fn: Callable[[], float], sync: Callable[[], None]):
        self.fn, self.sync, self.wall, self.cpu = fn, sync, 0.0, 0.0

    def __call__(self) -> float:
        self.sync()
        wall, cpu = time.perf_counter(), time.process_time()
        value = self.fn()
        self.sync()
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        return value

    def take(self) -> Inner:
        """The time spent since the last take, and reset."""
        out = Inner(self.wall, self.cpu)
        self.wall = self.cpu = 0.0
        return out


def with_inner(step: Callable[[], object], clock: ForwardClock) -> Callable[[], Inner]:
    """``step`` (whose loss is ``clock``) as a case that returns the time of its own forwards."""
    def timed_step() -> Inner:
        step()
        return clock.take()
    return timed_step


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds (all threads of this process) and result of one call of ``fn``, device drained.

    With one thread and an otherwise idle core, CPU time is close to wall time; where other processes share the
    cores it is less disturbed by them. The wall time is the primary measurement.
    """
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _record(samples: Samples, key: str, wall: float, cpu: float) -> None:
    entry = samples.setdefault(key, {"wall": [], "cpu": []})
    entry["wall"].append(wall)
    entry["cpu"].append(cpu)


def run_rounds(cases: dict[str, Callable[[], object]], warmup: int, repeats: int, sync: Callable[[], None],
               desc: str) -> Samples:
    """Each round runs every case once, in turn; returns {case: {"wall": [...], "cpu": [...]}} of timed rounds.

    A case that returns an ``Inner`` also records, as "<kind>_forwards/<variant>", the time of its own forwards.
    """
    samples: Samples = {}
    for r in tqdm(range(warmup + repeats), desc=desc, leave=False):
        for key, fn in cases.items():
            wall, cpu, out = timed(fn, sync)
            if r < warmup:
                continue
            _record(samples, key, wall, cpu)
            if isinstance(out, Inner):
                _record(samples, key.replace("/", "_forwards/", 1), out.wall, out.cpu)
    return samples


def summarise(samples: Samples) -> dict[str, dict]:
    """Median, min, max and samples of the wall times; median and samples of the CPU times."""
    return {k: {"median": statistics.median(v["wall"]), "min": min(v["wall"]), "max": max(v["wall"]),
                "samples": v["wall"], "cpu_median": statistics.median(v["cpu"]), "cpu_samples": v["cpu"]}
            for k, v in samples.items()}


# ----------------------------------------------------------------------------------------------------------------
# Machine description and load


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return found.group(1).strip() if found else platform.machine()


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _own_cpu_seconds() -> float:
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


class LoadMeter:
    """Average number of cores that other processes kept busy while the benchmark ran (Linux)."""

    def __init__(self):
        self.start = (_busy_jiffies(), _own_cpu_seconds(), time.perf_counter(), os.getloadavg())

    def report(self) -> dict:
        (j0, own0, t0, load0), j1 = self.start, _busy_jiffies()
        out = {"loadavg_before": load0, "loadavg_after": os.getloadavg()}
        if j0 and j1:
            hz = os.sysconf("SC_CLK_TCK")
            other = (j1[0] - j0[0]) / hz - (_own_cpu_seconds() - own0)
            out["other_processes_cores"] = max(0.0, other / (time.perf_counter() - t0))
        return out


def meta(args: argparse.Namespace, device: torch.device) -> dict:
    """The machine, the library versions and the settings of a run, for its JSON."""
    return {"device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "model": args.model, "task": args.task, "examples": args.examples, "dtype": args.dtype,
            "repeats": args.repeats, "warmup": args.warmup, "mem_steps": args.mem_steps, "variants": args.variants,
            "eval_batch_size": args.eval_batch_size, "lora_r": args.lora_r, "xgblora_rank": args.xgblora_rank,
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
