"""A budget-matched race of ZO methods: each method's learning rate chosen by successive halving on dev, then
final runs with more seeds at the chosen rate. ``python scripts/race.py RACE.toml [--jobs 2] [--dry-run]``.

    [race]
    name = "sst2-lora"                 # default: the file name without .toml
    driver = "mezo.sh"                 # as a sweep's driver
    result_dir = "docs/race/sst2-lora" # default: result/races/<name>
    budget = 4000                      # training forwards of a final run (run.py --max_forwards)
    first_budget = 1000                # forwards of the first rung (default: budget / 4)
    rungs = [1200, 6000]               # or every rung's budget, the last one the budget (default: doubling)
    keep = "half"                      # who goes on from a rung: "half" or "best_and_upper" (see below)
    select_last = 1                    # rank on the mean of the last N dev evaluations up to a rung's budget
    third = true                       # stop every final run at a third of the budget and keep that result
    spacing = 3                        # LR ratio of a grid extension (the chosen LR must not be a grid end)
    lr_digits = 1                      # significant digits of an added LR (1: 3e-3 * 3 is written 9e-3)
    max_extensions = 2                 # grid extensions per method at most
    finalists = 4                      # methods with the best dev accuracy at the full budget that get every seed
    always_final = ["MeZO-SGD"]        # labels that get every seed whatever their rank
    seeds = [0, 1]                     # RUN_SEED and SEED of the final runs; the search runs use the first
    args = []                          # extra run.py flags for every run

    [fixed]                            # driver variables (or run.py flags) of every run, as in a sweep
    TASK = "SST2"

    [[method]]                         # one table per method: its label, its driver variables and its LR grid
    label = "MeZO-SGD"
    ZO = "sgd"
    LR = ["1e-4", "3e-4", "1e-3"]

A variable written ``"{winner}"`` takes the ZO method (``ZO``) of the search's winner: such a method (XGBLoRA with
the winner) is raced once every other method's search is done.

**Successive halving.** Rung 0 runs every LR of a method to ``first_budget`` forwards; each later rung keeps the
better half (rounded up) by dev accuracy at the previous rung's budget and continues them to twice that budget,
until the full budget, where the best by dev is chosen. Raising ``--max_forwards`` continues a run from its last
checkpoint (budgets are not part of a result's name), so no forward is spent twice. Whenever the best LR of a rung
is an end of its grid, the grid is extended by one LR ``spacing`` beyond that end (run to the rung's budget before
the halving), at most ``max_extensions`` times. Ties on dev go to the lower training loss of the last logged row,
then to the smaller LR. Test accuracy is recorded at every stop and never read for a choice.

**A recheck instead of halving** (``keep = "best_and_upper"``, as a controlled study's LR search: every LR to a
short first rung, then the best and the next larger LR of the grid to the full budget, where the better is kept):
only the first rung extends the grid. ``select_last = 3`` ranks on the mean of a run's last three dev evaluations
up to the budget (the first evaluation at or past it and the two before), less noisy than the last alone.

**Finals.** The chosen LR's search run is the final run of the first seed; each other seed gets one run of its
own. Every final run stops once at a third of the budget, where its result (with test accuracy) is copied to
``<name>.third.json`` before it continues.

Everything is recomputed from the result files on every call (the race has no state of its own), so a stopped
race resumes by running the same command again; ``race.json`` and ``race.md`` in the result directory summarise
it.
"""
from __future__ import annotations

import math
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from mezo_engine.status import Kind, Status

from .load import _args, _driver, _settings, read_toml
from .spec import REPO, Campaign, Point, SweepError, point_name, settings_hash
from .state import read_result

RACE_KEYS = {"name", "driver", "result_dir", "budget", "first_budget", "rungs", "keep", "select_last", "third",
             "lr_digits", "spacing", "max_extensions", "finalists", "always_final", "seeds", "args"}
KEEP = ("half", "best_and_upper")
TABLES = {"race", "fixed", "method"}
WINNER = "{winner}"
BUDGET_VARIABLE = "MAX_FORWARDS"  # the drivers pass it as --max_forwards; it is not part of a point's name


# ---- the race file ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """One contender: its label, its driver variables (without LR) and its LR grid (as written)."""

    label: str
    variables: dict[str, str]
    lrs: tuple[str, ...]

    @property
    def after_winner(self) -> bool:
        return WINNER in self.variables.values()


