"""Load every LM-BFF k-shot split medium_models runs (MeZO's 14 tasks and STS-B x K 16, 512 x seeds 13, 21, 42,
87, 100 x train, dev, test) from the real files and compare the examples read with the row counts of MANIFEST.tsv.

    python scripts/check_lmbff.py --data_dir ../shared/data/LM-BFF/k-shot-1k-test

A check, not a test (the test suite never reads ../shared). Prints one line per task and K (examples per split,
summed over the seeds, and the label counts of the train and dev splits; STS-B's scores counted by the half of
its range they fall in, 0 for at most 2.5, 1 above), then every mismatch; exits 1 if any.
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

from medium_models.tasks import TASKS

KS, SEEDS, SPLITS = (16, 512), (13, 21, 42, 87, 100), ("train", "dev", "test")


def manifest_rows(path: Path) -> dict[str, int]:
    """MANIFEST.tsv as {path under the LM-BFF folder: rows without the header}."""
    with open(path, encoding="utf-8") as f:
        return {row["path"]: int(row["rows(excl. header)"]) for row in csv.DictReader(f, delimiter="\t")}


def check(data_dir: Path, manifest: dict[str, int]) -> tuple[list[str], list[str]]:
    """(one summary line per task and K, the mismatches)."""
    lines, problems = [], []
    for task in TASKS.values():
        for k in KS:
            counts, labels = Counter(), {s: Counter() for s in ("train", "dev")}
            for seed in SEEDS:
                folder = task.split_dir(data_dir, k, seed)
                for split in SPLITS:
                    samples = task.load(folder, split)
                    counts[split] += len(samples)
                    labels.get(split, Counter()).update(task.labels[task.demo_label(s.correct_candidate)]
                                                        for s in samples)
                    key = f"{data_dir.name}/{task.name}/{k}-{seed}/{task.layout.file(split)}"
                    if manifest.get(key) != len(samples):
                        problems.append(f"{key}: read {len(samples)} examples, MANIFEST.tsv says {manifest.get(key)}")
            lines.append(f"{task.name:6} K={k:<4} train {counts['train']:6} dev {counts['dev']:6} test "
                         f"{counts['test']:6}  train labels {dict(sorted(labels['train'].items()))}  dev labels "
                         f"{dict(sorted(labels['dev'].items()))}")
    return lines, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", type=Path, required=True, help="the k-shot-1k-test folder")
    parser.add_argument("--manifest", type=Path, help="default: MANIFEST.tsv beside --data_dir")
    args = parser.parse_args(argv)
    manifest = manifest_rows(args.manifest or args.data_dir.parent / "MANIFEST.tsv")
    lines, problems = check(args.data_dir, manifest)
    print("\n".join(lines))
    files = len(TASKS) * len(KS) * len(SEEDS) * len(SPLITS)
    print(f"{files} files of {len(TASKS)} tasks x K {KS} x seeds {SEEDS} x {SPLITS}: "
          f"{files - len(problems)} match MANIFEST.tsv, {len(problems)} do not")
    print("\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
