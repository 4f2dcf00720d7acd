"""``python scripts/eval_scores.py RESULT.json [...] [--data-dir DIR]``: add to large_models results that lack them
the per-example scores of their test predictions (``eval_scores``: 1/0 for accuracy, EM or F1 for generation),
which paired tests between runs read (``scripts/sweeps/stats.py``); results written before run.py recorded them
(the first race's code) have only ``eval_predictions``.

Each result's evaluation examples are drawn again from its configuration as run.py drew them (task, data, train
and dev sizes, train set seed; ``large_models.run.eval_samples_of``) and paired, in order, with its predictions.
A result that has scores already is checked against them instead: a mismatch is an error, as are a number of
predictions other than the examples drawn and scores whose mean is not the result's metric. Only the task's data is read, no model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from large_models.custom_task import task_for
from large_models.run import eval_samples_of
from mezo_engine.metrics import Prediction, example_scores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="large_models result JSONs (with eval_predictions)")
    p.add_argument("--data-dir", default=None,
                   help="the task data (default: each result's own --data_dir, relative to where this runs)")
    return p.parse_args(argv)


def scores_of(result: dict, data_dir: str | None) -> tuple[list[float], str]:
    """The per-example scores of ``result``'s test predictions against the gold answers of its examples, and the
    task's metric."""
    config = result["config"]
    task = task_for(config["task_name"], config.get("task_file"))
    data = data_dir or config.get("data_dir")
    valid = task.load("validation", data)
    train = (valid if config.get("train_from_validation") else task.load("train", data)) if config["num_train"] else []
    seed = None if result.get("demonstrations") == "one set per eval example" else result["train_set_seed"]
    samples = eval_samples_of(task, valid, train, config["num_train"], config.get("num_dev"), config.get("num_eval"),
                              seed, bool(config.get("train_from_validation")))
    predicted = result["eval_predictions"]
    if len(predicted) != len(samples):
        raise ValueError(f"{len(predicted)} predictions, but the configuration draws {len(samples)} examples")
    pairs = [Prediction(s.correct_candidate, p) for s, p in zip(samples, predicted)]
    return example_scores(pairs, task.metric), task.metric


def check_mean(result: dict, scores: list[float], metric: str) -> None:
    """The scores' mean must be the result's recorded metric (else the examples drawn are not the run's)."""
    recorded = result["eval"][metric]
    if abs(sum(scores) / len(scores) - recorded) > 1e-9:
        raise ValueError(f"the scores' mean {sum(scores) / len(scores)} is not the recorded {metric} {recorded}: "
                         f"the examples drawn are not the run's")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failed = 0
    for path in map(Path, args.results):
        result = json.loads(path.read_text())
        try:
            scores, metric = scores_of(result, args.data_dir)
            if "eval_scores" in result:
                same = result["eval_scores"] == scores
                print(f"{path}: has eval_scores; {'they agree' if same else 'THEY DIFFER'} with the predictions")
                failed += not same
                continue
            check_mean(result, scores, metric)
        except (KeyError, ValueError, FileNotFoundError) as err:
            print(f"{path}: {type(err).__name__}: {err}", file=sys.stderr)
            failed += 1
            continue
        result["eval_scores"] = scores
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{path}: eval_scores added ({len(scores)} examples, mean {sum(scores) / len(scores):.4f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
