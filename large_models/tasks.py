"""Tasks: loading each data set, turning rows into samples, and drawing few-shot training sets.

Two sources give the same rows:

* the HuggingFace hub (``data_dir=None``), through ``datasets.load_dataset``;
* a local folder holding the data sets' original files (GLUE TSV, SuperGLUE JSONL, SQuAD and DROP JSON).
  These are converted to the rows the hub produces (field names, integer labels, MultiRC/ReCoRD flattening,
  the ``wsc.fixed`` span repair, DROP answer parsing), so either source yields the same samples.

Which template, candidates and gold candidate each task uses follows MeZO's ``large_models/tasks.py``.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from mezo_engine import hub
from mezo_engine.tasks import DataError, Sample
from large_models.templates import (
    BoolQTemplate,
    CBTemplate,
    CopaTemplate,
    DROPTemplate,
    MultiRCTemplate,
    ReCoRDTemplate,
    RTETemplate,
    SQuADTemplate,
    SST2Template,
    Template,
    WICTemplate,
    WSCTemplate,
)

SPLITS = ("train", "validation")
OFFLINE_DATA_HINT = ("run offline with local files instead: DATA_DIR=<folder> (run.py --data_dir <folder>) holding "
                     "the data sets' original files, and MODEL=smollm2-135m (--model_name smollm2-135m) or a local "
                     "model directory, as the README's 'Offline' section shows")
BOOL_LABELS = {False: 0, True: 1}


# ----------------------------------------------------------------------------------------------------------
# Sampling


def sample_subset(samples: list[Sample], seed: int, num: int) -> list[Sample]:
    """The first ``num`` samples of a seeded permutation, as MeZO draws them.

    MeZO seeds numpy's global generator and calls ``np.random.permutation``; a ``RandomState`` with the same
    seed gives the same permutation without touching the global state.
    """
    order = np.random.RandomState(seed).permutation(len(samples))[:num]
    return [samples[i] for i in order]


def sample_train_sets(train: list[Sample], num_train: int, num_dev: int | None,
                      seeds: Iterable[int]) -> list[list[Sample]]:
    """One training set per seed: ``num_train`` samples followed by ``num_dev`` dev samples (if any).

    The caller takes the dev set from the end. When fewer rows exist than asked for, all of them are
    returned (in permuted order) with a warning.
    """
    total = num_train + (num_dev or 0)
    if total > len(train):
        warnings.warn(f"asked for {total} training samples (num_train {num_train} + num_dev {num_dev or 0}) "
                      f"but only {len(train)} exist; using all of them", stacklevel=2)
    return [sample_subset(train, seed, total) for seed in seeds]


def per_example_demo_seeds(num_valid: int, num_eval: int | None) -> list[int]:
    """MeZO's seeds for one demonstration set per evaluation example (``--trainer none`` without a train-set
    seed): ``num_eval`` (else the validation size) integers in [0, 10000) drawn by numpy under seed 0."""
    count = num_valid if num_eval is None else num_eval
    return np.random.RandomState(0).randint(0, 10000, count).tolist()


# ----------------------------------------------------------------------------------------------------------
# Reading original files


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def _find_dir(data_dir: Path, name: str) -> Path:
    """``data_dir/name``, matching the folder name case-insensitively (``COPA`` finds ``Copa``)."""
    exact = data_dir / name
    if exact.is_dir() or not data_dir.is_dir():
        return exact
    for child in sorted(data_dir.iterdir()):
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return exact


def _read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; bytes that are not UTF-8 are reported with their line and offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte {data[err.start:err.start + 1]!r} at offset "
                        f"{err.start}); re-save the file as UTF-8") from None


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of ``path``; a bad line is reported with its number."""
    rows = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}, column {err.colno}); "
                            f"the file may be truncated or damaged") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, found {type(row).__name__}")
        rows.append((number, row))
    return rows


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}); "
                        f"the file may be truncated or damaged") from None


def _map_label(raw: dict, mapping: dict) -> int:
    """The integer id of ``raw["label"]``; unlabelled rows (test files) are refused."""
    if "label" not in raw:
        raise ValueError("row has no label (test files cannot be used)")
    try:
        return mapping[raw["label"]]
    except (KeyError, TypeError):
        raise ValueError(f"unexpected label {raw['label']!r}; expected one of {sorted(mapping, key=str)}") from None


# ----------------------------------------------------------------------------------------------------------
# Tasks


