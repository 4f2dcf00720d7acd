"""``python scripts/study.py STUDY.toml``: the tables and figures of a study made of several sweeps.

A study file names methods, each a sweep file and the grid values that pick its runs, and optionally ablation
sweeps compared with one of the methods::

    [study]
    out = "docs/study"                       # tables.md and figures/ go here
    metric = "eval.accuracy"

    [[method]]
    label = "regular LoRA r=8"
    sweep = "docs/study/sst2-regular.toml"
    select = {MODE = "lora"}                 # grid values of the runs that belong to it (default: every run)

    [[ablation]]
    sweep = "docs/study/sst2-ablations.toml"
    reference = "regular XGBLoRA r=1"        # a method's label: its seed spread is drawn beside the points

It writes ``tables.md`` (per method and task: the metric's mean +- std over seeds and n, trainable parameters,
wall time, steps per second, peak memory; then every run with its result file; then the ablations) and figures
(PNG and PDF): ``dev_<trainer>`` (dev metric against step, mean over seeds with a min-max band), ``loss_<trainer>``
(training loss, mean over seeds, dotted lines at the first run's XGBLoRA merges), ``projected_grad`` (zo runs:
mean |projected gradient| per logging interval) and ``ablations``. Paths are relative to the directory it runs
from. Everything comes from the result JSONs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from .aggregate import Run, check_metrics, collect, metric_names, metric_value, summary
from .keys import closest
from .load import load_sweep, read_toml
from .plots import dev_curve, loss_curve, merges, save
from .spec import SweepError, format_value


DRIVER_TRAINER = {"mezo.sh": "zo", "finetune.sh": "regular", "icl.sh": "none"}


@dataclass
class Method:
    """A row of the study: a label and the runs of one sweep that its ``select`` values pick."""

    label: str
    sweep: Path
    select: dict[str, str]
    runs: list[Run]
    trainer: str  # zo, regular or none, as the sweep's driver runs it


@dataclass
class Study:
    out: Path
    metric: str
    methods: list[Method]
    ablations: list[tuple[list[Run], str | None]]  # (the runs of an ablation sweep, the reference method's label)


def _picked(runs: list[Run], select: dict[str, str]) -> list[Run]:
    return [r for r in runs if all(r.point.variables.get(k, r.point.settings.get(k)) == v for k, v in select.items())]


def load_study(path: str | Path) -> Study:
    """Read the study file and every run of its sweeps; SweepError names a bad key or file."""
    path = Path(path)
    data = read_toml(path, "study file")
    head = data.get("study", {})
    methods = [_method(path, i, m) for i, m in enumerate(data.get("method", []))]
    labels = [m.label for m in methods]
    if twice := sorted({label for label in labels if labels.count(label) > 1}):
        raise SweepError(f"{path}: [[method]] label {twice[0]!r} is given to {labels.count(twice[0])} methods; "
                         f"each row of the tables needs a label of its own")
    ablations = []
    for a in data.get("ablation", []):
        if a.get("reference") is not None and a["reference"] not in labels:
            raise SweepError(f"{path}: [[ablation]] reference {a['reference']!r} is no method's label"
                             f"{closest(str(a['reference']), labels)}")
        ablations.append((collect(load_sweep(a["sweep"])), a.get("reference")))
    metric = head.get("metric", "eval.accuracy")
    runs = [r for m in methods for r in m.runs] + [r for runs, _ in ablations for r in runs]
    try:
        check_metrics([metric], metric_names(runs))
    except SweepError as err:
        raise SweepError(f"{path}: [study] metric: {str(err).removeprefix('--metric ')}") from None
    return Study(Path(head.get("out", path.parent)), metric, methods, ablations)


def _method(path: Path, index: int, table: dict) -> Method:
    """The ``index``-th ``[[method]]`` of the study file at ``path``: its sweep's runs that ``select`` picks.
    A select key that is no key of the sweep, or values that pick no run, raise SweepError naming them."""
    if "label" not in table or "sweep" not in table:
        raise SweepError(f"{path}: [[method]] {index + 1} needs a label and a sweep")
    select = {k: format_value(v) for k, v in table.get("select", {}).items()}
    sweep = load_sweep(table["sweep"])
    keys = list(dict.fromkeys([*sweep.variables(), *sweep.fixed]))
    where = f"{path}: [[method]] {table['label']!r} select"
    for key in select:
        if key not in keys:
            raise SweepError(f"{where} {key}: not a key of {table['sweep']}{closest(key, keys)} "
                             f"(its keys: {', '.join(keys)})")
    runs = collect(sweep)
    picked = _picked(runs, select)
    if not picked:
        values = {k: sorted({r.point.settings.get(k, "-") for r in runs}) for k in select}
        raise SweepError(f"{where} {select}: picks none of the {len(runs)} runs of {table['sweep']} (its values: "
                         + "; ".join(f"{k} {', '.join(v)}" for k, v in values.items()) + ")")
    return Method(table["label"], Path(table["sweep"]), select, picked,
                  DRIVER_TRAINER.get(Path(sweep.driver_label).name, "regular"))


# ---- reading runs ---------------------------------------------------------------------------------------------
def done(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.result is not None]


def task_of(run: Run) -> str:
    return (run.result or {}).get("task") or run.point.settings.get("TASK", "?")


def by_task(runs: list[Run]) -> dict[str, list[Run]]:
    tasks: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        tasks[task_of(run)].append(run)
    return dict(tasks)


def field_of(result: dict, *keys: str):
    """``result[k1][k2]...`` or None."""
    for key in keys:
        result = result.get(key) if isinstance(result, dict) else None
    return result


def wall_s(result: dict) -> float | None:
    return field_of(result, "resources", "wall_s") or result.get("runtime_s")


# ---- tables ---------------------------------------------------------------------------------------------------
def _mean(values) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.fmean(values) if values else None


def _fmt(value, spec: str, missing: str = "") -> str:
    return missing if value is None else format(value, spec)


def _metric_cell(values: list[float], planned: int) -> str:
    mean, std, n = summary(values)
    if mean is None:
        return f"- (0/{planned})"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "") + f" ({n}/{planned})"


def method_table(study: Study) -> str:
    """One row per method and task: the metric over seeds (completed / planned runs) and what a run cost."""
    lines = [f"| method | task | {study.metric} (mean ± std, runs) | trainable parameters | wall time per run (min) "
             "| steps/s | peak RSS (GiB) |", "|---|---|---|---:|---:|---:|---:|"]
    for method in study.methods:
        for task, runs in by_task(method.runs).items():
            results = [r.result for r in done(runs)]
            metric = [v for v in (metric_value(res, study.metric) for res in results) if v is not None]
            params = _mean(field_of(res, "train", "trainable_parameters") for res in results)
            wall = _mean(wall_s(res) for res in results)
            speed = _mean(field_of(res, "train", "steps_per_s") for res in results)
            rss = _mean(field_of(res, "resources", "peak_rss_mib") for res in results)
            lines.append(f"| {method.label} | {task} | {_metric_cell(metric, len(runs))} | "
                         f"{_fmt(params, ',.0f', '0' if method.trainer == 'none' else '')} | "
                         f"{_fmt(wall and wall / 60, '.1f')} | {_fmt(speed, '.3f')} | "
                         f"{_fmt(rss and rss / 1024, '.2f')} |")
    return "\n".join(lines)


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()


def runs_table(study: Study, metric_dev: str = "dev.accuracy") -> str:
    """Every run of every method: its variables, status, metric, best dev, steps and result file."""
    lines = [f"| method | task | run | status | {study.metric} | {metric_dev} | steps | result |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for method in study.methods:
        for run in method.runs:
            res = run.result or {}
            rest = " ".join(f"{k}={v}" for k, v in run.point.variables.items() if k not in method.select) or "-"
            lines.append(f"| {method.label} | {task_of(run)} | {rest} | {run.state.kind} | "
                         f"{_fmt(metric_value(res, study.metric), '.3f')} | {_fmt(metric_value(res, metric_dev), '.3f')}"
                         f" | {_fmt(field_of(res, 'train', 'global_step'), 'd')} | "
                         f"[{run.point.result_file.name}]({_relative(run.point.result_file, study.out)}) |")
    return "\n".join(lines)


def reference_values(study: Study, label: str | None) -> list[float]:
    method = next((m for m in study.methods if m.label == label), None)
    runs = done(method.runs) if method else []
    return [v for v in (metric_value(r.result, study.metric) for r in runs) if v is not None]


def ablation_table(study: Study) -> str:
    lines = []
    for runs, reference in study.ablations:
        ref = reference_values(study, reference)
        mean, std, n = summary(ref)
        if reference:
            lines.append(f"Reference: {reference}, {study.metric} {_metric_cell(ref, n)}.\n")
        lines += [f"| setting | status | {study.metric} | minus the reference mean | trainable parameters |",
                  "|---|---|---:|---:|---:|"]
        for run in runs:
            value = metric_value(run.result or {}, study.metric)
            diff = value - mean if value is not None and mean is not None else None
            lines.append(f"| {run.point.label()} | {run.state.kind} | {_fmt(value, '.3f')} | {_fmt(diff, '+.3f')} | "
                         f"{_fmt(field_of(run.result or {}, 'train', 'trainable_parameters'), ',d')} |")
        lines.append("")
    return "\n".join(lines)


# ---- figures --------------------------------------------------------------------------------------------------
def mean_curve(curves: list[tuple[list[int], list[float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps present in every curve, and the mean, minimum and maximum there."""
    steps = sorted(set.intersection(*(set(s) for s, _ in curves))) if curves else []
    at = [dict(zip(s, v)) for s, v in curves]
    cols = [[c[s] for c in at] for s in steps]
    return steps, [statistics.fmean(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]


def _banded(ax, curves, label: str, color: str) -> bool:
    drawn = [c for c in curves if c[0]]
    steps, mean, low, high = mean_curve(drawn)
    if not steps:
        return False
    ax.plot(steps, mean, color=color, label=f"{label} ({len(drawn)} run{'' if len(drawn) == 1 else 's'})")
    ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
    return True


def _trainer_groups(study: Study) -> dict[str, list[Method]]:
    groups: dict[str, list[Method]] = defaultdict(list)
    for method in study.methods:
        if method.trainer != "none":
            groups[method.trainer].append(method)
    return dict(groups)


def plot_curves(study: Study, methods: list[Method], kind: str, trainer: str) -> Figure | None:
    """Dev metric (``kind`` "dev") or training loss ("loss") against step: one line per method and task, the mean
    over its runs with a min-max band; for "loss", dotted lines at the first run's merges."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    metric = study.metric.partition(".")[2]
    drawn = False
    for i, method in enumerate(methods):
        for task, runs in by_task(done(method.runs)).items():
            curves = [dev_curve(r.result, metric) if kind == "dev" else loss_curve(r.result) for r in runs]
            color = f"C{i % 10}"
            drawn |= _banded(ax, curves, f"{method.label}, {task}", color)
            if kind == "loss" and runs:
                for merge in merges(runs[0].result):
                    ax.axvline(merge["step"], color=color, linestyle=":", linewidth=0.8, alpha=0.6)
    if not drawn:
        return None
    ax.set_xlabel("step")
    ax.set_ylabel(f"dev {metric}" if kind == "dev" else "training loss")
    ax.set_title(f"{trainer} training: {'dev ' + metric if kind == 'dev' else 'training loss'} (mean, min-max band)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_projected(study: Study, methods: list[Method]) -> Figure | None:
    """zo runs: mean |projected gradient| per logging interval against step (mean over runs, min-max band)."""
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    drawn = False
    for i, method in enumerate(methods):
        curves = []
        for run in done(method.runs):
            rows = [h for h in field_of(run.result, "train", "log_history") or [] if "projected_grad_abs_mean" in h]
            curves.append(([h["step"] for h in rows], [h["projected_grad_abs_mean"] for h in rows]))
        drawn |= _banded(ax, curves, method.label, f"C{i % 10}")
    if not drawn:
        return None
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("mean |projected gradient| per logging interval")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_ablations(study: Study) -> Figure | None:
    """The ablation points' metric as horizontal bars; the reference method's mean +- std as a shaded span."""
    rows = [(run, ref) for runs, ref in study.ablations for run in runs if run.result is not None]
    if not rows:
        return None
    fig = Figure(figsize=(7.5, 0.45 * len(rows) + 1.5))
    ax = fig.subplots()
    values = [metric_value(run.result, study.metric) or 0.0 for run, _ in rows]
    ax.barh(range(len(rows)), values, color="C1")
    ax.set_yticks(range(len(rows)), [run.point.label() for run, _ in rows], fontsize=8)
    for reference in {ref for _, ref in rows if ref}:
        mean, std, n = summary(reference_values(study, reference))
        if mean is not None:
            ax.axvline(mean, color="C0", label=f"{reference}: mean of {n} seeds ± std")
            if std is not None:
                ax.axvspan(mean - std, mean + std, color="C0", alpha=0.2)
    low = min(values + [1.0])
    ax.set_xlim(max(0.0, low - 0.1), 1.0)
    ax.set_xlabel(study.metric)
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def draw_all(study: Study) -> dict[str, list[Path]]:
    out, figures = study.out / "figures", {}
    for trainer, methods in _trainer_groups(study).items():
        figures[f"dev_{trainer}"] = plot_curves(study, methods, "dev", trainer)
        figures[f"loss_{trainer}"] = plot_curves(study, methods, "loss", trainer)
        if trainer == "zo":
            figures["projected_grad"] = plot_projected(study, methods)
    figures["ablations"] = plot_ablations(study)
    return {stem: save(fig, out, stem) for stem, fig in figures.items() if fig is not None}


COST_NOTE = ("Wall time, steps/s and peak RSS are a run's last process's: for a run resumed across processes they "
             "cover its last stretch only (a result's `ledger`, where it has one, sums the training's forwards and "
             "seconds over every process).")


def tables_text(study: Study) -> str:
    parts = ["<!-- written by scripts/study.py from the result JSONs; do not edit by hand -->",
             "## Methods", method_table(study), COST_NOTE, "## Every run", runs_table(study)]
    if study.ablations:
        parts += ["## Ablations", ablation_table(study)]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Tables and figures of a study (several sweeps).")
    p.add_argument("study", help="the study file (TOML)")
    args = p.parse_args(argv)
    try:
        study = load_study(args.study)
    except SweepError as err:
        print(f"study.py: error: {err}", file=sys.stderr)
        return 2
    study.out.mkdir(parents=True, exist_ok=True)
    (study.out / "tables.md").write_text(tables_text(study), encoding="utf-8")
    print(f"tables: {study.out / 'tables.md'}")
    for stem, paths in draw_all(study).items():
        print(f"{stem}: {', '.join(str(p) for p in paths)}")
    return 0

