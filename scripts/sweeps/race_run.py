"""``python scripts/race.py RACE.toml``: run a race (``race.py`` says what one is) until it is decided, then write
its summary: ``race.json`` (every search and final run), ``race.md`` (the table) and two figures, dev accuracy
against training forwards and against training CPU seconds, one band (min to max over the seeds) per method.

Whenever a slot of the local queue is free (``--jobs`` runs at once, each pinned to its cores, as ``sweep.py``),
the race plans again from the result files and starts the first task not already running, so no core waits for a
round's slowest run; a task that ends short of its budget stops the race once the running ones end (fix and run
again: everything done is kept).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
from pathlib import Path

from matplotlib.figure import Figure

from .local import LocalQueue, SlotError, default_jobs, make_slots
from .race import BUDGET_VARIABLE, Plan, Race, Search, Task, continued_runs, load_race, make_plan, progress, \
    snapshot_path, take_snapshots
from .spec import Point, SweepError
from .stats import mcnemar, t_interval
from .state import read_result
from .worker import Launch, make_launch

logger = logging.getLogger("race")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="race.py", description=__doc__.split("\n\n")[0])
    p.add_argument("race", help="the race file (TOML), e.g. docs/race/sst2-lora.toml")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at once, each on its share of the cores (default: one per core, one thread each)")
    p.add_argument("--dry-run", action="store_true", help="print the next round's runs and commands; run nothing")
    p.add_argument("--report", action="store_true", help="only write race.json, race.md and the figures")
    p.add_argument("--checkpoints", action="store_true",
                   help="print the checkpoint folders the race will continue from, one a line (to keep or copy "
                        "when the race moves to a fresh checkout); run nothing")
    return p.parse_args(argv)


def latest_checkpoints(points: list[Point]) -> list[Path]:
    """The newest ``checkpoint-<step>`` folder of each point's run folder (the result path without .json)."""
    found = []
    for point in points:
        folders = point.result_file.with_suffix("").glob("checkpoint-*")
        steps = {int(f.name.split("-")[1]): f for f in folders if f.name.split("-")[1].isdigit()}
        if steps:
            found.append(steps[max(steps)])
    return found


def launch(race: Race, task: Task) -> Launch:
    """The driver run that continues ``task.point`` to ``task.budget`` forwards."""
    base = make_launch(race, task.point)
    return dataclasses.replace(base, env={**base.env, BUDGET_VARIABLE: str(task.budget)})


def print_round(plan: Plan, race: Race) -> None:
    for state in plan.searches:
        what = f"chose LR {state.chosen}" if state.chosen else f"{len(state.tasks)} run(s) to go"
        print(f"{state.method.label:<24} grid {' '.join(state.grid)}: {what}")
    for task in plan.tasks():
        print(f"  run {task.label} LR={task.point.variables['LR']} seed={task.point.variables['RUN_SEED']} "
              f"to {task.budget} forwards\n      {launch(race, task).shell_line()}")


def ended_short(race: Race, task: Task) -> str | None:
    """What is wrong with a finished task that stopped short of its budget (None: it reached it, or diverged)."""
    done = progress(task.point.result_file)
    if done.forwards < task.budget and not done.status.startswith("diverged"):
        return (f"{task.point.name}: {done.forwards} of {task.budget} forwards ({done.status or 'no result'}); "
                f"log {race.result_dir / 'logs' / (task.point.name + '.log')}")
    return None


def run_tasks(race: Race, jobs: int) -> tuple[list[str], bool]:
    """Run the race's tasks until it is decided, a task ends short of its budget or a signal stops the queue,
    planning again each time a slot is free; the problems of the tasks that ended short, and whether a signal
    stopped it."""
    started: dict[str, Task] = {}
    short: list[str] = []

    def check_ended(running: set[str]) -> None:
        for name in [n for n in started if n not in running]:
            problem = ended_short(race, started.pop(name))
            if problem:
                short.append(problem)

    def more(running: set[str]) -> list[Launch]:
        check_ended(running)
        if short:
            return []
        plan = make_plan(race)
        take_snapshots(race, plan.points())
        task = next((t for t in plan.tasks() if t.point.name not in running), None)
        if task is None:
            return []
        started[task.point.name] = task
        logger.info("next: %s LR=%s seed=%s to %d forwards", task.label, task.point.variables["LR"],
                    task.point.variables["RUN_SEED"], task.budget)
        return [launch(race, task)]

    queue = LocalQueue(make_slots(jobs, None, None))
    queue.run([], more)
    check_ended(set())
    return short, queue.stopping


