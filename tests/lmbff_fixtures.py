"""Small LM-BFF k-shot folders in each task's own file format, written by the tests (never ../shared)."""
from __future__ import annotations

import csv
from pathlib import Path

# Per task: (header or None, a function from (sentences, label) to the row's fields). The layouts are those of
# LM-BFF's files (GLUE TSV, the sentence tasks' CSV); the filler columns hold what the real files hold there.
ROWS = {
    "SST-2": (["sentence", "label"], lambda s, y: [s[0], y]),
    "CoLA": (None, lambda s, y: ["src", y, "", s[0]]),
    "MNLI": (["index", "promptID", "pairID", "genre", "s1_bin", "s2_bin", "s1_parse", "s2_parse", "sentence1",
              "sentence2", "label1", "gold_label"], lambda s, y: ["7", "1", "1e", "fiction", "(", "(", "(", "(",
                                                                  s[0], s[1], y, y]),
    "SNLI": (["index", "captionID", "pairID", "s1_bin", "s2_bin", "s1_parse", "s2_parse", "sentence1", "sentence2",
              "label1", "gold_label"], lambda s, y: ["7", "c", "p", "(", "(", "(", "(", s[0], s[1], y, y]),
    "QNLI": (["index", "question", "sentence", "label"], lambda s, y: ["7", s[0], s[1], y]),
    "RTE": (["index", "sentence1", "sentence2", "label"], lambda s, y: ["7", s[0], s[1], y]),
    "QQP": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], lambda s, y: ["7", "1", "2", s[0], s[1], y]),
    "MRPC": (["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"], lambda s, y: [y, "1", "2", s[0], s[1]]),
    "STS-B": (["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
               "score"], lambda s, y: ["7", "main-news", "headlines", "2013", "0352", "none", "none", s[0], s[1], y]),
}
CSV_TASKS = ("sst-5", "mr", "cr", "mpqa", "subj", "trec")
WORDS = ["a great film , really", "it is terrible , sadly", "the plot , well", "Does it? Yes"]


def examples(task, n_per_label: int) -> list[tuple[list[str], str]]:
    """``n_per_label`` examples of every label: (sentences, label as the files write it). A regression's labels
    are scores, ``n_per_label`` at each end of its bounds (1.0, 1.2, ... and 4.0, 4.2, ... for STS-B)."""
    width = len(task.layout.text_columns)
    return [([f"{WORDS[(i + j) % len(WORDS)]} {i}"] + [f"second {j} of {i}"] * (width - 1), score(task, i, j))
            for i in range(len(task.labels)) for j in range(n_per_label)]


def score(task, i: int, j: int) -> str:
    """The label of the ``j``-th example of label ``i``: the label itself, or a regression's score at that end."""
    if not task.regression:
        return task.labels[i]
    low, high = task.bounds
    return f"{low + (high - low) * (0.2 + 0.6 * i) + 0.2 * j:.3f}"


def write_split(task, path: Path, rows: list[tuple[list[str], str]]) -> None:
    """One split's file in ``task``'s format."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        if task.name in CSV_TASKS:
            writer = csv.writer(f)
            for sentences, label in rows:
                writer.writerow([label, sentences[0]])
            return
        header, row = ROWS[task.name]
        lines = ([header] if header else []) + [row(s, y) for s, y in rows]
        f.write("".join("\t".join(line) + "\n" for line in lines))


def write_kshot(task, root: Path, k: int = 2, seed: int = 42, test_per_label: int = 3) -> Path:
    """``<root>/<TASK>/<k>-<seed>/`` with train and dev (k per label) and test files; returns ``root``."""
    folder = Path(root) / task.name / f"{k}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", k), ("dev", k), ("test", test_per_label)):
        write_split(task, folder / task.layout.file(split), examples(task, n))
    return Path(root)