@dataclass
class Race(Campaign):
    """A loaded race file: its methods and budgets; ``point`` names each run."""

    methods: list[Method]
    budget: int
    first_budget: int
    spacing: float = 3.0
    max_extensions: int = 2
    finalists: int = 4
    always_final: tuple[str, ...] = ()
    seeds: tuple[str, ...] = ("0",)
    args: list[str] = field(default_factory=list)
    rungs: tuple[int, ...] = ()
    keep: str = "half"
    select_last: int = 1
    third_stop: bool = True
    lr_digits: int = 1

    def rung_budgets(self) -> list[int]:
        """The forward budget of each rung: ``rungs`` as given, else ``first_budget`` doubled until ``budget``
        (the last one)."""
        if self.rungs:
            return list(self.rungs)
        budgets = [self.first_budget]
        while budgets[-1] * 2 < self.budget:
            budgets.append(budgets[-1] * 2)
        return budgets + [self.budget] if budgets[-1] != self.budget else budgets

    def third(self) -> int:
        """Where final runs stop once on their way (0: nowhere)."""
        return self.budget // 3 if self.third_stop else 0

    def point(self, method: Method, lr: str, seed: str, winner: str | None = None) -> Point:
        """The run of ``method`` at ``lr`` with RUN_SEED and SEED ``seed``; its name leaves the budget out."""
        variables = {k: (winner if v == WINNER else v) for k, v in method.variables.items()}
        variables = {**variables, "LR": lr, "RUN_SEED": seed, "SEED": seed}
        settings = {**self.fixed, **variables}
        name = point_name({"method": method.label, "LR": lr, "seed": seed},
                          settings_hash(self.driver_label, settings, self.args))
        return Point(0, variables, settings, name, self.result_dir / f"{name}.json")