# ---- the summary -----------------------------------------------------------------------------------------------
def run_summary(point: Point) -> dict:
    """One run's numbers: dev and test accuracy (``test_last``: the last step's model, where the run evaluated it
    with ``--eval_last_model``), the ledger, peak RSS; test at a third of the budget if kept."""
    result = read_result(point.result_file) or {}
    third = read_result(snapshot_path(point)) or {}
    ledger = result.get("ledger", {})
    return {"name": point.name, "status": result.get("status"), "dev": result.get("dev", {}).get("accuracy"),
            "test": result.get("eval", {}).get("accuracy"), "test_at_third": third.get("eval", {}).get("accuracy"),
            "test_last": (result.get("eval_last") or {}).get("accuracy"),
            "forwards": ledger.get("forwards"), "train_wall_s": ledger.get("train_wall_s"),
            "train_cpu_s": ledger.get("train_cpu_s"),
            "peak_rss_mib": result.get("resources", {}).get("peak_rss_mib")}


def method_summary(race: Race, state: Search, winner: str | None) -> dict:
    """A method's search (grid, rungs, choice) and its final runs, one per seed that has a result."""
    entry = {"label": state.method.label, "variables": state.method.variables, "grid": state.grid,
             "rungs": [{"budget": b, "dev": dev} for b, dev in zip(race.rung_budgets(), state.rungs)],
             "chosen_lr": state.chosen, "finals": []}
    if state.chosen is not None:
        zo = winner if state.method.after_winner else None
        points = [race.point(state.method, state.chosen, seed, zo) for seed in race.seeds]
        entry["finals"] = [run_summary(p) for p in points if p.result_file.exists()]
    return entry


def final_points(race: Race, plan: Plan) -> dict[str, list[Point]]:
    """Each decided method's final runs that have a result, by label."""
    points = {}
    for state in (s for s in plan.searches if s.chosen is not None):
        zo = plan.winner.variables.get("ZO") if state.method.after_winner and plan.winner else None
        runs = [race.point(state.method, state.chosen, seed, zo) for seed in race.seeds]
        points[state.method.label] = [p for p in runs if p.result_file.exists()]
    return points


def _scores(point: Point, which: str) -> list[float] | None:
    """A final run's per-example test scores: of the best dev model (``eval``) or of the last (``eval_last``)."""
    result = read_result(point.result_file) or {}
    return result.get("eval_scores") if which == "eval" else (result.get("eval_last") or {}).get("scores")


