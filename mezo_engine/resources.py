"""What a run cost: peak memory and training speed, recorded in the result JSON (``result["resources"]`` and the
``train`` summary) so that a study's tables can be built from the JSONs alone."""
from __future__ import annotations

import resource
import sys

import torch

MIB = 2 ** 20


def peak_rss_mib() -> float:
    """The process's peak resident set size so far, in MiB (model loading included). Linux reports
    ``ru_maxrss`` in KiB, macOS in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (MIB if sys.platform == "darwin" else 1024), 1)


def cuda_peak_mib() -> float | None:
    """``torch.cuda.max_memory_allocated`` summed over the visible GPUs, in MiB; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return round(sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / MIB, 1)


def usage(wall_s: float) -> dict:
    """The ``resources`` entry of a result: wall time of the run (load excluded, evaluation included), peak RSS
    and the CUDA peak (None on CPU). Times are stored unrounded (tables round), so figures derived from them can be
    recomputed exactly."""
    return {"wall_s": wall_s, "peak_rss_mib": peak_rss_mib(), "cuda_max_allocated_mib": cuda_peak_mib()}


def training_speed(train_s: float, first_step: int, last_step: int) -> dict:
    """Training time and steps of this process (a resumed run counts from its checkpoint's step); unrounded, so
    ``steps_per_s`` is exactly ``steps_this_process / train_s`` of the JSON."""
    steps = last_step - first_step
    return {"train_s": train_s, "steps_this_process": steps,
            "steps_per_s": steps / train_s if train_s > 0 else None}
