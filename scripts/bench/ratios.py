"""A ratio of two stored measurements, its target, and its value from the wall-time (and CPU-time) medians.

Each case module declares its own ratios; ``report.ratio_specs`` lists them in the table's order."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ratio:
    """value = num / (factor * den); num and den name a time ("t:...") or a memory peak ("m:...")."""

    key: str
    num: str
    den: str
    factor: float = 1.0
    op: str = ""  # "<=", "<", ">=" or "" for information only
    threshold: float = 0.0
    label: str = ""


def lookup(ref: str, times: dict, memory: dict, field: str = "median") -> float:
    """The median wall time (or ``field`` of the time), or the peak bytes, that a ratio's num / den names."""
    kind, key = ref.split(":", 1)
    return times[key][field] if kind == "t" else memory[key]["peak_bytes"]


def passes(value: float, op: str, threshold: float) -> bool | None:
    if not op:
        return None
    return {"<=": value <= threshold, "<": value < threshold, ">=": value >= threshold}[op]


def compute_ratios(specs: list[Ratio], times: dict, memory: dict) -> dict[str, dict]:
    """Each ratio from the wall-time medians (or memory peaks); time ratios also from the CPU-time medians."""
    out = {}
    for s in specs:
        value = lookup(s.num, times, memory) / (s.factor * lookup(s.den, times, memory))
        out[s.key] = {"value": value, "num": s.num, "den": s.den, "factor": s.factor, "label": s.label,
                      "target": f"{s.op} {s.threshold:g}" if s.op else "", "pass": passes(value, s.op, s.threshold)}
        if s.num.startswith("t:"):
            cpu = lookup(s.num, times, memory, "cpu_median") / (s.factor * lookup(s.den, times, memory, "cpu_median"))
            out[s.key]["value_cpu_time"] = cpu
    return out