def paired_tests(points: dict[str, list[Point]]) -> list[dict]:
    """For every two methods, the exact McNemar test of their test predictions, pooled over the seeds both have
    scores for (a run pairs with the other method's run of the same seed, whose test examples are the same);
    for the best dev models (``eval``) and, where runs recorded them, the last models (``eval_last``). Results
    without per-example scores (``scripts/eval_scores.py`` adds them) are left out."""
    tests = []
    labels = list(points)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            for which in ("eval", "eval_last"):
                pairs, seeds = [], []
                for pa in points[a]:
                    pb = next((p for p in points[b] if p.variables["RUN_SEED"] == pa.variables["RUN_SEED"]), None)
                    sa, sb = _scores(pa, which), pb and _scores(pb, which)
                    if sa is not None and sb is not None:
                        pairs.append((sa, sb))
                        seeds.append(pa.variables["RUN_SEED"])
                if pairs:
                    tests.append({"a": a, "b": b, "model": "best dev" if which == "eval" else "last",
                                  "seeds": seeds, **mcnemar(pairs)})
    return tests


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def table(summary: dict) -> str:
    """The race as Markdown: one row per method, means over its final runs; then each method's search, its LRs'
    dev accuracy (as ranked) at each rung's budget ("..." for a run on its way)."""
    cols = ["method", "LR", "seeds", "test", "95% CI", "test at 1/3", "test (last model)", "dev", "forwards",
            "train CPU s", "train wall s", "peak RSS MiB"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in summary["methods"]:
        finals = m["finals"]
        cells = [m["label"], m["chosen_lr"] or "-", str(len(finals))]
        tests = [f["test"] for f in finals if f.get("test") is not None]
        mean, half = t_interval(tests) if tests else (None, None)
        cells += ["-" if mean is None else f"{mean:.3f}", "-" if half is None else f"+-{half:.3f}"]
        for key, fmt in (("test_at_third", ".3f"), ("test_last", ".3f"), ("dev", ".3f"),
                         ("forwards", ".0f"), ("train_cpu_s", ".0f"), ("train_wall_s", ".0f"),
                         ("peak_rss_mib", ".0f")):
            value = _mean([f.get(key) for f in finals])
            cells.append("-" if value is None else format(value, fmt))
        lines.append("| " + " | ".join(cells) + " |")
    budgets = summary["rung_budgets"]
    lines += ["", "Search (dev accuracy by LR at each rung's budget of forwards):", "",
              "| method | " + " | ".join(str(b) for b in budgets) + " |", "|" + "---|" * (len(budgets) + 1)]
    for m in summary["methods"]:
        cells = [m["label"]]
        for rung in m["rungs"]:
            cells.append(", ".join(f"{lr} {'...' if dev is None else format(dev, '.3f')}"
                                   for lr, dev in sorted(rung["dev"].items(), key=lambda item: float(item[0]))))
        cells += [""] * (len(budgets) - len(m["rungs"]))
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("paired"):
        lines += ["", "Paired tests (exact McNemar on the test examples, pooled over the seeds both methods have; "
                      "A only / B only: examples only that method's run got right):", "",
                  "| A | B | model | seeds | A only | B only | p |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {t['a']} | {t['b']} | {t['model']} | {', '.join(t['seeds'])} | {t['a_only']} | {t['b_only']} | "
                  f"{t['p']:.3g} |" for t in summary["paired"]]
    return "\n".join(lines) + "\n"


def curves(point: Point, x_key: str) -> list[tuple[float, float]]:
    """(x, dev accuracy) of a run's evaluations, x a ledger column of its log rows."""
    rows = (read_result(point.result_file) or {}).get("train", {}).get("log_history", [])
    return [(float(r[x_key]), float(r["eval_accuracy"])) for r in rows if "eval_accuracy" in r and x_key in r]


def figure(race: Race, plan: Plan, x_key: str, x_label: str, path: Path) -> None:
    """Dev accuracy against ``x_key``: per method the band between its seeds' curves and their mean."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for state in (s for s in plan.searches if s.chosen is not None):
        zo = plan.winner.variables.get("ZO") if state.method.after_winner and plan.winner else None
        runs = [curves(race.point(state.method, state.chosen, seed, zo), x_key) for seed in race.seeds]
        runs = [r for r in runs if r]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        xs = [statistics.fmean(r[i][0] for r in runs) for i in range(n)]
        ys = [[r[i][1] for r in runs] for i in range(n)]
        line, = ax.plot(xs, [statistics.fmean(y) for y in ys], label=state.method.label)
        ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], alpha=0.2, color=line.get_color())
    ax.set_xlabel(x_label)
    ax.set_ylabel("dev accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_summary(race: Race, plan: Plan) -> dict:
    winner = plan.winner.variables.get("ZO") if plan.winner else None
    summary = {"race": race.name, "budget": race.budget, "rung_budgets": race.rung_budgets(),
               "winner": plan.winner.label if plan.winner else None,
               "methods": [method_summary(race, s, winner) for s in plan.searches],
               "paired": paired_tests(final_points(race, plan)),
               "decided": not plan.tasks()}
    race.result_dir.mkdir(parents=True, exist_ok=True)
    (race.result_dir / "race.json").write_text(json.dumps(summary, indent=1) + "\n")
    (race.result_dir / "race.md").write_text(f"# Race {race.name}\n\n" + table(summary))
    figure(race, plan, "forwards", "training forwards", race.result_dir / "dev_vs_forwards.png")
    figure(race, plan, "train_cpu_s", "training CPU seconds", race.result_dir / "dev_vs_cpu.png")
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    try:
        race = load_race(args.race)
        plan = make_plan(race)
        if args.checkpoints:
            print("\n".join(str(p) for p in latest_checkpoints(continued_runs(race, plan))))
            return 0
        take_snapshots(race, plan.points())
        if args.report or args.dry_run or not plan.tasks():
            if args.dry_run:
                print_round(plan, race)
            write_summary(race, plan)
            return 0
        print_round(plan, race)
        short, stopped = run_tasks(race, args.jobs or default_jobs(None))
        write_summary(race, make_plan(race))
        if short:
            print(f"race.py: stopped{' by a signal' if stopped else ''}: a run ended short of its budget:\n  "
                  + "\n  ".join(short), file=sys.stderr)
            return 1
        return 0
    except (SweepError, SlotError) as err:
        sys.exit(f"race.py: error: {err}")