def load_race(path: str | Path) -> Race:
    """Read and check a race file; raise SweepError listing every problem found."""
    path = Path(path)
    data = read_toml(path, "race file")
    problems = [f"unknown table [{t}]; known: {', '.join(sorted(TABLES))}" for t in data if t not in TABLES]
    head = data.get("race", {})
    problems += [f"[race] {k}: unknown key; known: {', '.join(sorted(RACE_KEYS))}" for k in head
                 if k not in RACE_KEYS]
    fixed = _settings(data.get("fixed", {}), "[fixed]", problems)
    methods = [_method(i, table, problems) for i, table in enumerate(data.get("method", []))]
    budget = _positive(head, "budget", None, problems)
    first = _positive(head, "first_budget", (budget or 4) // 4, problems)
    if budget and first and first > budget:
        problems.append(f"[race] first_budget {first} exceeds budget {budget}")
    rungs = _rungs(head, budget, problems)
    keep = head.get("keep", "half")
    if keep not in KEEP:
        problems.append(f"[race] keep = {keep!r}: give one of {', '.join(KEEP)}")
    select_last = head.get("select_last", 1)
    if not isinstance(select_last, int) or isinstance(select_last, bool) or select_last < 1:
        problems.append(f"[race] select_last = {select_last!r}: give how many dev evaluations to average (>= 1)")
    third = head.get("third", True)
    if not isinstance(third, bool):
        problems.append(f"[race] third = {third!r}: give true or false")
    digits = head.get("lr_digits", 1)
    if not isinstance(digits, int) or isinstance(digits, bool) or not 1 <= digits <= 6:
        problems.append(f"[race] lr_digits = {digits!r}: give the significant digits of an added LR (1 to 6)")
    labels = [m.label for m in methods]
    problems += [f"[[method]] label {x!r} appears twice" for x in sorted({x for x in labels if labels.count(x) > 1})]
    always = tuple(str(x) for x in head.get("always_final", []))
    problems += [f"[race] always_final {x!r}: no [[method]] has that label" for x in always if x not in labels]
    for key in ("LR", "RUN_SEED", "SEED", BUDGET_VARIABLE):
        if key in fixed:
            problems.append(f"[fixed] {key}: the race sets it per run")
    if not methods:
        problems.append("no [[method]] table: give at least one method")
    driver = _driver(head.get("driver"), problems)
    args = _args(head.get("args", []), problems)
    if problems:
        raise SweepError(f"{path}: " + "; ".join(problems))
    name = str(head.get("name", path.stem))
    result_dir = Path(head["result_dir"]).resolve() if "result_dir" in head else REPO / "result" / "races" / name
    return Race(path, name, driver, str(head["driver"]), result_dir, fixed, methods, budget, first,
                float(head.get("spacing", 3)), int(head.get("max_extensions", 2)), int(head.get("finalists", 4)),
                always, tuple(str(s) for s in head.get("seeds", [0])), args, rungs, keep, select_last, third, digits)


def _positive(head: dict, key: str, default: int | None, problems: list[str]) -> int:
    value = head.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        problems.append(f"[race] {key} = {value!r}: give a positive number of forwards")
        return 0
    return value


def _rungs(head: dict, budget: int | None, problems: list[str]) -> tuple[int, ...]:
    """``rungs``: increasing positive forward budgets ending at ``budget`` (absent: none given)."""
    rungs = head.get("rungs", [])
    if not isinstance(rungs, list) or not all(isinstance(r, int) and not isinstance(r, bool) and r > 0
                                               for r in rungs):
        problems.append(f"[race] rungs = {rungs!r}: give a list of forward budgets, e.g. rungs = [1200, 6000]")
        return ()
    if rungs and (rungs != sorted(set(rungs)) or rungs[-1] != budget):
        problems.append(f"[race] rungs = {rungs!r}: must increase and end at the budget ({budget})")
        return ()
    return tuple(rungs)


def _method(index: int, table: dict, problems: list[str]) -> Method:
    where = f"[[method]] #{index + 1}"
    label = str(table.get("label", ""))
    if not label:
        problems.append(f"{where}: give it a label")
    lrs = table.get("LR")
    if not isinstance(lrs, list) or not lrs:
        problems.append(f"{where} LR = {lrs!r}: give a list of learning rates, e.g. LR = [\"1e-4\", \"3e-4\"]")
        lrs = []
    variables = _settings({k: v for k, v in table.items() if k not in ("label", "LR")}, where, problems)
    return Method(label, variables, tuple(sorted((str(x) for x in lrs), key=float)))


# ---- reading a run's progress ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """What a run's result file says: forwards done, dev accuracy at each evaluated forward count, the last
    logged training loss, its status."""

    forwards: int
    dev: dict[int, float]
    last_loss: float
    status: str
    stopped_at_budget: int  # the --max_forwards that ended the run (0: none, or a process stopped short of it)

    def dev_at(self, budget: int, last: int = 1) -> float | None:
        """Dev accuracy at ``budget`` forwards: the first evaluation at or past it (a stop evaluates at the first
        step that reaches its budget, which a method costing several forwards a step may overshoot), or the mean
        of the ``last`` evaluations up to that one. A diverged run counts 0 from where it stopped; a run not there
        yet, None."""
        reached = [f for f in self.dev if f >= budget]
        if reached:
            upto = sorted(f for f in self.dev if f <= min(reached))[-last:]
            return statistics.fmean(self.dev[f] for f in upto)
        return 0.0 if self.status.startswith("diverged") else None


NOT_STARTED = Progress(0, {}, math.inf, "missing", 0)


def progress(result_file: Path) -> Progress:
    """The progress of the run whose result is ``result_file`` (missing or unreadable: not started)."""
    result = read_result(result_file)
    if result is None:
        return NOT_STARTED
    rows = result.get("train", {}).get("log_history", [])
    dev = {int(row["forwards"]): float(row["eval_accuracy"]) for row in rows
           if "eval_accuracy" in row and "forwards" in row}
    losses = [float(row["loss"]) for row in rows if "loss" in row]
    forwards = int(result.get("ledger", {}).get("forwards", 0))
    status = str(result.get("status", ""))
    # an interrupted process (a signal, a session's end) also records its --max_forwards: it did not stop there
    stopped = Status.parse(status).kind is Kind.BUDGET
    budget = int(result.get("config", {}).get("max_forwards") or 0) if stopped else 0
    return Progress(forwards, dev, losses[-1] if losses else math.inf, status, budget)


# ---- the plan ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """Continue (or start) ``point`` up to ``budget`` forwards."""

    label: str
    point: Point
    budget: int


@dataclass
class Search:
    """Where one method's LR search stands: its grid (with extensions), its rungs' dev accuracies, the LRs
    still running, its choice (once made) and the tasks it waits for."""

    method: Method
    grid: list[str]
    rungs: list[dict[str, float | None]] = field(default_factory=list)
    chosen: str | None = None
    tasks: list[Task] = field(default_factory=list)


def _extend(grid: list[str], end: str, spacing: float, digits: int = 1) -> str:
    """The LR ``spacing`` beyond ``end`` (the smallest or largest of ``grid``), written like the grid's with
    ``digits`` significant digits (trailing zeros dropped: 2.56e-1, 9e-3)."""
    value = float(end) * spacing if float(end) == max(map(float, grid)) else float(end) / spacing
    if digits > 1:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e+")


def _ranked(lrs: list[str], budget: int, runs: dict[str, Progress], last: int = 1) -> list[str]:
    """``lrs`` best first: dev at ``budget`` (higher; the mean of the ``last`` evaluations), then the last
    training loss (lower), then the LR (lower)."""
    return sorted(lrs, key=lambda lr: (-(runs[lr].dev_at(budget, last) or 0.0), runs[lr].last_loss, float(lr)))


def _survivors(race: Race, ranked: list[str], budget: int) -> list[str]:
    """Who goes on from a rung whose LRs are ``ranked`` (best first)."""
    if budget == race.budget:
        return ranked[:1]
    if race.keep == "best_and_upper":
        return ranked[:1] + sorted((lr for lr in ranked if float(lr) > float(ranked[0])), key=float)[:1]
    return ranked[:math.ceil(len(ranked) / 2)]


def search(race: Race, method: Method, winner: str | None = None) -> Search:
    """Replay the successive halving of ``method`` over the results on disk: what is decided, what must run."""
    seed = race.seeds[0]
    state = Search(method, list(method.lrs))
    alive = list(state.grid)
    extensions = 0
    last = race.select_last
    for rung, budget in enumerate(race.rung_budgets()):
        extends = race.keep == "half" or rung == 0  # a recheck extends the grid at its first rung only
        while True:
            runs = {lr: progress(race.point(method, lr, seed, winner).result_file) for lr in alive}
            waiting = [lr for lr in alive if runs[lr].dev_at(budget) is None]
            if waiting:
                state.tasks = [task_to(race, method.label, race.point(method, lr, seed, winner), runs[lr], budget)
                               for lr in waiting]
                state.rungs.append({lr: runs[lr].dev_at(budget, last) for lr in alive})
                return state
            best = _ranked(alive, budget, runs, last)[0]
            ends = (min(state.grid, key=float), max(state.grid, key=float))
            if not extends or best not in ends or extensions >= race.max_extensions:
                break
            new = _extend(state.grid, best, race.spacing, race.lr_digits)
            state.grid.append(new)
            alive.append(new)
            extensions += 1
        state.rungs.append({lr: runs[lr].dev_at(budget, last) for lr in alive})
        alive = _survivors(race, _ranked(alive, budget, runs, last), budget)
    state.chosen = alive[0]
    return state


def task_to(race: Race, label: str, point: Point, done: Progress, budget: int) -> Task:
    """The next stop of ``point`` on its way to ``budget``: a third of the race's budget first, if it passes it."""
    third = race.third()
    return Task(label, point, third if 0 < third and done.forwards < third < budget else budget)


def snapshot_path(point: Point) -> Path:
    """Where a run's result at a third of the budget is kept (with its test accuracy)."""
    return point.result_file.with_suffix(".third.json")


def take_snapshots(race: Race, points: list[Point]) -> None:
    """Copy each run's result that stands at a third of the budget, before it continues."""
    for point in points:
        if race.third() and progress(point.result_file).stopped_at_budget == race.third() \
                and not snapshot_path(point).exists():
            shutil.copyfile(point.result_file, snapshot_path(point))


@dataclass
class Plan:
    """The searches, the finals' tasks and the winner (the ZO method of the best search, once all are done)."""

    searches: list[Search]
    finals: list[Task]
    winner: Method | None

    def tasks(self) -> list[Task]:
        return [t for s in self.searches for t in s.tasks] + self.finals

    def points(self) -> list[Point]:
        return [t.point for t in self.tasks()]


def continued_runs(race: Race, plan: Plan) -> list[Point]:
    """The runs a later round continues, whose latest checkpoints are all the race still needs of its run folders:
    each undecided search's LRs at its current rung, and the finals that have started and not finished."""
    zo = plan.winner.variables.get("ZO", "sgd") if plan.winner else None
    points = [race.point(s.method, lr, race.seeds[0], zo if s.method.after_winner else None)
              for s in plan.searches if s.chosen is None and s.rungs for lr in s.rungs[-1]]
    return points + [t.point for t in plan.finals if progress(t.point.result_file).forwards > 0]


def full_dev(race: Race, state: Search) -> float:
    """Dev accuracy of a finished search's chosen run at the full budget."""
    run = progress(race.point(state.method, state.chosen, race.seeds[0]).result_file)
    return run.dev_at(race.budget, race.select_last) or 0.0


def make_plan(race: Race) -> Plan:
    """Replay the whole race from the result files: searches, then (once all are chosen) the finals."""
    searches = [search(race, m) for m in race.methods if not m.after_winner]
    done = [s for s in searches if s.chosen is not None]
    if len(done) < len(searches):
        return Plan(searches, [], None)
    best = max(done, key=lambda s: full_dev(race, s))
    winner_zo = best.method.variables.get("ZO", "sgd")
    later = [search(race, m, winner_zo) for m in race.methods if m.after_winner]
    searches += later
    if any(s.chosen is None for s in later):
        return Plan(searches, [], best.method)
    ranked = sorted(searches, key=lambda s: -full_dev(race, s))
    chosen = {s.method.label for s in ranked[:race.finalists]} | set(race.always_final) | {
        s.method.label for s in later}
    finals = []
    for state in (s for s in searches if s.method.label in chosen):
        winner = winner_zo if state.method.after_winner else None
        for seed in race.seeds[1:]:
            point = race.point(state.method, state.chosen, seed, winner)
            done_so_far = progress(point.result_file)
            if done_so_far.forwards < race.budget:
                finals.append(task_to(race, state.method.label, point, done_so_far, race.budget))
    return Plan(searches, finals, best.method)
