"""``python scripts/aggregate.py SWEEP.toml``: every result of a sweep in one table, as Markdown and CSV.

A cell is one setting of the grid variables other than ``--over`` (the sweep's ``over``, default SEED); it shows
each metric's mean +- sample standard deviation over the completed runs behind it, how many runs that is, and how
many of its points have no completed result. The points missing from the table (no result, interrupted,
diverged, unreadable) are listed under it with their status. Metrics are the result JSON's ``eval`` and ``dev``
entries (``eval.accuracy``, ``dev.accuracy``, ``eval.f1``, ...).
"""
from __future__ import annotations

import argparse
import csv
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .load import load_or_exit
from .spec import Point, Sweep
from .state import State, read_result, read_state

NONE = "-"  # a variable that a point's grid does not set


@dataclass
class Run:
    """A point, its state and (when completed) its result JSON."""

    point: Point
    state: State
    result: dict | None


@dataclass
class Cell:
    """The runs of one setting of the grouping variables."""

    key: tuple[str, ...]
    done: list[Run] = field(default_factory=list)
    missing: list[Run] = field(default_factory=list)


def collect(sweep: Sweep) -> list[Run]:
    """Every point of ``sweep`` with its state; the result JSON of the completed ones."""
    runs = []
    for point in sweep.points():
        state = read_state(point.result_file, point.output_dir)
        runs.append(Run(point, state, read_result(point.result_file) if state.finished else None))
    return runs


def metric_value(result: dict, metric: str) -> float | None:
    """``result[section][name]`` for ``metric`` = ``section.name`` (``eval.accuracy``), if it is a number."""
    section, _, name = metric.partition(".")
    value = (result.get(section) or {}).get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def metric_names(runs: list[Run]) -> list[str]:
    """The numeric ``eval.*`` then ``dev.*`` metrics found in any completed result."""
    names = {}
    for section in ("eval", "dev"):
        for run in runs:
            for name in (run.result or {}).get(section) or {}:
                if metric_value(run.result, f"{section}.{name}") is not None:
                    names[f"{section}.{name}"] = None
    return list(names)


def group(runs: list[Run], by: list[str]) -> list[Cell]:
    """Cells keyed by the values of ``by``, in the order the grid first reaches them."""
    cells: dict[tuple, Cell] = {}
    for run in runs:
        key = tuple(run.point.variables.get(v, NONE) for v in by)
        cell = cells.setdefault(key, Cell(key))
        (cell.done if run.state.finished else cell.missing).append(run)
    return list(cells.values())


def summary(values: list[float]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (None below two values) and count."""
    if not values:
        return None, None, 0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


@dataclass
class Table:
    """The aggregated cells, with the grouping variables and metrics they are shown by."""

    by: list[str]
    metrics: list[str]
    cells: list[Cell]
    runs: list[Run]

    def stats(self, cell: Cell, metric: str) -> tuple[float | None, float | None, int]:
        values = [metric_value(r.result, metric) for r in cell.done]
        return summary([v for v in values if v is not None])

    def missing(self) -> list[Run]:
        return [r for r in self.runs if not r.state.finished]


def build_table(sweep: Sweep, over: str | None = None, metrics: list[str] | None = None) -> Table:
    """Read the sweep's results and group them by every grid variable but ``over``."""
    runs = collect(sweep)
    over = sweep.over if over is None else over
    by = [v for v in sweep.variables() if v != over]
    return Table(by, metrics or metric_names(runs), group(runs, by), runs)


def csv_text(table: Table) -> str:
    """One row per cell: the grouping values, ``<metric>_mean``, ``_std``, ``_n`` per metric, runs, missing."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*table.by, *(f"{m}_{s}" for m in table.metrics for s in ("mean", "std", "n")),
                     "runs", "missing"])
    for cell in table.cells:
        stats = [table.stats(cell, m) for m in table.metrics]
        writer.writerow([*cell.key, *("" if x is None else x for s in stats for x in s),
                         len(cell.done), len(cell.missing)])
    return out.getvalue()


def _fmt(mean: float | None, std: float | None, n: int, runs: int) -> str:
    if mean is None:
        return NONE
    text = f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"
    return text if n == runs else f"{text} (n={n})"


def markdown_text(table: Table, title: str) -> str:
    """The table in Markdown, then the points it leaves out with their status."""
    head = [*table.by, *table.metrics, "runs", "missing"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in table.cells:
        values = [_fmt(*table.stats(cell, m), len(cell.done)) for m in table.metrics]
        lines.append("| " + " | ".join([*cell.key, *values, str(len(cell.done)), str(len(cell.missing))]) + " |")
    missing = table.missing()
    lines += ["", f"Mean ± sample standard deviation over the completed runs of each cell; runs: how many. "
                  f"Not in the table: {len(missing)} of {len(table.runs)} runs."]
    lines += [f"- {r.point.label()}: {r.state.detail} ({r.point.result_file.name})" for r in missing]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aggregate.py", description="Tabulate a sweep's results (Markdown and CSV).")
    p.add_argument("sweep", help="the sweep file (TOML)")
    p.add_argument("--over", help="the variable to average over (default: the sweep's 'over', else SEED)")
    p.add_argument("--metric", action="append", help="a metric to show, e.g. eval.accuracy (repeatable; "
                                                     "default: every eval.* and dev.* metric found)")
    p.add_argument("--out", type=Path, help="folder for summary.md and summary.csv (default: the result_dir)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sweep = load_or_exit(args.sweep, "aggregate.py")
    table = build_table(sweep, args.over, args.metric)
    out = args.out or sweep.result_dir
    out.mkdir(parents=True, exist_ok=True)
    text = markdown_text(table, f"Sweep {sweep.name}")
    (out / "summary.md").write_text(text, encoding="utf-8")
    (out / "summary.csv").write_text(csv_text(table), encoding="utf-8")
    print(text + f"\nwritten: {out / 'summary.md'}, {out / 'summary.csv'}")
    return 0
