"""Where a point stands, read from its result file, and what a (re-)run does with it.

run.py writes ``status``: ``completed``, ``budget reached``, ``interrupted at step N`` or ``diverged at step N``
(a result without a status is an older completed one), read here with the runner's own type (``mezo_engine.status``,
standard library only). A sweep skips completed points and those whose budget was reached (both evaluated), runs missing and interrupted ones again (the
drivers' ``RESUME=auto`` continues from the latest checkpoint), never retries a diverged one (it would diverge
again from the same checkpoint; change its settings instead), and refuses a result file that is not a result JSON,
which run.py would refuse to replace too.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mezo_engine.status import Kind, Status

# kind -> what a sweep does with the point: a run's status (``mezo_engine.status.Kind``), or its file's state
ACTIONS = {Kind.COMPLETED.value: "skip", Kind.BUDGET.value: "skip", Kind.DIVERGED.value: "no retry", "unreadable": "refuse",
           Kind.INTERRUPTED.value: "resume", "missing": "run", Kind.OTHER.value: "run"}


@dataclass(frozen=True)
class State:
    """``kind`` (a key of ACTIONS) and a detail for people: the status, or what is wrong with the file."""

    kind: str
    detail: str

    @property
    def action(self) -> str:
        return ACTIONS[self.kind]

    @property
    def finished(self) -> bool:
        """Whether the point has an evaluated result: completed, or stopped at its budget."""
        return self.kind in (Kind.COMPLETED.value, Kind.BUDGET.value)

    @property
    def runs(self) -> bool:
        """Whether a sweep (re-)runs this point."""
        return self.action in ("run", "resume")


def read_result(path: Path) -> dict | None:
    """The result JSON at ``path`` as a dict, or None if it is missing or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step in ``output_dir``, if any."""
    found = [(int(m[1]), p) for p in Path(output_dir).glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def read_state(result_file: Path, output_dir: Path | None = None) -> State:
    """The state of the run whose result goes to ``result_file`` (checkpoints in ``output_dir``)."""
    result_file = Path(result_file)
    if not result_file.exists():
        ckpt = latest_checkpoint(output_dir) if output_dir else None
        return State("missing", f"no result yet; resumes from {ckpt.name}" if ckpt else "no result yet")
    data = read_result(result_file)
    if data is None:
        return State("unreadable", f"{result_file} is not a result JSON; move or delete it to run this point")
    status = Status.parse(data.get("status"))
    return State(status.kind.value, status.format())
