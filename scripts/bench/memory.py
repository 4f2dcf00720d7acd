"""Peak memory (d.): ZO training against inference at the same batch, upstream's step, the out-of-place step; and
the extra memory of the ZO momentum and Adam state (h.).

CUDA: ``max_memory_allocated`` in this process. CPU: the peak RSS of a separate child process per case (this
script run with ``--_memory-child``), counted from after the model is built.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench import out_of_place
from bench.harness import release
from bench.ratios import Ratio
from bench.step import zo_step_fn
from bench.upstream import naive_loss_fn_for, naive_step
from bench.workload import Context, loss_fn_for, make_batch, variant_model
from mezo_engine.zo_methods.adam import ZOAdam
from mezo_engine.zo_methods.momentum import ZOSGDMomentum
from mezo_engine.zo_params import zo_params

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "benchmark.py"
MEMORY_CASES = ("full:infer", "full:zo", "full:naive", "full:zo_oop", "lora:infer", "lora:zo")
# What a memory child is given of its parent's settings.
CHILD_SETTINGS = ("model", "task", "device", "dtype", "threads", "seed", "mem_steps", "eps", "lr", "weight_decay",
                  "lora_r", "lora_alpha", "xgblora_rank", "examples")


def _proc_status(field: str) -> int | None:
    """A ``/proc/self/status`` memory field in bytes, or None where there is no such file."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Return freed heap to the OS and reset the peak RSS (VmHWM) to the current RSS; False where unsupported."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_workload(variant: str, mode: str, ctx: Context):
    """The model and the function one training or inference iteration of ``variant`` runs."""
    model = variant_model(variant, ctx)
    batch = make_batch(ctx.features, ctx.pad_id, ctx.device)
    zp, a = zo_params(model), ctx.args
    loss = loss_fn_for(model, batch, fold=mode == "zo" and variant != "full")
    if mode == "infer":
        return model, loss
    if mode == "zo_oop":
        return model, out_of_place.oop_step(model, zp, loss, ctx)
    if mode == "naive":
        naive_loss = naive_loss_fn_for(model, make_batch(ctx.features, ctx.pad_id, ctx.device, shared=False))
        return model, lambda: naive_step(list(zip(zp.names, zp.params)), naive_loss, next(ctx.seeds), a.eps, a.lr,
                                         a.weight_decay)
    return model, zo_step_fn(zp, loss, ctx)


def _cuda_peak(fn, steps: int) -> dict:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return {"peak_bytes": torch.cuda.max_memory_allocated(), "start_bytes": start,
            "method": "torch.cuda.max_memory_allocated"}


def _rss_peak(fn, steps: int) -> dict:
    reset = _reset_peak_rss()
    start = _proc_status("VmRSS")
    for _ in range(steps):
        fn()
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_bytes": _proc_status("VmHWM") if reset else process_peak, "start_bytes": start,
            "process_peak_bytes": process_peak,
            "method": "VmHWM since reset after build" if reset else "ru_maxrss (whole process)"}


def peak_during(fn, steps: int, device: torch.device) -> dict:
    """The peak memory of ``steps`` calls of ``fn``, counted from now: CUDA's max_memory_allocated, else the peak
    RSS (VmHWM after a reset) and the whole process's (ru_maxrss)."""
    return (_cuda_peak if device.type == "cuda" else _rss_peak)(fn, steps)


def measure_memory_here(case: str, ctx: Context) -> dict:
    """Peak memory of ``--mem-steps`` iterations of ``case`` ("variant:mode") in this process.

    CUDA: max_memory_allocated after reset_peak_memory_stats (weights included). CPU: the peak RSS since the model
    was built (VmHWM after a reset), and the whole-process peak (ru_maxrss) for reference.
    """
    variant, mode = case.split(":")
    model, fn = memory_workload(variant, mode, ctx)
    out = peak_during(fn, ctx.args.mem_steps, ctx.device)
    out["largest_weight_bytes"] = max(p.numel() * p.element_size() for p in model.parameters())
    del model, fn
    release(ctx.device)
    return out


