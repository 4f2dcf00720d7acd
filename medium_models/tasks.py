"""The 14 LM-BFF tasks MeZO's medium-model experiments run, and STS-B, which LM-BFF runs and MeZO's drivers do not:
where each split's file is, its column layout, its labels, and LM-BFF's manual prompt (template and label words, as
MeZO's ``run_fewshot.sh`` gives them; STS-B's as LM-BFF's ``run_experiment.sh``).

STS-B is a regression as LM-BFF does it: a similarity score on the bounds (0, 5), two label words (``No`` for the
low end, ``Yes`` for the high end; the ``--mapping`` keys are ``'0'`` and ``'1'``), and Pearson's correlation as
the dev metric (``scoring.RegressionLoss``).

The data is LM-BFF's k-shot layout, ``<data_dir>/<TASK>/<K>-<seed>/{train,dev,test}.{tsv,csv}`` (MNLI:
``dev_matched.tsv`` and ``test_matched.tsv``). GLUE-style tasks are tab-separated without quoting (a header line
except CoLA); the sentence tasks (sst-5, mr, cr, mpqa, subj, trec) are CSV without header, label first. Task names
are LM-BFF's (``SST-2``, ``sst-5``, ``RTE``, ...), not the large-model names (``SST2``, SuperGLUE ``RTE``).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from mezo_engine.tasks import DataError, Sample

SPLITS = ("train", "dev", "test")
SENTIMENT = "*cls**sent_0*_It_was*mask*.*sep+*"
THIS_IS = "*cls**sent_0*_This_is*mask*.*sep+*"
NLI = "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"
PAIR = "*cls**sent_0**mask*,*+sentl_1**sep+*"


@dataclass(frozen=True)
class Layout:
    """Where a split's rows are and which columns hold what (0-based; -1: the last column)."""

    text_columns: tuple[int, ...]
    label_column: int
    header: bool = True
    csv: bool = False  # comma-separated with quoting, no header; else tab-separated without quoting
    files: dict[str, str] = field(default_factory=dict)  # split -> file name, when not <split>.tsv / .csv

    def file(self, split: str) -> str:
        return self.files.get(split, f"{split}.{'csv' if self.csv else 'tsv'}")


@dataclass(frozen=True)
class LmBffTask:
    """One task: its name, layout, labels (as the files write them, in LM-BFF's label order), prompt and limits.

    ``label_words[i]`` is the word for ``labels[i]``; ``metric`` is LM-BFF's dev objective (``accuracy``, ``f1``
    for MRPC and QQP, ``mcc`` for CoLA, ``pearson`` for STS-B); a classification task reports accuracy too.
    ``max_seq_length``, ``first_sent_limit`` and ``other_sent_limit`` are MeZO's per-task settings (in tokens).
    ``bounds``: a regression task's score range (its labels then name the two ends); ``double_demo``: the
    prompt's length limit doubles with demonstrations (MeZO's run_fewshot.sh gives it for sst-5)."""

    name: str
    layout: Layout
    labels: tuple[str, ...]
    label_words: tuple[str, ...]
    template: str
    metric: str = "accuracy"
    max_seq_length: int = 128
    first_sent_limit: int | None = None
    other_sent_limit: int | None = None
    bounds: tuple[float, float] | None = None
    double_demo: bool = False

    @property
    def regression(self) -> bool:
        return self.bounds is not None

    def demo_label(self, gold) -> int:
        """The label group of a gold answer for sampling demonstrations: the label itself, or for a regression
        the low (0) or high (1) end, split at the middle of the bounds (LM-BFF's median, 2.5 for STS-B)."""
        if not self.regression:
            return gold
        return int(gold > sum(self.bounds) / 2)

    def split_dir(self, data_dir: str | Path, k: int, seed: int) -> Path:
        """``<data_dir>/<TASK>/<K>-<seed>``; a missing folder is reported with what was expected there."""
        path = Path(data_dir) / self.name / f"{k}-{seed}"
        if not path.is_dir():
            raise FileNotFoundError(
                f"no folder {path} for task {self.name}, K={k}, seed {seed} (set --data_dir / DATA_DIR to the folder "
                f"holding <TASK>/<K>-<seed>/, LM-BFF's k-shot layout, e.g. ../shared/data/LM-BFF/k-shot-1k-test)")
        return path

    def load(self, folder: str | Path, split: str) -> list[Sample]:
        """Every example of ``split`` in ``folder`` as a ``Sample`` (``data["texts"]``: its sentences; the gold
        candidate is the label's index in ``labels``)."""
        path = Path(folder) / self.layout.file(split)
        if not path.is_file():
            raise FileNotFoundError(f"no file {path} for task {self.name} split {split}")
        rows = read_rows(path, self.layout)
        if not rows:
            raise DataError(f"{path}: no examples (the file is empty or holds only a header)")
        return [self._sample(path, number, row) for number, row in rows]

    def _sample(self, path: Path, number: int, row: list[str]) -> Sample:
        width = max(max(self.layout.text_columns), self.layout.label_column) + 1
        if len(row) < width:
            raise DataError(f"{path}, line {number}: {len(row)} field(s), expected at least {width} for task "
                            f"{self.name}")
        label = row[self.layout.label_column].strip()
        texts = [row[c] for c in self.layout.text_columns]
        return Sample(id=number, data={"texts": texts}, correct_candidate=self._gold(path, number, label),
                      candidates=list(range(len(self.labels))))

    def _gold(self, path: Path, number: int, label: str):
        """The gold answer of a row: the label's index, or a regression's score (a number within the bounds)."""
        if not self.regression:
            if label not in self.labels:
                raise DataError(f"{path}, line {number}: label {label!r} is not one of {', '.join(self.labels)}")
            return self.labels.index(label)
        low, high = self.bounds
        try:
            score = float(label)
        except ValueError:
            score = None
        if score is None or not low <= score <= high:
            raise DataError(f"{path}, line {number}: score {label!r} is not a number from {low:g} to {high:g}")
        return score


