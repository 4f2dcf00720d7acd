"""What a sweep's keys may name, asked of the code that reads them, and the closest name to a typo.

A driver variable must be one its driver reads: the methods' registry lists them from the driver scripts
themselves (``python3 mezo_engine/registry.py variables SCRIPT``, standard library only), so a variable added to a
driver is known here at once. A driver given by path may wrap the repository's drivers, so it may also set any
variable one of them reads. A run.py flag must be one of the app's parser (``python -m large_models.arguments``,
or ``medium_models.arguments`` for a driver in ``medium_models/`` or ``MEDIUM=1``), asked in a process of its own:
this package imports nothing from the engine or the apps.
"""
from __future__ import annotations

import difflib
import functools
import subprocess
import sys
from pathlib import Path

from .spec import DRIVERS, REPO, SweepError


def closest(name: str, known) -> str:
    """``; did you mean X?`` for the known name nearest to ``name``, or nothing when none is near."""
    match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def _ask(command: list[str], what: str) -> list[str]:
    """The words ``command`` prints (run from the repository root); SweepError naming ``what`` if it fails."""
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise SweepError(f"cannot list {what} ({' '.join(command[1:])} exited {done.returncode}: {last})")
    return done.stdout.split()


@functools.cache
def script_variables(script: str | None = None) -> frozenset[str]:
    """The variables ``script`` reads (None: those any repository driver reads), from the registry's command."""
    registry = str(REPO / "mezo_engine" / "registry.py")
    return frozenset(_ask([sys.executable, registry, "variables", *([script] if script else [])],
                          f"the variables of {script or 'the drivers'}"))


def driver_variables(driver: Path, label: str) -> frozenset[str]:
    """What the sweep's driver may be given: a stock driver (``DRIVERS``) what it reads; a script of the user's,
    what it reads and what any repository driver reads (it may pass them on)."""
    own = script_variables(str(driver))
    return own if label in DRIVERS else own | script_variables()


def variable_problems(keys, driver: Path, label: str) -> list[str]:
    """One message per driver variable in ``keys`` (where -> key) that ``driver`` does not read."""
    known = driver_variables(driver, label)
    return [f"{where} {key}: {label} reads no such variable{closest(key, known)} (it reads: {' '.join(sorted(known))})"
            for key, where in keys.items() if not key.startswith("--") and key not in known]


@functools.cache
def run_py_flags(app: str) -> frozenset[str]:
    """Every flag ``<app>/run.py`` takes (``large_models`` or ``medium_models``), asked of its parser."""
    return frozenset(_ask([sys.executable, "-m", f"{app}.arguments"], f"the flags of {app}/run.py"))


def app_of(driver: Path, settings: dict[str, str]) -> str:
    """The app a driver runs: ``medium_models`` for one in that folder or with ``MEDIUM=1``, else ``large_models``."""
    medium = "medium_models" in Path(driver).parts or settings.get("MEDIUM") == "1"
    return "medium_models" if medium else "large_models"


def flag_problems(flags: dict[str, str], app: str) -> list[str]:
    """One message per flag in ``flags`` (flag -> where) that ``app``'s run.py does not take."""
    known = run_py_flags(app)
    return [f"{where} {flag}: not a flag of {app}/run.py{closest(flag, known)}"
            for flag, where in flags.items() if flag not in known]
