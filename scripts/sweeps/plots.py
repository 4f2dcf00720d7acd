"""``python scripts/plots.py SWEEP.toml``: figures of a sweep's results, each as PNG and PDF.

* ``loss``: training loss against step, one panel per cell of the aggregated table, one line per run (seed);
  dotted grey vertical lines mark the steps of its runs' boosting merges (``train.boosting.merges[*].step``).
* ``dev``: the dev metric against step (the log history's ``eval_<metric>`` entries), laid out the same way.
* ``bars``: the aggregated table's metric per cell, mean with a standard deviation error bar, n above each bar.
* ``delta_norm``: for XGBLoRA runs, |dW| of each merge (``train.boosting.merges[*].delta_norm``) against step.

A figure with nothing to show (no XGBLoRA run, no dev evaluation) is left out and the command says so.
"""
from __future__ import annotations

import argparse
import math
import sys
import textwrap
from pathlib import Path

from matplotlib.figure import Figure

from .aggregate import NONE, Cell, Table, build_table
from .load import load_or_exit
from .spec import SweepError

COLORS = [f"C{i}" for i in range(10)]


def loss_curve(result: dict) -> tuple[list[int], list[float]]:
    """Steps and training losses of the log history (the Trainer's per-``logging_steps`` means)."""
    rows = [h for h in result.get("train", {}).get("log_history", []) if isinstance(h.get("loss"), (int, float))]
    return [h["step"] for h in rows], [h["loss"] for h in rows]


def dev_curve(result: dict, metric: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``eval_<metric>`` in the log history (dev evaluations during training)."""
    key = f"eval_{metric}"
    rows = [h for h in result.get("train", {}).get("log_history", []) if isinstance(h.get(key), (int, float))]
    return [h["step"] for h in rows], [h[key] for h in rows]


def merges(result: dict) -> list[dict]:
    """The boosting merges recorded in the result (empty for runs without XGBLoRA)."""
    return (result.get("train", {}).get("boosting") or {}).get("merges", [])


def cell_title(table: Table, cell: Cell, width: int | None = 40) -> str:
    """The cell's variables (those its grid sets), wrapped to ``width`` characters, or one a line (None)."""
    parts = [f"{k}={v}" for k, v in zip(table.by, cell.key) if v != NONE] or ["all runs"]
    return "\n".join(parts) if width is None else "\n".join(textwrap.wrap(" ".join(parts), width))


def run_label(table: Table, run) -> str:
    """The run's values of the variables that do not name its cell (the seed, usually)."""
    rest = {k: v for k, v in run.point.variables.items() if k not in table.by}
    return " ".join(f"{k}={v}" for k, v in rest.items()) or run.point.name


def panels(cells: list[Cell], title: str) -> tuple[Figure, list]:
    """A figure with one panel per cell, up to three across."""
    cols = min(3, len(cells))
    rows = math.ceil(len(cells) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows + 0.6), layout="constrained")
    axes = [fig.add_subplot(rows, cols, 1)]
    axes += [fig.add_subplot(rows, cols, i + 1, sharey=axes[0]) for i in range(1, len(cells))]
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
    fig.suptitle(title)
    return fig, axes


def plot_loss(table: Table) -> Figure | None:
    """Training loss against step per cell; each step at which a run of the cell merged, a dotted line."""
    cells = [c for c in table.cells if any(loss_curve(r.result)[0] for r in c.done)]
    if not cells:
        return None
    fig, axes = panels(cells, "Training loss (dotted grey: boosting merges)")
    for ax, cell in zip(axes, cells):
        for color, run in zip(COLORS * 10, cell.done):
            ax.plot(*loss_curve(run.result), color=color, lw=1.2, label=run_label(table, run))
        for step in sorted({m["step"] for run in cell.done for m in merges(run.result)}):
            ax.axvline(step, color="0.4", ls=":", lw=0.9)
        ax.set(title=cell_title(table, cell), xlabel="step", ylabel="training loss")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    return fig


