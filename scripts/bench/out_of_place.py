"""Rows i.: full-parameter ``--zo_perturb out_of_place`` (``zo_out_of_place.zo_step``: hooks form W + eps z as each
module runs), its step against the in-place step, and its peak memory against the inference peak plus the largest
single weight (the one extra weight-sized tensor the hooks may hold)."""
from __future__ import annotations

from collections.abc import Callable

from bench.harness import ForwardClock, Inner, with_inner
from bench.ratios import Ratio
from bench.workload import Context
from mezo_engine import zo_out_of_place
from mezo_engine.zo_params import ZOParams

# The budget of the out-of-place step's peak: the inference peak plus the largest single weight (derived, not run).
OOP_BUDGET = "full:infer_plus_largest_weight"


def oop_step(model, zp: ZOParams, loss_fn: Callable[[], float], ctx: Context) -> Callable[[], object]:
    """One out-of-place step per call, a fresh seed each, with the benchmark's lr and weight decay."""
    a = ctx.args
    return lambda: zo_out_of_place.zo_step(model, zp.params, loss_fn, next(ctx.seeds), a.eps, a.lr, a.weight_decay,
                                           zp.decay)


def step_case(model, zp: ZOParams, clock: ForwardClock, ctx: Context) -> Callable[[], Inner]:
    """The timed case: the step with ``clock`` as its loss, returning the time of its own two forwards."""
    return with_inner(oop_step(model, zp, clock, ctx), clock)


def with_oop_budget(memory: dict[str, dict]) -> dict[str, dict]:
    """``memory`` and, where inference was measured, ``OOP_BUDGET``: its peak plus the model's largest weight."""
    infer = memory.get("full:infer")
    if infer is None:
        return memory
    budget = {"peak_bytes": infer["peak_bytes"] + infer["largest_weight_bytes"],
              "largest_weight_bytes": infer["largest_weight_bytes"],
              "method": "derived: the full:infer peak plus the largest single weight"}
    return {**memory, OOP_BUDGET: budget}


def ratios(variants: tuple[str, ...]) -> list[Ratio]:
    """i.: step and peak memory, for full-parameter training only."""
    if "full" not in variants:
        return []
    return [Ratio("zo_step_oop_over_zo_step/full", "t:zo_step_oop/full", "t:zo_step/full", 1.0, "<=", 1.1,
                  "i: out-of-place ZO step (--zo_perturb out_of_place) / in-place ZO step (full)"),
            Ratio("zo_step_oop_over_two_forwards/full", "t:zo_step_oop/full", "t:forward/full", 2.0, "", 0.0,
                  "out-of-place ZO step / 2 forwards (full)"),
            Ratio("peak_memory_oop_over_budget/full", "m:full:zo_oop", f"m:{OOP_BUDGET}", 1.0, "<=", 1.0,
                  "i: out-of-place ZO peak memory / (inference peak + largest single weight) (full)"),
            Ratio("peak_memory_oop_over_inference/full", "m:full:zo_oop", "m:full:infer", 1.0, "", 0.0,
                  "out-of-place ZO peak memory / inference peak (full)")]
