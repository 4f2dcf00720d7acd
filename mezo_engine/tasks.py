"""What every app's tasks share: a sample and the error a data file raises. Each app has its task registry
(``large_models.tasks``: MeZO's large-model tasks from the hub or original files; ``medium_models.tasks``: the
LM-BFF k-shot tasks)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class DataError(ValueError):
    """A data file (or the hub) that cannot give usable rows; the message names the file, line and problem."""


@dataclass
class Sample:
    """One example: its raw fields, the candidates to score (None for generation) and the gold answer.

    For classification ``correct_candidate`` is one element of ``candidates`` (ReCoRD: the list of gold
    entities, any of which counts); for generation it is the list of gold answer strings.
    """

    id: int | str
    data: dict
    correct_candidate: Any
    candidates: list | None
