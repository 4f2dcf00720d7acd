"""One point as a command: the driver, its environment and flags, its log; and what came of running it.

A ``Launch`` holds plain strings only, so that it pickles for a SLURM job and reads well in ``--dry-run``.
The point's result file goes through the driver's ``"$@"`` as ``--result_file``; run.py then keeps the
checkpoints in the same path without ``.json``, where the drivers' ``RESUME=auto`` finds them.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mezo_engine.status import Kind

from .spec import Point, Sweep
from .state import read_state

RESUMABLE_EXIT = 75  # run.py's exit status after a SIGTERM (mezo_engine/checkpoint.py)


@dataclass(frozen=True)
class Launch:
    """Everything needed to run one point, anywhere the repository and the paths are reachable."""

    name: str
    driver: str
    env: dict
    argv: list
    result_file: str
    output_dir: str
    log_file: str
    cwd: str

    def command(self) -> list[str]:
        return ["bash", self.driver, *self.argv]

    def shell_line(self, extra_env: dict | None = None) -> str:
        """The command as one shell line, with the variables this point (and its slot) sets."""
        env = {**(extra_env or {}), **self.env}
        return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, self.command())])

    def environment(self, extra_env: dict | None = None) -> dict[str, str]:
        """This process's environment, this Python first on PATH (the drivers call ``python``), the slot's
        variables (threads, devices) and the point's settings, in that order of precedence."""
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "PATH": path, **(extra_env or {}), **self.env}

    def state(self):
        return read_state(Path(self.result_file), Path(self.output_dir))


def make_launch(sweep: Sweep, point: Point) -> Launch:
    """The launch of ``point``: the sweep's driver with the point's variables, flags and result file."""
    argv = ["--result_file", str(point.result_file), *point.flags(), *sweep.args]
    log = sweep.result_dir / "logs" / f"{point.name}.log"
    return Launch(point.name, str(sweep.driver), point.env(), argv, str(point.result_file),
                  str(point.output_dir), str(log), os.getcwd())


def outcome(launch: Launch, returncode: int) -> str:
    """What a finished run left: ``completed``, ``budget reached``, ``interrupted ...``, ``diverged ...`` or ``failed ...``."""
    state = launch.state()
    if returncode == 0 and state.finished:
        return state.detail
    if state.kind in (Kind.INTERRUPTED.value, Kind.DIVERGED.value):
        return state.detail
    hint = " (interrupted: re-run the sweep to resume)" if returncode == RESUMABLE_EXIT else ""
    return f"failed: exit status {returncode}{hint}; log {launch.log_file}"


def open_log(launch: Launch):
    """The point's log file, opened for appending (a resumed run adds to the log of its first part)."""
    Path(launch.log_file).parent.mkdir(parents=True, exist_ok=True)
    log = open(launch.log_file, "a", encoding="utf-8")
    log.write(f"== {launch.shell_line()}\n")
    log.flush()
    return log


def run_in_job(launch: Launch) -> dict:
    """Run one point inside a scheduler's job (SLURM array task): threads from the job's CPUs, the driver in the
    foreground, its outcome returned. A point completed meanwhile (another sweep) is not run again."""
    state = launch.state()
    if not state.runs:  # finished meanwhile (another sweep), or a file run.py would refuse
        return {"name": launch.name, "outcome": state.detail if state.kind != "unreadable" else
                f"not run: {state.detail}"}
    threads = os.environ.get("SLURM_CPUS_PER_TASK")
    extra = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} if threads else {}
    with open_log(launch) as log:
        proc = subprocess.run(launch.command(), env=launch.environment(extra), cwd=launch.cwd,
                              stdout=log, stderr=subprocess.STDOUT)
    return {"name": launch.name, "outcome": outcome(launch, proc.returncode)}
