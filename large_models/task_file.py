"""A task of your own, described by a task file (TOML): which files hold the examples and how an example becomes a
prompt and an answer. Standard library only, so that the drivers and ``scripts/sweeps`` can read it cheaply;
``custom_task.py`` turns it into a task of the registry (``--task_name custom --task_file FILE``; docs/your-data.md).

    name = "moviesent"                     # optional: the file name without .toml; result names use it
    train = "train.jsonl"                  # JSONL, CSV or TSV, relative to this file (optional: zero-shot / ICL)
    dev = "dev.jsonl"                      # optional: --num_dev examples come from here, not from train's end
    eval = "test.jsonl"                    # what --num_eval examples are drawn from and scored on
    template = "Review: {review}\\nSentiment:"   # the prompt: the record's fields in braces ({{ for a brace)

and one kind of answer:

* classification: ``label_field = "stars"`` and ``[label_words]`` (a record's label value -> the text scored
  after the prompt, e.g. ``positive = " good"``). Values match as text: 1 and "1" are one label.
* multiple choice: ``choices_field`` (a list of answer texts per record, JSONL) and ``answer_field`` (the gold
  choice: its index or its text).
* generation: ``answer_field`` alone (a string, or a list of accepted answers; training uses the first), scored
  by token F1 as SQuAD is.

Optional: ``answer_prefix`` (between the prompt and a choice or generated answer, default one space),
``answer_suffix`` (after a generated answer, default a newline: the model learns to stop there),
``calibration`` (the prompt without the input, for ``--sfc``).
"""
from __future__ import annotations

import difflib
import hashlib
import shlex
import string
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

KEYS = ("name", "train", "dev", "eval", "template", "label_field", "label_words", "choices_field", "answer_field",
        "answer_prefix", "answer_suffix", "calibration")
FILE_KEYS = ("train", "dev", "eval")
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
DEFAULT_DEV = 100  # DEV of the drivers when a custom task does not say


class TaskFileError(ValueError):
    """A task file that cannot describe a task; the message names the file and the key."""


@dataclass(frozen=True)
class TaskFile:
    path: Path
    name: str
    eval: Path
    template: str
    train: Path | None = None
    dev: Path | None = None
    label_field: str | None = None
    label_words: dict[str, str] | None = None
    choices_field: str | None = None
    answer_field: str | None = None
    answer_prefix: str = " "
    answer_suffix: str = "\n"
    calibration: str | None = None

    @property
    def kind(self) -> str:
        """``classification``, ``choice`` or ``generation``."""
        if self.label_words is not None:
            return "classification"
        return "choice" if self.choices_field else "generation"

    @property
    def template_fields(self) -> list[str]:
        return fields_of(self.template)

    def data_files(self) -> dict[str, Path]:
        return {k: getattr(self, k) for k in FILE_KEYS if getattr(self, k) is not None}


def fields_of(template: str) -> list[str]:
    """The field names a template's ``{...}`` replacement fields name, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def read_task_file(path: str | Path) -> TaskFile:
    """The task file at ``path``, checked: every problem is a TaskFileError naming the file and the key."""
    path = Path(path)
    where = f"task file {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskFileError(f"{where}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise TaskFileError(f"{where}: not valid TOML ({err})") from None
    for key in data:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            raise TaskFileError(f"{where}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else
                                                                    f"; known: {', '.join(KEYS)}"))
    for key, what in (("eval", "the file it is evaluated on"), ("template", "a prompt template")):
        if key not in data:
            raise TaskFileError(f"{where}: no {key!r}: a task needs {what}")
    for key, value in data.items():
        if key != "label_words" and not isinstance(value, str):
            raise TaskFileError(f"{where}: {key!r} must be a string, found {type(value).__name__}")
    files = {k: _data_file(path, k, data[k]) for k in FILE_KEYS if k in data}
    try:
        fields_of(data["template"])
    except ValueError as err:
        raise TaskFileError(f"{where}: template {data['template']!r}: {err} (write {{{{ and }}}} for a brace)") from None
    words = data.get("label_words")
    if words is not None:
        if not isinstance(words, dict) or not words or not all(isinstance(v, str) and v for v in words.values()):
            raise TaskFileError(f"{where}: label_words must be a table of label value = \"answer text\" (non-empty)")
        if "label_field" not in data:
            raise TaskFileError(f"{where}: label_words without label_field: name the field that holds the label")
    kinds = [k for k, on in (("label_words", words is not None), ("choices_field", "choices_field" in data)) if on]
    if len(kinds) > 1:
        raise TaskFileError(f"{where}: both label_words and choices_field: a task is classification or multiple "
                            f"choice, not both")
    if "label_field" in data and words is None:
        raise TaskFileError(f"{where}: label_field without label_words: give the text scored for each label")
    if words is None and "answer_field" not in data:
        raise TaskFileError(f"{where}: no answer: give label_field and label_words (classification), choices_field "
                            f"and answer_field (multiple choice), or answer_field (generation)")
    return TaskFile(path=path, name=data.get("name", path.stem), eval=files["eval"], template=data["template"],
                    train=files.get("train"), dev=files.get("dev"), label_field=data.get("label_field"),
                    label_words={str(k): v for k, v in words.items()} if words is not None else None,
                    choices_field=data.get("choices_field"), answer_field=data.get("answer_field"),
                    answer_prefix=data.get("answer_prefix", " "), answer_suffix=data.get("answer_suffix", "\n"),
                    calibration=data.get("calibration"))


def _data_file(task_path: Path, key: str, name: str) -> Path:
    path = task_path.parent / name
    if path.suffix.lower() not in FORMATS:
        raise TaskFileError(f"task file {task_path}: {key} = {name!r}: unknown format; use "
                            f"{', '.join(sorted(FORMATS))}")
    if not path.is_file():
        raise TaskFileError(f"task file {task_path}: {key} = {name!r}: no such file ({path})")
    return path


def digest(path: str | Path) -> str:
    """sha256 of the task file's bytes and of every data file it names, in order: an edited task or data file gives
    a new result name (and a sweep point a new name), so it never resumes or is skipped as the old one."""
    task = read_task_file(path)
    sha = hashlib.sha256(Path(path).read_bytes())
    for key, file in task.data_files().items():
        sha.update(f"\0{key}\0".encode())
        sha.update(file.read_bytes())
    return sha.hexdigest()


def driver_assignments(path: str) -> str:
    """The shell assignments ``large_models/common.sh`` evaluates for ``TASK=custom TASK_FILE=path``, as
    ``task_table.py driver`` gives them for a built-in task: classification and multiple choice train over the
    candidates, generation on the answer's tokens."""
    flags = ["--task_file", path] + ([] if read_task_file(path).kind == "generation" else ["--train_as_classification"])
    return f"DEFAULT_DEV={DEFAULT_DEV}\nTASK_ARGS=({' '.join(shlex.quote(f) for f in flags)})"


def main(argv: list[str]) -> int:
    """``python3 large_models/task_file.py driver FILE``: the drivers' settings for a task file."""
    if len(argv) != 2 or argv[0] != "driver":
        print("usage: task_file.py driver FILE", file=sys.stderr)
        return 2
    if not argv[1]:
        print("TASK=custom needs TASK_FILE=<a task file> (docs/your-data.md)", file=sys.stderr)
        return 2
    try:
        print(driver_assignments(argv[1]))
    except TaskFileError as err:
        print(f"TASK_FILE={argv[1]}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
