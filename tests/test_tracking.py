"""``--report_to tensorboard``: the ZO series reach the tracker (read back from TensorBoard's event files)."""
from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from large_models import run


@pytest.fixture(scope="module")
def events(tmp_path_factory, tiny_opt_dir, sst2_dir):
    """A 6-step ZO-XGBLoRA run (merges after steps 2, 4, 6; dev every 3 steps) reported to TensorBoard."""
    tmp = tmp_path_factory.mktemp("tb")
    run.main(["--model_name", str(tiny_opt_dir), "--task_name", "SST2", "--data_dir", str(sst2_dir), "--result_file",
              str(tmp / "r.json"), "--output_dir", str(tmp / "out"), "--disable_tqdm", "True", "--num_train", "8",
              "--num_dev", "4", "--train_set_seed", "0", "--num_eval", "4", "--max_steps", "6",
              "--per_device_train_batch_size", "4", "--train_as_classification", "--trainer", "zo", "--xgblora",
              "--xgblora_steps_per_iteration", "2", "--logging_steps", "1", "--eval_strategy", "steps",
              "--eval_steps", "3", "--report_to", "tensorboard"])
    (path,) = (tmp / "out").glob("runs/*/events.out.tfevents.*")
    acc = EventAccumulator(str(path))
    acc.Reload()
    return acc, json.loads((tmp / "r.json").read_text())


def series(acc, tag) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_the_zo_series_reach_tensorboard(events):
    acc, _ = events
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/projected_grad_abs_mean", "train/projected_grad_abs_max", "train/forwards",
            "train/train_cpu_s", "train/steps_per_s", "train/merges", "train/merge_delta_norm",
            "eval/accuracy"} <= tags


def test_their_values_are_the_runs(events):
    acc, result = events
    forwards = series(acc, "train/forwards")
    assert all(forwards[step] == 2 * step for step in range(1, 7))  # ZO-SGD: two forwards a step
    merges = series(acc, "train/merges")
    assert [merges[s] for s in (2, 3, 4, 6)] == [1, 1, 2, 3]  # the count after each merge (steps 2, 4, 6)
    norms = series(acc, "train/merge_delta_norm")  # TensorBoard stores float32
    history = result["train"]["boosting"]["merges"]
    assert [norms[h["step"]] for h in history] == pytest.approx([h["delta_norm"] for h in history], rel=1e-6)
    assert series(acc, "eval/accuracy")[3] in {0.0, 0.25, 0.5, 0.75, 1.0}  # of 4 dev examples
    assert all(v > 0 for v in series(acc, "train/steps_per_s").values())