def read_rows(path: Path, layout: Layout) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every data row of ``path``: CSV with quoting, or TSV split on tabs only (as GLUE's
    readers do); the header, if any, left out; a BOM is ignored; blank lines skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte offset {err.start}); re-save the file as UTF-8") from None
    reader = csv.reader(text.splitlines(keepends=True)) if layout.csv else \
        csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = []
    for row in reader:
        if row and any(f.strip() for f in row):
            rows.append((reader.line_num, row))
    return rows[1:] if layout.header else rows


def _csv_task(name: str, words: tuple[str, ...], template: str = SENTIMENT, **limits) -> LmBffTask:
    """A sentence task of LM-BFF's CSV files (label, sentence): labels 0..n-1."""
    return LmBffTask(name, Layout((1,), 0, header=False, csv=True), tuple(str(i) for i in range(len(words))), words,
                     template, **limits)


NLI_WORDS = ("No", "Yes", "Maybe")  # contradiction, entailment, neutral
TASKS: dict[str, LmBffTask] = {t.name: t for t in (
    LmBffTask("SST-2", Layout((0,), 1), ("0", "1"), ("terrible", "great"), SENTIMENT),
    _csv_task("sst-5", ("terrible", "bad", "okay", "good", "great"), first_sent_limit=110, other_sent_limit=20,
              double_demo=True),
    _csv_task("mr", ("terrible", "great"), first_sent_limit=110, other_sent_limit=50),
    _csv_task("cr", ("terrible", "great"), first_sent_limit=110, other_sent_limit=50),
    _csv_task("mpqa", ("terrible", "great"), first_sent_limit=110),
    _csv_task("subj", ("subjective", "objective"), THIS_IS, first_sent_limit=110, other_sent_limit=50),
    _csv_task("trec", ("Description", "Entity", "Expression", "Human", "Location", "Number"), "*cls**mask*:*+sent_0**sep+*",
              first_sent_limit=110),
    LmBffTask("CoLA", Layout((3,), 1, header=False), ("0", "1"), ("incorrect", "correct"), THIS_IS, metric="mcc"),
    LmBffTask("MNLI", Layout((8, 9), -1, files={"dev": "dev_matched.tsv", "test": "test_matched.tsv"}),
              ("contradiction", "entailment", "neutral"), NLI_WORDS, NLI, max_seq_length=256, first_sent_limit=240),
    LmBffTask("SNLI", Layout((7, 8), -1), ("contradiction", "entailment", "neutral"), NLI_WORDS, NLI,
              max_seq_length=256),
    LmBffTask("QNLI", Layout((1, 2), -1), ("entailment", "not_entailment"), ("Yes", "No"), NLI),
    LmBffTask("QQP", Layout((3, 4), 5), ("0", "1"), ("No", "Yes"), PAIR, metric="f1"),
    LmBffTask("MRPC", Layout((3, 4), 0), ("0", "1"), ("No", "Yes"), PAIR, metric="f1"),
    LmBffTask("RTE", Layout((1, 2), -1), ("entailment", "not_entailment"), ("Yes", "No"), NLI, max_seq_length=256,
              first_sent_limit=240),
    LmBffTask("STS-B", Layout((7, 8), -1), ("0", "1"), ("No", "Yes"), PAIR, metric="pearson", bounds=(0.0, 5.0)),
)}


def get_task(name: str) -> LmBffTask:
    """The task called ``name`` (LM-BFF's spelling; a large-model name such as SST2 is pointed to its LM-BFF twin)."""
    if name in TASKS:
        return TASKS[name]
    near = next((t for t in TASKS if t.lower().replace("-", "") == name.lower().replace("-", "")), None)
    hint = f" (LM-BFF's name is {near!r})" if near else ""
    raise ValueError(f"task {name!r} unknown{hint}; known: {', '.join(TASKS)}")