def _child_command(case: str, args: argparse.Namespace) -> list[str]:
    """The benchmark script, run as a memory child for ``case`` with the parent's settings."""
    cmd = [sys.executable, str(SCRIPT), "--_memory-child", case]
    for key in CHILD_SETTINGS:
        value = getattr(args, key)
        if value is not None:
            cmd += ["--" + key.replace("_", "-"), str(value)]
    return cmd


def run_child(case: str, cmd: list[str]) -> dict:
    """Run ``cmd`` (a memory child for ``case``) from the repository root; the JSON of its last line of output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {case} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_child(case: str, args: argparse.Namespace) -> dict:
    return run_child(case, _child_command(case, args))


def measure_memory(ctx: Context) -> dict[str, dict]:
    """Peak memory of every case: separate child processes on CPU (a few at a time), in this process on CUDA."""
    cases = [c for c in MEMORY_CASES if c.split(":")[0] in ctx.args.variants]
    if ctx.device.type == "cuda":
        measured = {c: measure_memory_here(c, ctx) for c in tqdm(cases, desc="memory", leave=False)}
        return out_of_place.with_oop_budget(measured)
    with ThreadPoolExecutor(max(1, ctx.args.mem_jobs)) as pool:
        futures = {c: pool.submit(_run_child, c, ctx.args) for c in cases}
        return out_of_place.with_oop_budget({c: f.result() for c, f in tqdm(futures.items(), desc="memory",
                                                                              leave=False)})


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if torch.is_tensor(v))


def optimizer_state_bytes(variant: str, ctx: Context) -> dict[str, int]:
    """Bytes of the trainable parameters of ``variant`` and of the ZO momentum and ZO-Adam state after one step
    (lr 0: the parameters stay as they are)."""
    model = variant_model(variant, ctx)
    params = zo_params(model).params
    out = {"trainable_params": sum(p.numel() for p in params), "trainable_tensors": len(params),
           "trainable_bytes": sum(p.numel() * p.element_size() for p in params)}
    for name, cls in (("momentum", ZOSGDMomentum), ("adam", ZOAdam)):
        opt = cls(params, lr=0.0)
        opt.add_estimate([(1, 1.0)])
        opt.step()
        out[f"{name}_bytes"] = _state_bytes(opt)
        del opt
    del model, params
    release(ctx.device)
    return out


def state_rows(states: dict[str, dict]) -> list[dict]:
    """h: info rows, the extra memory of the ZO momentum and Adam state per variant."""
    rows = []
    for variant, s in states.items():
        for name, label in (("momentum", "ZO momentum"), ("adam", "ZO-Adam")):
            ratio = s[f"{name}_bytes"] / s["trainable_bytes"]
            rows.append({"measurement": f"h: {label} state, extra memory ({variant}; {ratio:.3f}x the "
                                        f"{s['trainable_params']:,} trainable parameters' bytes)",
                         "value": f"{s[f'{name}_bytes'] / 2**20:.2f} MiB", "cpu": "", "target": "(info)",
                         "result": ""})
    return rows


def ratios(variants: tuple[str, ...]) -> list[Ratio]:
    """d.: ZO peak over inference peak (full, LoRA); upstream's peak over inference (info)."""
    out = [Ratio(f"peak_memory_zo_over_inference/{v}", f"m:{v}:zo", f"m:{v}:infer", 1.0, "<=", 1.15,
                 f"d: ZO peak memory / inference peak ({v})") for v in ("full", "lora") if v in variants]
    if "full" in variants:
        out.append(Ratio("peak_memory_naive_over_inference/full", "m:full:naive", "m:full:infer", 1.0, "", 0.0,
                         "naive ZO peak memory / inference peak (full)"))
    return out
