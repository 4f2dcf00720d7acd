"""Reading and checking a sweep file (TOML) into a ``spec.Sweep``; every problem is reported at once.

    [sweep]
    name = "sst2-lora-vs-xgblora"      # default: the file name without .toml
    driver = "mezo.sh"                 # mezo.sh, finetune.sh, icl.sh, or a path to a driver script
    result_dir = "result/sweeps/x"     # default: result/sweeps/<name> at the repository root
    args = ["--max_length", "256"]     # extra run.py flags for every run
    over = "SEED"                      # the variable aggregate averages over (default SEED)

    [fixed]                            # settings of every run
    TASK = "SST2"

    [grid]                             # or several [[grid]] tables: the union of their products
    MODE = ["lora", "xgblora"]
    SEED = [0, 1, 2]

    [slurm]                            # see slurm.py
    time = "02:00:00"

Paths (``driver`` unless it is one of the three drivers, ``result_dir``, and settings such as ``DATA_DIR``) are
taken relative to the directory the command runs from, as the drivers take them.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from .spec import DRIVERS, ENV_NAME, REPO, RESERVED_FLAGS, SWEEP_KEYS, TABLES, Sweep, SweepError, format_value


def load_sweep(path: str | Path) -> Sweep:
    """Read and check the sweep file at ``path``; raise SweepError listing every problem found."""
    path = Path(path)
    data = read_toml(path)
    problems: list[str] = []
    problems += [f"unknown table [{t}]; known: {', '.join(sorted(TABLES))}" for t in data if t not in TABLES]
    head = _table(data, "sweep", problems)
    problems += [f"[sweep] {k}: unknown key; known: {', '.join(sorted(SWEEP_KEYS))}" for k in head
                 if k not in SWEEP_KEYS]
    fixed = _settings(_table(data, "fixed", problems), "[fixed]", problems)
    grids = _grids(data.get("grid", {}), problems)
    args = _args(head.get("args", []), problems)
    _check_overlap(fixed, grids, args, problems)
    name = str(head.get("name", path.stem))
    driver = _driver(head.get("driver"), problems)
    slurm = _table(data, "slurm", problems)
    if problems:
        raise SweepError(f"{path}: " + "; ".join(problems))
    result_dir = Path(head["result_dir"]).resolve() if "result_dir" in head else REPO / "result" / "sweeps" / name
    return Sweep(path, name, driver, str(head["driver"]), result_dir, fixed, grids, args,
                 str(head.get("over", "SEED")), slurm)


def load_or_exit(path: str | Path, prog: str) -> Sweep:
    """``load_sweep`` for a command line: a bad file ends the program with ``<prog>: error: ...``."""
    try:
        return load_sweep(path)
    except SweepError as err:
        raise SystemExit(f"{prog}: error: {err}") from None


def read_toml(path: Path, what: str = "sweep file") -> dict:
    """The TOML file at ``path`` (a sweep, race or study file: ``what``), or a SweepError naming it."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"{what} {path}: no such file") from None
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{what} {path}: not valid TOML ({err})") from None


def _table(data: dict, name: str, problems: list[str]) -> dict:
    table = data.get(name, {})
    if not isinstance(table, dict):
        problems.append(f"[{name}] must be a table, got {table!r}")
        return {}
    return table


def _key_problem(key: str, where: str) -> str | None:
    if key == "--num_train_sets":
        return f"{where} {key}: one result per point; give the seeds as a grid variable instead (SEED = [0, 1, 2])"
    if key.startswith("--"):
        return f"{where} {key}: sets the run's location, which the sweep chooses" if key in RESERVED_FLAGS else None
    if not ENV_NAME.fullmatch(key):
        return f"{where} {key!r}: not a driver variable name (LR, SEED, ...) nor a run.py flag (\"--max_length\")"
    return None


def _scalar(value, where: str, problems: list[str]) -> str | None:
    if isinstance(value, (str, int, float, bool)):
        return format_value(value)
    problems.append(f"{where}: {value!r} is not a string, number or boolean")
    return None


def _settings(table: dict, where: str, problems: list[str]) -> dict[str, str]:
    settings = {}
    for key, value in table.items():
        problem = _key_problem(key, where)
        if problem:
            problems.append(problem)
        text = _scalar(value, f"{where} {key}", problems)
        if text is not None:
            settings[key] = text
    return settings


def _grids(raw, problems: list[str]) -> list[dict[str, list[str]]]:
    tables = raw if isinstance(raw, list) else [raw]
    grids = []
    for i, table in enumerate(tables):
        where = "[grid]" if isinstance(raw, dict) else f"[[grid]] #{i + 1}"
        if not isinstance(table, dict):
            problems.append(f"{where} must be a table of lists, got {table!r}")
            continue
        grids.append({k: v for k, v in ((k, _values(k, v, where, problems)) for k, v in table.items()) if v})
    return grids or [{}]


def _values(key: str, values, where: str, problems: list[str]) -> list[str]:
    problem = _key_problem(key, where)
    if problem:
        problems.append(problem)
    if not isinstance(values, list) or not values:
        problems.append(f"{where} {key} = {values!r}: give a non-empty list of values, e.g. {key} = [1, 2]")
        return []
    texts = [_scalar(v, f"{where} {key}", problems) for v in values]
    return list(dict.fromkeys(t for t in texts if t is not None))


def _args(args, problems: list[str]) -> list[str]:
    if not isinstance(args, list) or not all(isinstance(a, (str, int, float)) for a in args):
        problems.append(f"[sweep] args = {args!r}: give a list of strings, e.g. [\"--max_length\", \"256\"]")
        return []
    problems += [f"[sweep] args {a}: sets the run's location, which the sweep chooses"
                 for a in args if str(a).split("=")[0] in RESERVED_FLAGS]
    return [format_value(a) for a in args]


def _check_overlap(fixed: dict, grids: list[dict], args: list[str], problems: list[str]) -> None:
    for key in dict.fromkeys(k for grid in grids for k in grid):
        if key in fixed:
            problems.append(f"{key} is both in [fixed] and in [grid]; keep one")
        if key.startswith("--") and key in args:
            problems.append(f"{key} is both in [sweep] args and in [grid]; keep one")


def _driver(driver, problems: list[str]) -> Path:
    if not isinstance(driver, str) or not driver:
        problems.append(f"[sweep] driver = {driver!r}: give one of {', '.join(DRIVERS)} or a path to a script")
        return Path()
    path = REPO / "large_models" / driver if driver in DRIVERS else Path(driver).resolve()
    if not path.is_file():
        problems.append(f"[sweep] driver = {driver!r}: no such file {path}; give one of {', '.join(DRIVERS)} "
                        f"or a path to a script")
    return path