class Task:
    """A data set with its template, metric and loaders. Subclasses fill in the class attributes.

    ``load`` reads rows from the hub or from ``data_dir`` and turns each into a ``Sample``.
    """

    name: str = ""
    metric: str = "accuracy"
    generation: bool = False
    template_class: type[Template] = Template
    hub_path: str = ""
    hub_config: str | None = None
    local_dir: str = ""                     # folder under data_dir
    local_files: dict[str, str] = {}        # split -> file name in that folder
    source: str = ""                        # what the local files are, for error messages

    def __init__(self) -> None:
        self.template: Template = self.template_class()

    def load(self, split: str, data_dir: str | Path | None = None) -> list[Sample]:
        """All samples of ``split`` ("train" or "validation"); ``data_dir`` None (or "") reads the hub."""
        _check_split(split)
        rows = self._checked_local_rows(split, Path(data_dir)) if data_dir else self.hub_rows(split)
        return [self.build_sample(i, row) for i, row in enumerate(rows)]

    def _checked_local_rows(self, split: str, data_dir: Path) -> list[dict]:
        """``local_rows``, with a missing field or an empty file reported as a DataError naming the file."""
        try:
            rows = self.local_rows(split, data_dir)
        except (KeyError, TypeError) as err:
            raise DataError(f"{self.local_path(split, data_dir)}: missing or malformed field {err} for task "
                            f"{self.name}") from None
        if not rows:
            raise DataError(f"{self.local_path(split, data_dir)}: no examples (the file is empty or holds only "
                            f"a header)")
        return rows

    # -- sources ---------------------------------------------------------------------------------------

    def hub_rows(self, split: str) -> list[dict]:
        """Rows of ``split`` from the HuggingFace hub, in the hub's field layout."""
        offline = hub.offline_reason()
        if offline:  # datasets reads its offline switch once, when imported: the cache only, no retries
            os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        import datasets  # imported here: only this path needs it, and it is slow to import

        try:
            if offline and not datasets.config.HF_HUB_OFFLINE:  # imported earlier, online: do not wait for retries
                raise ConnectionError(offline)
            table = datasets.load_dataset(self.hub_path, self.hub_config, split=split)
        except OSError as err:  # ConnectionError, OfflineModeIsEnabled, ...
            why = f"unreachable: {offline}" if offline else \
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            raise DataError(f"cannot reach the HuggingFace hub to load {self.hub_path} ({why}); "
                            f"{OFFLINE_DATA_HINT}") from None
        return [self.from_hub(dict(row)) for row in table]

    def from_hub(self, row: dict) -> dict:
        """Adjust one hub row to the layout ``build_sample`` expects (identity by default)."""
        return row

    def local_path(self, split: str, data_dir: Path) -> Path:
        """The original file holding ``split``; raises FileNotFoundError naming it when it is missing."""
        path = _find_dir(data_dir, self.local_dir) / self.local_files[split]
        if not path.is_file():
            raise FileNotFoundError(
                f"no file {path} for task {self.name} split {split} (set --data_dir / DATA_DIR to a folder "
                f"holding the original {self.source} files, or leave it unset to load from the HuggingFace hub)")
        return path

    def local_rows(self, split: str, data_dir: Path) -> list[dict]:
        """Rows of ``split`` read from the original file under ``data_dir``, in the hub's layout."""
        raise NotImplementedError

    # -- samples ---------------------------------------------------------------------------------------

    def build_sample(self, index: int, row: dict) -> Sample:
        """Turn one row into a ``Sample``; ``index`` is its position in the split."""
        raise NotImplementedError

    def sample_train_sets(self, train: list[Sample], num_train: int, num_dev: int | None,
                          seeds: Iterable[int]) -> list[list[Sample]]:
        """See the module-level ``sample_train_sets``."""
        return sample_train_sets(train, num_train, num_dev, seeds)

    def sample_subset(self, samples: list[Sample], seed: int, num: int) -> list[Sample]:
        """See the module-level ``sample_subset``."""
        return sample_subset(samples, seed, num)

    def check_tokenization(self, tokenizer, samples: Iterable[Sample]) -> None:
        """Refuse samples whose answers ``tokenizer`` would make unscorable; MeZO's templates need no check
        (``custom_task.CustomTask`` checks a task file's)."""


