"""Build this example task from SST-2's train split (GLUE TSV): 1,000 train, 200 dev and 500 test reviews drawn
without overlap under seed 0, written as JSONL with field names of their own (``review``, ``sentiment``).

    python examples/moviesent/make.py ../shared/data/SST-2/train.tsv
"""
import csv
import json
import random
import sys
from pathlib import Path

SIZES = {"train": 1000, "dev": 200, "test": 500}


def main(source: str) -> None:
    with open(source, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r["sentence"].split()) >= 5]
    random.Random(0).shuffle(rows)
    start, here = 0, Path(__file__).parent
    for split, size in SIZES.items():
        with open(here / f"{split}.jsonl", "w", encoding="utf-8") as out:
            for r in rows[start:start + size]:
                label = "positive" if r["label"] == "1" else "negative"
                out.write(json.dumps({"review": r["sentence"].strip(), "sentiment": label}) + "\n")
        start += size


if __name__ == "__main__":
    main(sys.argv[1])