def plot_dev(table: Table, metric: str) -> Figure | None:
    """Dev ``metric`` against step per cell, one line per run."""
    cells = [c for c in table.cells if any(dev_curve(r.result, metric)[0] for r in c.done)]
    if not cells:
        return None
    fig, axes = panels(cells, f"Dev {metric} during training")
    for ax, cell in zip(axes, cells):
        for color, run in zip(COLORS * 10, cell.done):
            ax.plot(*dev_curve(run.result, metric), "o-", color=color, lw=1.2, ms=3, label=run_label(table, run))
        ax.set(title=cell_title(table, cell), xlabel="step", ylabel=f"dev {metric}")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    return fig


def plot_bars(table: Table, metric: str) -> Figure | None:
    """The aggregated ``metric`` per cell: mean, standard deviation as error bar, n above the bar."""
    stats = [table.stats(c, metric) for c in table.cells]
    if not any(n for _, _, n in stats):
        return None
    fig = Figure(figsize=(max(4.0, 1.1 * len(stats) + 1.5), 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = range(len(stats))
    means = [m if m is not None else 0.0 for m, _, _ in stats]
    ax.bar(x, means, yerr=[s or 0.0 for _, s, _ in stats], capsize=4, color="C0", alpha=0.8)
    for i, (mean, std, n) in enumerate(stats):
        ax.annotate(f"n={n}", (i, (mean or 0.0) + (std or 0.0)), xytext=(0, 5), ha="center",
                    textcoords="offset points", fontsize=8)
    ax.set_xticks(list(x), [cell_title(table, c, None) for c in table.cells], fontsize=7)
    ax.set(ylabel=metric, title=f"{metric}: mean ± std over {', '.join(_over(table)) or 'runs'}")
    return fig


def _over(table: Table) -> list[str]:
    return list(dict.fromkeys(k for r in table.runs for k in r.point.variables if k not in table.by))


def plot_delta_norms(table: Table) -> Figure | None:
    """|dW| of each XGBLoRA merge against its step, per cell, one line per run."""
    cells = [c for c in table.cells if any(merges(r.result) for r in c.done)]
    if not cells:
        return None
    fig, axes = panels(cells, "XGBLoRA: |dW| per merge")
    for ax, cell in zip(axes, cells):
        for color, run in zip(COLORS * 10, cell.done):
            rows = merges(run.result)
            ax.plot([m["step"] for m in rows], [m["delta_norm"] for m in rows], "o-", color=color, ms=3,
                    lw=1.0, label=run_label(table, run))
        ax.set(title=cell_title(table, cell), xlabel="merge step", ylabel="|dW|")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    return fig


def save(fig: Figure, out: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` (150 dpi) and ``<stem>.pdf`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150)
    return paths


def draw_all(table: Table, metric: str, out: Path) -> dict[str, list[Path] | str]:
    """Every figure written to ``out``; for each stem, its files or why it was left out."""
    name = metric.partition(".")[2]
    figures = {"loss": (plot_loss(table), "no training loss in any completed result"),
               "dev": (plot_dev(table, name), f"no eval_{name} entries (dev evaluations) in any log history"),
               "bars": (plot_bars(table, metric), f"no completed result has {metric}"),
               "delta_norm": (plot_delta_norms(table), "no boosting merges (no XGBLoRA run) in any result")}
    return {stem: save(fig, out, stem) if fig is not None else why for stem, (fig, why) in figures.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="plots.py", description="Figures of a sweep's results (PNG and PDF).")
    p.add_argument("sweep", help="the sweep file (TOML)")
    p.add_argument("--metric", help="metric of the bar chart and dev curves (default: the first eval.* found)")
    p.add_argument("--over", help="the variable each panel's lines differ in (default: the sweep's 'over')")
    p.add_argument("--out", type=Path, help="folder for the figures (default: <result_dir>/plots)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sweep = load_or_exit(args.sweep, "plots.py")
    try:
        table = build_table(sweep, args.over, [args.metric] if args.metric else None)
    except SweepError as err:
        raise SystemExit(f"plots.py: error: {err}") from None
    metric = args.metric or next(iter(table.metrics), None)
    if metric is None:
        sys.exit(f"plots.py: error: no completed result with eval or dev metrics in {sweep.result_dir}; "
                 f"run the sweep first (scripts/sweep.py {args.sweep})")
    for stem, written in draw_all(table, metric, args.out or sweep.result_dir / "plots").items():
        print(f"{stem}: " + (", ".join(map(str, written)) if isinstance(written, list) else f"left out ({written})"))
    return 0