class LabelTask(Task):
    """Classification whose candidates are the label ids ``0 .. num_labels-1``."""

    num_labels: int = 2

    def build_sample(self, index: int, row: dict) -> Sample:
        label = row["label"]
        if not isinstance(label, int) or not 0 <= label < self.num_labels:
            raise DataError(f"{self.name} row {index}: label {label!r} is not one of 0..{self.num_labels - 1}")
        return Sample(id=index, data=row, correct_candidate=label, candidates=list(range(self.num_labels)))


class SST2(LabelTask):
    name = "SST2"
    template_class = SST2Template
    hub_path, hub_config = "nyu-mll/glue", "sst2"
    local_dir = "SST-2"
    local_files = {"train": "train.tsv", "validation": "dev.tsv"}
    source = "GLUE SST-2"

    def from_hub(self, row: dict) -> dict:
        return {**row, "sentence": row["sentence"].strip()}

    def local_rows(self, split: str, data_dir: Path) -> list[dict]:
        path = self.local_path(split, data_dir)
        header, *lines = _read_text(path).split("\n")
        if not header.strip() and not any(line.strip() for line in lines):
            raise DataError(f"{path}: the file is empty")
        columns = header.rstrip("\r").split("\t")
        if "sentence" not in columns or "label" not in columns:
            raise DataError(f"{path}, line 1: must be the header 'sentence\\tlabel', found {header[:80]!r}")
        rows = []
        for number, line in enumerate(lines, start=2):
            if line.rstrip("\r"):
                row = self._tsv_row(line.rstrip("\r").split("\t"), columns, f"{path}, line {number}")
                rows.append({**row, "idx": len(rows)})
        return rows

    def _tsv_row(self, fields: list[str], columns: list[str], where: str) -> dict:
        """One TSV line as a row; too few tab-separated fields or a label other than 0 / 1 is a DataError."""
        if len(fields) < len(columns):
            raise DataError(f"{where}: {len(fields)} tab-separated field(s), expected {len(columns)} "
                            f"({', '.join(columns)})")
        label = fields[columns.index("label")].strip()
        if label not in ("0", "1"):
            raise DataError(f"{where}: label {label!r} is not one of 0, 1")
        return {"sentence": fields[columns.index("sentence")].strip(), "label": int(label)}


class SuperGLUETask(Task):
    """A SuperGLUE task read from ``<data_dir>/<Dir>/{train,val}.jsonl``.

    By default each line becomes one row with ``fields``, ``idx`` and the label mapped by ``label_map``.
    """

    hub_path = "aps/super_glue"
    local_files = {"train": "train.jsonl", "validation": "val.jsonl"}
    source = "SuperGLUE"
    fields: tuple[str, ...] = ()
    label_map: dict = BOOL_LABELS

    def local_rows(self, split: str, data_dir: Path) -> list[dict]:
        path = self.local_path(split, data_dir)
        return [row for number, raw in _read_jsonl(path) for row in self._converted(raw, path, number)]

    def _converted(self, raw: dict, path: Path, number: int) -> list[dict]:
        """``convert`` one line, reporting a missing field or bad label with the file and line."""
        try:
            return self.convert(raw, path)
        except KeyError as err:
            raise DataError(f"{path}, line {number}: missing field {err} for task {self.name}") from None
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}, line {number}: {err}") from None

    def convert(self, raw: dict, path: Path) -> list[dict]:
        """The hub rows for one line of the original file."""
        row = {field: raw[field] for field in self.fields}
        row["idx"] = raw["idx"]
        row["label"] = _map_label(raw, self.label_map)
        return [row]


class RTE(SuperGLUETask, LabelTask):
    name = "RTE"
    template_class = RTETemplate
    hub_config = "rte"
    local_dir = "RTE"
    fields = ("premise", "hypothesis")
    label_map = {"entailment": 0, "not_entailment": 1}


class CB(SuperGLUETask, LabelTask):
    name = "CB"
    template_class = CBTemplate
    hub_config = "cb"
    local_dir = "CB"
    fields = ("premise", "hypothesis")
    label_map = {"entailment": 0, "contradiction": 1, "neutral": 2}
    num_labels = 3


class WIC(SuperGLUETask, LabelTask):
    name = "WIC"
    template_class = WICTemplate
    hub_config = "wic"
    local_dir = "WiC"
    fields = ("word", "sentence1", "sentence2", "start1", "start2", "end1", "end2")


