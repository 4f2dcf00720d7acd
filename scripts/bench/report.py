"""The ratios of a run in the table's order, and the markdown table: ratios with their targets, the ZO optimizer
state, the raw times and peaks."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import memory, out_of_place, scoring, step
from bench.ratios import Ratio


def ratio_specs(variants: tuple[str, ...], candidates: int = 2, trainer_step: bool = False) -> list[Ratio]:
    """The measurements of the issue and their targets, for the variants that were run."""
    return (step.ratios(variants, candidates) + memory.ratios(variants) + out_of_place.ratios(variants)
            + scoring.ratios(variants) + step.late_ratios(variants, trainer_step))


def _ratio_row(r: dict) -> dict:
    return {"measurement": r["label"], "value": f"{r['value']:.3f}",
            "cpu": f"{r['value_cpu_time']:.3f}" if "value_cpu_time" in r else "", "target": r["target"] or "(info)",
            "result": "" if r["pass"] is None else ("pass" if r["pass"] else "FAIL")}


def table_rows(times: dict, peaks: dict, ratios: dict, states: dict | None = None) -> list[dict]:
    """Rows of the markdown table: the ratios with targets first, the optimizer state, the raw times and peaks."""
    rows = [_ratio_row(r) for r in ratios.values()]
    rows += memory.state_rows(states or {})
    rows += [{"measurement": f"time {k} (median of {len(v['samples'])})", "value": f"{v['median'] * 1e3:.1f} ms",
              "cpu": f"{v['cpu_median'] * 1e3:.1f} ms", "target": "", "result": ""} for k, v in times.items()]
    rows += [{"measurement": f"peak memory {k}", "value": f"{v['peak_bytes'] / 2**20:.0f} MiB", "cpu": "",
              "target": "", "result": ""} for k, v in peaks.items()]
    return rows


def markdown(rows: list[dict]) -> str:
    """The table: value from wall time (or memory), the same from CPU time, target, pass/fail (on the value)."""
    lines = ["| measurement | value | value from CPU time | target | pass/fail |", "| --- | ---: | ---: | --- | --- |"]
    lines += [f"| {r['measurement']} | {r['value']} | {r['cpu']} | {r['target']} | {r['result']} |" for r in rows]
    return "\n".join(lines)


def write_and_print(args: argparse.Namespace, result: dict, out: Path, what: str) -> None:
    """Write ``result`` as JSON to ``out``, then print the run's line (the real model, ``what``, the CPU, the
    threads and how busy other processes kept the machine) and the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    other = result["meta"]["load"].get("other_processes_cores", float("nan"))
    print(f"\n{args.trainer_step_model} {what} / SST-2 x{args.examples} / cpu {result['meta']['device_name']} / "
          f"{args.threads} threads / other processes ~{other:.2f} cores\n")
    print(markdown(result["table"]))
