"""A run's status, one type for the runner that decides it, the result checks and the sweeps that read it.

The result JSON's ``status`` is a string: ``completed``, ``budget reached`` (``--max_forwards`` or ``--max_time``
ended training before ``--max_steps``; evaluated as a completed run, and a larger budget continues it from its
checkpoint), ``interrupted at step N`` (a stop signal; the run resumes from its checkpoint) or ``diverged at step
N`` (a non-finite loss, projected gradient or merge). A result without
a status is an older completed one. ``Status.parse`` reads any such string by its first word, as the sweeps always
have (anything else is kind ``other``), and ``format`` gives back exactly the string it was read from or made as,
so that committed results and the sweeps' files read as before.

Standard library only: ``scripts/sweeps`` imports it without torch or transformers (``mezo_engine/__init__.py``
imports nothing).
"""
from __future__ import annotations

import enum
import re


class Kind(enum.Enum):
    """What a status says about the run, and so what a sweep does with it (``scripts/sweeps/state.py``)."""

    COMPLETED = "completed"
    BUDGET = "budget reached"
    INTERRUPTED = "interrupted"
    DIVERGED = "diverged"
    OTHER = "other"


_STEP = re.compile(r" at step (\d+)\b")


class Status(str):
    """One status: the string the result JSON holds, with its ``kind`` and ``step``. It is a ``str`` itself, so it
    is written, compared and hashed as that string (``status == "completed"`` holds, as before there was a type);
    make it with ``completed()``, ``budget_reached()``, ``interrupted(step)``, ``diverged(step)`` or
    ``parse(text)``."""

    __slots__ = ()

    @classmethod
    def completed(cls) -> Status:
        return cls(Kind.COMPLETED.value)

    @classmethod
    def budget_reached(cls) -> Status:
        """Training stopped at its forward or time budget, then evaluated (the result records which)."""
        return cls(Kind.BUDGET.value)

    @classmethod
    def interrupted(cls, step: int) -> Status:
        """Stopped by a signal after the 1-based ``step``."""
        return cls(f"{Kind.INTERRUPTED.value} at step {step}")

    @classmethod
    def diverged(cls, step: int) -> Status:
        """A non-finite value at the 1-based ``step``."""
        return cls(f"{Kind.DIVERGED.value} at step {step}")

    @classmethod
    def parse(cls, text: object) -> Status:
        """The status of a result JSON's ``status`` value (None or absent: an older completed result)."""
        return cls(Kind.COMPLETED.value if text is None else str(text))

    def format(self) -> str:
        """The string the result JSON holds (a plain ``str``)."""
        return str(self)

    @property
    def kind(self) -> Kind:
        """By the first word, as the sweeps always read it; an unknown string is ``Kind.OTHER``."""
        return next((k for k in Kind if k is not Kind.OTHER and self.startswith(k.value)), Kind.OTHER)

    @property
    def step(self) -> int | None:
        """The step an interrupted or diverged run stopped at (None when the text names none)."""
        match = _STEP.search(self)
        return int(match[1]) if match else None

    @property
    def is_completed(self) -> bool:
        return self.kind is Kind.COMPLETED

    @property
    def is_finished(self) -> bool:
        """Whether training ended as asked and the run was evaluated: completed, or its budget reached."""
        return self.kind in (Kind.COMPLETED, Kind.BUDGET)