def fix_wsc_spans(row: dict) -> dict:
    """HF's ``wsc.fixed`` repair: make each span text a substring of ``text`` where that is possible.

    A span that is not found gets the case of its first letter from the word at its index in
    ``text.split()``, loses trailing periods, and has newlines replaced by spaces. Two known spans with
    intervening words cannot be repaired and are left alone; for the "theyscold" example the span-2 index is
    set to 10, exactly as HF does (HF's text replacement there has no effect, so neither has ours).
    """
    row = dict(row)
    for key in ("span1", "span2"):
        span = row[f"{key}_text"]
        if span in row["text"] or span in ("Kamenev and Zinoviev", "Kamenev, Zinoviev, and Stalin"):
            continue
        index = row[f"{key}_index"]
        if "theyscold" in span:
            row["span2_index"] = 10
        first_word = row["text"].split()[index]
        span = (span[0].lower() if first_word[0].islower() else span[0].upper()) + span[1:]
        row[f"{key}_text"] = span.rstrip(".").replace("\n", " ")
    return row


class WSC(SuperGLUETask, LabelTask):
    name = "WSC"
    template_class = WSCTemplate
    hub_config = "wsc.fixed"
    local_dir = "WSC"
    fields = ("text", "span1_index", "span2_index", "span1_text", "span2_text")

    def convert(self, raw: dict, path: Path) -> list[dict]:
        return [fix_wsc_spans(row) for row in super().convert({**raw, **raw["target"]}, path)]


class MultiRC(SuperGLUETask, LabelTask):
    name = "MultiRC"
    template_class = MultiRCTemplate
    hub_config = "multirc"
    local_dir = "MultiRC"

    def convert(self, raw: dict, path: Path) -> list[dict]:
        """One row per (question, answer) pair of a passage."""
        passage = raw["passage"]
        rows = []
        for question in passage["questions"]:
            for answer in question["answers"]:
                if answer.get("label") is None:
                    raise ValueError("an answer has no label (test files cannot be used)")
                rows.append({
                    "paragraph": passage["text"],
                    "question": question["question"],
                    "answer": answer["text"],
                    "label": int(bool(answer["label"])),
                    "idx": {"paragraph": raw["idx"], "question": question["idx"], "answer": answer["idx"]},
                })
        return rows


class BoolQ(SuperGLUETask):
    """BoolQ as MeZO uses it: the passage without its Wikipedia title, answers ``Yes``/``No``.

    MeZO reads the hub's ``boolq`` (google/boolq), whose passages carry no title. SuperGLUE's files prefix
    each passage with ``<title> -- ``; the local loader removes that prefix (keeping it in ``title``) so both
    sources give the same prompts.
    """

    name = "BoolQ"
    template_class = BoolQTemplate
    hub_path, hub_config = "google/boolq", None
    local_dir = "BoolQ"
    fields = ("question", "passage")

    def from_hub(self, row: dict) -> dict:
        return {"question": row["question"], "passage": row["passage"], "label": int(row["answer"])}

    def convert(self, raw: dict, path: Path) -> list[dict]:
        row = super().convert(raw, path)[0]
        title, sep, passage = row["passage"].partition(" -- ")
        if sep:
            row["title"], row["passage"] = title, passage
        return [row]

    def build_sample(self, index: int, row: dict) -> Sample:
        answer = "Yes" if row["label"] == 1 else "No"
        return Sample(id=index, data=row, correct_candidate=answer, candidates=["Yes", "No"])


class Copa(SuperGLUETask):
    """COPA: the candidates are the two choice texts, scored as continuations of the premise."""

    name = "Copa"
    template_class = CopaTemplate
    hub_config = "copa"
    local_dir = "COPA"
    fields = ("premise", "choice1", "choice2", "question")
    label_map = {0: 0, 1: 1}

    def build_sample(self, index: int, row: dict) -> Sample:
        choices = [row["choice1"], row["choice2"]]
        return Sample(id=index, data=row, correct_candidate=choices[int(row["label"])], candidates=choices)


class ReCoRD(SuperGLUETask):
    """ReCoRD: the candidates are the passage's entities, the gold candidate the list of correct ones."""

    name = "ReCoRD"
    template_class = ReCoRDTemplate
    hub_config = "record"
    local_dir = "ReCoRD"

    def convert(self, raw: dict, path: Path) -> list[dict]:
        """One row per query; entities and answers become sorted unique strings, as on the hub."""
        text = raw["passage"]["text"]
        entities = sorted({text[e["start"]:e["end"] + 1] for e in raw["passage"]["entities"]})
        return [{
            "passage": text,
            "query": qa["query"],
            "entities": entities,
            "answers": sorted({a["text"] for a in qa.get("answers", [])}),
            "idx": {"passage": raw["idx"], "query": qa["idx"]},
        } for qa in raw["qas"]]

    def build_sample(self, index: int, row: dict) -> Sample:
        return Sample(id=index, data=row, correct_candidate=list(row["answers"]),
                      candidates=list(row["entities"]))


