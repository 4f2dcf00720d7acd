"""A sweep file and the points of its grid.

A sweep file (TOML) names a driver, settings shared by every run (``[fixed]``) and a grid (``[grid]``, or several
``[[grid]]`` tables whose products are joined). A key is a driver variable (``LR``, ``SEED``, passed in the
environment) or a run.py flag (``"--max_length"``, passed after the driver's own flags).

Each point gets its own result file, ``<result_dir>/<grid values>-<hash>.json``: the readable part names the
point's grid values, the hash covers the driver, every setting of the point (fixed ones included) and ``args``, so
that two points never share a file and editing any setting of the sweep gives every affected run a new one
(a finished result is only skipped while its settings are unchanged). Checkpoints go to the same path without
``.json`` (run.py's default ``--output_dir``), so the drivers' ``RESUME=auto`` finds them on a re-run.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from large_models import task_file

REPO = Path(__file__).resolve().parents[2]
DRIVERS = ("mezo.sh", "finetune.sh", "icl.sh")
TABLES = {"sweep", "fixed", "grid", "slurm"}
SWEEP_KEYS = {"name", "driver", "result_dir", "args", "over"}
# Each point's location is the sweep's to choose; a flag that moves it would make points share files.
RESERVED_FLAGS = {"--result_file", "--result_dir", "--output_dir"}
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SweepError(ValueError):
    """The sweep file is unusable; the message names the file, the key and the bad value."""


@dataclass(frozen=True)
class Point:
    """One run of the sweep: its grid values, all its settings (fixed + grid) and its result file."""

    index: int
    variables: dict[str, str]
    settings: dict[str, str]
    name: str
    result_file: Path

    @property
    def output_dir(self) -> Path:
        """Where run.py keeps this run's checkpoints (its default: the result path without ``.json``)."""
        return self.result_file.with_suffix("")

    def env(self) -> dict[str, str]:
        """The driver variables of this point."""
        return {k: v for k, v in self.settings.items() if not k.startswith("--")}

    def flags(self) -> list[str]:
        """The run.py flags of this point, as ``--flag value`` pairs."""
        return [x for k, v in self.settings.items() if k.startswith("--") for x in (k, v)]

    def label(self) -> str:
        """``KEY=value KEY=value`` for logs and tables."""
        return " ".join(f"{k}={v}" for k, v in self.variables.items()) or self.name


@dataclass
class Campaign:
    """What a sweep file and a race file share: where they come from, their driver, their results, their fixed
    settings."""

    path: Path
    name: str
    driver: Path
    driver_label: str
    result_dir: Path
    fixed: dict[str, str]


@dataclass
class Sweep(Campaign):
    """A loaded sweep file; ``points()`` expands its grid."""

    grids: list[dict[str, list[str]]]
    args: list[str] = field(default_factory=list)
    over: str = "SEED"
    slurm: dict = field(default_factory=dict)

    def points(self) -> list[Point]:
        """Every distinct point of the grid(s), in file order; a point that two grids share is kept once."""
        points: dict[str, Point] = {}
        for grid in self.grids:
            for values in itertools.product(*grid.values()):
                variables = dict(zip(grid, values))
                point = self._point(len(points), variables)
                points.setdefault(point.name, point)
        return list(points.values())

    def variables(self) -> list[str]:
        """Every grid variable, in the order of first appearance."""
        return list(dict.fromkeys(k for grid in self.grids for k in grid))

    def _point(self, index: int, variables: dict[str, str]) -> Point:
        settings = {**self.fixed, **variables}
        name = point_name(variables, settings_hash(self.driver_label, settings, self.args))
        return Point(index, variables, settings, name, self.result_dir / f"{name}.json")


def format_value(value) -> str:
    """A TOML scalar as a driver sees it: ``1e-05`` -> ``1e-5``, ``True`` -> ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m[1].replace('+', '')}{m[2]}", repr(value))
    return str(value)


def settings_hash(driver: str, settings: dict[str, str], args: list[str]) -> str:
    """Eight hex digits over the driver, every setting of a point and the extra arguments; with a ``TASK_FILE``,
    also over the bytes of that task file and of its data files (``large_models/task_file.py``), so that a point
    whose files were edited is a new point, not one already done."""
    point = {"driver": driver, "settings": settings, "args": args}
    if "TASK_FILE" in settings:
        try:
            point["task_file_sha256"] = task_file.digest(settings["TASK_FILE"])
        except task_file.TaskFileError as err:
            raise SweepError(f"TASK_FILE={settings['TASK_FILE']}: {err}") from None
    return hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:8]


def point_name(variables: dict[str, str], digest: str) -> str:
    """``KEY=value,KEY=value-<hash>``, file-name safe (a path value keeps its last part), at most ~160 chars."""
    parts = []
    for key, value in variables.items():
        value = Path(value.rstrip("/")).name if "/" in value else value
        parts.append(f"{key.lstrip('-')}={re.sub(r'[^A-Za-z0-9._+-]', '_', value)}")
    readable = ",".join(parts)[:150]
    return f"{readable}-{digest}" if readable else digest
