"""Raw-format task files for the end-to-end tests: SST-2 TSVs and SQuAD JSON in the layout of ../shared/data; and
a short zo run of large_models/run.py on the SST-2 files."""
from __future__ import annotations

import json
from pathlib import Path

POSITIVE = ["a gripping , funny film", "the best movie of the year", "warm and wise", "a joy to watch"]
NEGATIVE = ["dull and lifeless", "a mess from start to end", "boring", "painfully slow"]


def write_sst2(root: Path, positive=POSITIVE, negative=NEGATIVE) -> Path:
    """SST-2/train.tsv holds every sentence three times, SST-2/dev.tsv once (so dev sentences are train sentences)."""
    (root / "SST-2").mkdir()
    rows = [f"{t} \t1" for t in positive] + [f"{t} \t0" for t in negative]
    for name, copies in (("train.tsv", 3), ("dev.tsv", 1)):
        (root / "SST-2" / name).write_text("sentence\tlabel\n" + "\n".join(rows * copies) + "\n")
    return root


def write_squad(root: Path) -> Path:
    """Six questions on one paragraph, the same file as SQuAD's train and dev sets."""
    (root / "SQuAD").mkdir()
    qas = [{"id": str(i), "question": f"Who is number {i}?", "answers": [{"text": f"Ann {i}", "answer_start": 0}]}
           for i in range(6)]
    data = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Ann 0 to Ann 5 are here.",
                                                                      "qas": qas}]}]}
    for name in ("train-v1.1.json", "dev-v1.1.json"):
        (root / "SQuAD" / name).write_text(json.dumps(data))
    return root


def run_zo_sst2(tmp_path: Path, model_dir: Path, data_dir: Path, *flags: str) -> dict:
    """The result JSON of a two-step ``--trainer zo`` classification run on ``write_sst2``'s files (8 training
    examples in batches of 4, 4 evaluated), with ``flags`` added."""
    from large_models import run  # the app, imported only by the tests that run it

    out = tmp_path / "result.json"
    run.main(["--model_name", str(model_dir), "--task_name", "SST2", "--data_dir", str(data_dir), "--result_file",
              str(out), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True", "--num_train", "8",
              "--train_set_seed", "0", "--num_eval", "4", "--max_steps", "2", "--per_device_train_batch_size", "4",
              "--train_as_classification", "--trainer", "zo", "--report_to", "none", *flags])
    return json.loads(out.read_text())