class GenerationTask(Task):
    """Free-form answers scored by token F1; rows carry ``context``, ``question`` and ``answers``."""

    metric = "f1"
    generation = True

    def build_sample(self, index: int, row: dict) -> Sample:
        answers = list(row["answers"])
        if not answers:
            raise ValueError(f"{self.name} row {index} has no gold answer")
        return Sample(id=index, data=row, correct_candidate=answers, candidates=None)


class SQuAD(GenerationTask):
    """SQuAD v1.1; gold answers are all annotators' answer texts (duplicates kept, as on the hub)."""

    name = "SQuAD"
    template_class = SQuADTemplate
    hub_path = "rajpurkar/squad"
    local_dir = "SQuAD"
    local_files = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}
    source = "SQuAD v1.1"

    def from_hub(self, row: dict) -> dict:
        return {"title": row["title"], "context": row["context"], "question": row["question"],
                "answers": list(row["answers"]["text"]), "id": row["id"]}

    def local_rows(self, split: str, data_dir: Path) -> list[dict]:
        rows = []
        for article in _read_json(self.local_path(split, data_dir))["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    rows.append({"title": article.get("title", ""), "context": paragraph["context"],
                                 "question": qa["question"], "answers": [a["text"] for a in qa["answers"]],
                                 "id": qa["id"]})
        return rows


def drop_answer_strings(answers: list[dict]) -> list[str] | None:
    """Gold strings of DROP answer objects, as the hub's ``answers_spans.spans``; None if unusable.

    A number answer gives the number string, a date ``"<day> <month> <year>"`` (blank parts joined by
    spaces, then stripped), a span answer each span separately. An answer mixing kinds, or a question left
    with no answer at all, is unusable (the hub drops such questions).
    """
    strings = []
    for answer in answers:
        number, spans = answer.get("number", ""), answer.get("spans", [])
        date = answer.get("date", {})
        date_parts = [date.get("day", ""), date.get("month", ""), date.get("year", "")]
        has_date = any(date_parts)
        if (number != "") + has_date + bool(spans) > 1:
            return None
        if number != "":
            strings.append(number)
        elif has_date:
            strings.append(" ".join(date_parts).strip())
        strings.extend(spans)
    return strings or None


class DROP(GenerationTask):
    """DROP; train uses each question's ``answer``, validation its ``validated_answers`` (as the hub)."""

    name = "DROP"
    template_class = DROPTemplate
    hub_path = "ucinlp/drop"
    local_dir = "DROP"
    local_files = {"train": "drop_dataset_train.json", "validation": "drop_dataset_dev.json"}
    source = "DROP"

    def from_hub(self, row: dict) -> dict:
        return {"context": row["passage"], "question": row["question"],
                "answers": list(row["answers_spans"]["spans"]),
                "section_id": row["section_id"], "query_id": row["query_id"]}

    def local_rows(self, split: str, data_dir: Path) -> list[dict]:
        rows = []
        for section_id, section in _read_json(self.local_path(split, data_dir)).items():
            for qa in section["qa_pairs"]:
                raw_answers = [qa["answer"]] if split == "train" else qa.get("validated_answers", [])
                answers = drop_answer_strings(raw_answers)
                if answers is None:
                    continue
                rows.append({"context": section["passage"], "question": qa["question"], "answers": answers,
                             "section_id": section_id, "query_id": qa["query_id"]})
        return rows


# ----------------------------------------------------------------------------------------------------------
# Registry

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (SST2, RTE, CB, BoolQ, WSC, WIC, MultiRC, Copa, ReCoRD, SQuAD, DROP)
}


def get_task(name: str) -> Task:
    """A fresh task object for ``name`` (exact, or failing that case-insensitive, match)."""
    cls = TASKS.get(name)
    if cls is None:
        cls = next((c for key, c in TASKS.items() if key.lower() == name.lower()), None)
    if cls is None:
        raise ValueError(f"task {name!r} unknown; known: {', '.join(TASKS)}")
    return cls()
