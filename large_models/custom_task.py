"""``--task_name custom --task_file FILE``: a task read from your own files (``task_file.py`` describes the file).

The records of JSONL, CSV or TSV files become samples of the same kinds as the built-in tasks, so everything else
(shared-prefix candidate scoring, LM loss on the answer, generation with token F1, demonstrations, SFC) runs
unchanged. Every bad record is one line naming the file, the line and the field; ``check_tokenization`` refuses an
answer whose tokens merge with the end of its prompt, which the scorer could not score as the answer's own.
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any, Iterable

from large_models.task_file import FORMATS, TaskFile, read_task_file
from large_models.task_table import CUSTOM
from large_models.tasks import DataError, Task, _read_jsonl, _read_text, get_task, sample_subset
from large_models.templates import Template, _first
from mezo_engine.data import option_lengths
from mezo_engine.tasks import Sample


def label_text(value: Any) -> str:
    """A label value as the task file's label_words keys write it: JSON's spelling of booleans, text otherwise
    (without surrounding spaces)."""
    return json.dumps(value) if isinstance(value, bool) else str(value).strip()


def stripped(record: dict) -> dict:
    """The record with the surrounding whitespace of its text fields removed (as MeZO's templates strip theirs)."""
    return {k: v.strip() if isinstance(v, str) else v for k, v in record.items()}


class CustomTemplate(Template):
    """The task file's ``template`` over a record's fields (their surrounding spaces removed); the answer is the
    label word, or the choice or gold answer after ``answer_prefix`` (and a generated answer's ``answer_suffix``)."""

    def __init__(self, task: TaskFile):
        self.task = task

    def encode(self, sample: Any) -> str:
        return self.task.template.format_map(stripped(sample.data))

    def answer_text(self, sample: Any, candidate: Any) -> str:
        if self.task.kind == "classification":
            return self.task.label_words[candidate]
        if self.task.kind == "choice":
            return self.task.answer_prefix + candidate
        return self.task.answer_prefix + _first(candidate) + self.task.answer_suffix

    def encode_sfc(self, sample: Any) -> str:
        if self.task.calibration is None or self.task.kind == "generation":
            return super().encode_sfc(sample)
        return self.task.calibration


class CustomTask(Task):
    """A task from a task file: ``load("train")`` reads its train file, ``load("validation")`` its eval file."""

    name = CUSTOM

    def __init__(self, task_file: str | Path):
        self.file = read_task_file(task_file)
        self.template = CustomTemplate(self.file)
        self.generation = self.file.kind == "generation"
        self.metric = "f1" if self.generation else "accuracy"
        self._where: dict[int, str] = {}  # id(sample data) -> "file, line N", for messages after loading

    def load(self, split: str, data_dir: str | Path | None = None) -> list[Sample]:
        """The samples of ``split`` ("train", "validation", or "dev" for the dev file); ``data_dir`` is not read:
        the task file names its files."""
        path = {"train": self.file.train, "validation": self.file.eval, "dev": self.file.dev}[split]
        return [] if path is None else [self._sample(i, row, f"{path}, line {n}")
                                        for i, (n, row) in enumerate(read_records(path))]

    def sample_train_sets(self, train: list[Sample], num_train: int, num_dev: int | None,
                          seeds: Iterable[int]) -> list[list[Sample]]:
        """As the built-in tasks (``num_dev`` from the end of the drawn set), or with a dev file, ``num_train`` from
        train followed by ``num_dev`` drawn from the dev file with the same seed."""
        if self.file.dev is None or not num_dev:
            return super().sample_train_sets(train, num_train, num_dev, seeds)
        dev = self.load("dev")
        for pool, want, what in ((train, num_train, "train"), (dev, num_dev, "dev")):
            if want > len(pool):
                warnings.warn(f"asked for {want} {what} examples but {getattr(self.file, what)} holds {len(pool)}; "
                              f"using all of them", stacklevel=2)
        return [sample_subset(train, s, num_train) + sample_subset(dev, s, num_dev) for s in seeds]

    def _sample(self, index: int, row: dict, where: str) -> Sample:
        task = self.file
        for name in task.template_fields:
            if name not in row:
                raise DataError(f"{where}: no field {name!r}, which the template names ({task.path})")
        self._where[id(row)] = where
        if task.kind == "classification":
            value = _field(row, task.label_field, where, "label_field")
            label = label_text(value)
            if label not in task.label_words:
                raise DataError(f"{where}: field {task.label_field!r}: label {label!r} is not one of the task "
                                f"file's label_words ({', '.join(map(repr, task.label_words))})")
            return Sample(id=index, data=row, correct_candidate=label, candidates=list(task.label_words))
        if task.kind == "choice":
            choices = _field(row, task.choices_field, where, "choices_field")
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
                raise DataError(f"{where}: field {task.choices_field!r} must be a list of two or more answer texts")
            return Sample(id=index, data=row, correct_candidate=choices[self._gold_index(row, choices, where)],
                          candidates=choices)
        answers = _field(row, task.answer_field, where, "answer_field")
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise DataError(f"{where}: field {task.answer_field!r} must be a non-empty answer text or a list of them")
        return Sample(id=index, data=row, correct_candidate=answers, candidates=None)

    def _gold_index(self, row: dict, choices: list[str], where: str) -> int:
        gold = _field(row, self.file.answer_field, where, "answer_field")
        if isinstance(gold, str) and gold in choices:
            return choices.index(gold)
        if isinstance(gold, str) and gold.strip().isdigit():
            gold = int(gold)
        if isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(choices):
            return gold
        raise DataError(f"{where}: field {self.file.answer_field!r}: {gold!r} is neither one of the {len(choices)} "
                        f"choices nor an index 0..{len(choices) - 1}")

    def where(self, sample: Sample) -> str:
        return self._where.get(id(sample.data), f"example {sample.id}")

    def check_tokenization(self, tokenizer, samples: Iterable[Sample]) -> None:
        """Refuse an answer whose tokens merge with the end of its prompt. The scorer takes an answer's tokens as
        those the answer adds to the prompt's; when a BPE merge crosses the boundary (a prompt ending in a letter
        and a label word without a leading space, say) the prompt's tokens are no prefix of the whole row's, and
        the scorer would score the row's last tokens, part of which are the prompt's own."""
        for sample in samples:
            prompt = tokenizer.encode(self.template.encode(sample).strip(" "))
            answers = sample.candidates if sample.candidates is not None else [sample.correct_candidate]
            for answer, n in zip(answers, option_lengths(tokenizer, self.template, sample, answers)):
                row = tokenizer.encode(self.template.verbalize(sample, answer).strip(" "))
                if row[:len(prompt)] != prompt or n < 1:
                    text = self.template.answer_text(sample, answer)
                    raise DataError(
                        f"{self.where(sample)}: the answer {text!r} merges with the end of the prompt "
                        f"({self.template.encode(sample)[-30:]!r}) into other tokens, so it cannot be scored as its "
                        f"own tokens; start the answers with a space or end the template with a separator "
                        f"({self.file.path})")


def task_for(name: str, task_file: str | None = None) -> Task:
    """The task ``name`` of the registry (``tasks.get_task``), or for ``custom`` the one ``task_file`` describes."""
    return CustomTask(task_file) if name == CUSTOM else get_task(name)


def _field(row: dict, name: str, where: str, key: str) -> Any:
    if name not in row:
        raise DataError(f"{where}: no field {name!r} (the task file's {key})")
    return row[name]


def read_records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) of every record of a JSONL, CSV or TSV file (a header line names the CSV/TSV fields);
    an empty file, or a line whose field count differs from the header's, is a DataError naming the file."""
    kind = FORMATS[path.suffix.lower()]
    if kind == "jsonl":
        records = _read_jsonl(path)
    else:
        reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter="," if kind == "csv" else "\t")
        header = next(reader, None)
        records = []
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}, line {reader.line_num}: {len(fields)} fields, the header has "
                                f"{len(header)} ({', '.join(header)})")
            records.append((reader.line_num, dict(zip(header, fields))))
    if not records:
        raise DataError(f"{path}: no examples (the file is empty or holds only a header)")
    return records
