"""Divergence without NaN (issue 27, section 4): the pure check on logged numbers, the committed study runs it must
leave alone, the issue's three blow-ups on a tiny model, and the one-class warning at evaluation."""
import json
import logging
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import HfArgumentParser

from large_models import run
from large_models.arguments import Arguments
from mezo_engine.arguments import ArgumentError
from mezo_engine.divergence import Limits, Watch, replay
from mezo_engine.errors import DivergenceError
from mezo_engine.metrics import warn_if_one_class
from mezo_engine.trainer import DivergenceCallback

REPO = Path(__file__).resolve().parent.parent


def _history(losses, grad_norms=None, projected=None, every=1):
    """A log_history: one entry per ``every`` steps with the given loss (and grad_norm / projected max)."""
    history = []
    for i, loss in enumerate(losses):
        entry = {"loss": loss, "step": (i + 1) * every}
        if grad_norms:
            entry["grad_norm"] = grad_norms[i]
        if projected:
            entry["projected_grad_abs_max"] = projected[i]
        history.append(entry)
    return history


def test_a_loss_far_above_the_first_logged_one_diverges():
    step, reason = replay(_history([0.7, 0.6, 1.8e11, 0.5]), Limits())
    assert step == 3 and "--diverge_loss_ratio" in reason and "--learning_rate" in reason
    assert replay(_history([0.7, 0.6, 6.9, 0.5]), Limits()) is None  # below 10 x 0.7
    assert replay(_history([0.7, 1.8e11]), Limits(loss_ratio=0)) is None  # 0: off


def test_the_base_is_the_first_logged_loss_not_a_later_low():
    """A running minimum would trip on a healthy run that went low once; the first logged loss does not."""
    assert replay(_history([1.0, 0.01, 0.5]), Limits()) is None
    assert replay(_history([-0.5, 1e9]), Limits()) is None  # a non-positive first loss (minus F1): no base


def test_zero_projected_gradients_count_steps_across_logging_intervals():
    limits = Limits(zero_steps=20)
    assert replay(_history([0.7] * 4, projected=[0.3, 0.0, 0.0, 0.0], every=10), limits)[0] == 30
    assert replay(_history([0.7] * 25, projected=[0.0] * 19 + [0.1] + [0.0] * 5), limits) is None
    assert replay(_history([0.7] * 40, projected=[0.0] * 40), Limits(zero_steps=0)) is None


def test_a_grad_norm_far_above_the_first_positive_one_diverges():
    step, reason = replay(_history([0.69] * 3, grad_norms=[0.05, 0.16, 9299.0]), Limits())
    assert step == 3 and "--diverge_grad_norm_ratio" in reason
    assert replay(_history([0.69] * 3, grad_norms=[0.0, 0.0, 5.0]), Limits()) is None  # zo logs 0: no base
    assert replay(_history([0.69] * 2, grad_norms=[0.05, 40.0]), Limits()) is None


def test_evaluations_and_the_final_summary_are_not_losses():
    watch = Watch(Limits())
    assert watch.observe({"loss": 0.7}, 1) is None
    assert watch.observe({"eval_accuracy": 1e9}, 2) is None and watch.observe({"train_loss": 1e9}, 2) is None


def _study_histories():
    names = subprocess.run(["git", "ls-files", "docs/study/*/*.json"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in names:
        history = (json.loads((REPO / name).read_text()).get("train") or {}).get("log_history")
        if history:
            yield name, history


def test_no_committed_study_run_would_have_been_stopped():
    histories = dict(_study_histories())
    assert len(histories) >= 30  # the regular and zo runs of docs/study
    tripped = {name: replay(history, Limits()) for name, history in histories.items()}
    assert {name: hit for name, hit in tripped.items() if hit} == {}


@pytest.mark.parametrize("flag", ["diverge_loss_ratio", "diverge_zero_grad_steps", "diverge_grad_norm_ratio"])
def test_a_negative_threshold_is_refused_by_name(flag):
    with pytest.raises(ArgumentError, match=f"--{flag} -1.*must be >= 0"):
        HfArgumentParser(Arguments).parse_args_into_dataclasses(args=[f"--{flag}=-1"])


def _run(tmp_path, model_dir, data_dir, *flags):
    out = tmp_path / "result.json"
    argv = ["--model_name", str(model_dir), "--task_name", "SST2", "--data_dir", str(data_dir), "--result_file",
            str(out), "--output_dir", str(tmp_path / "o"), "--disable_tqdm", "True", "--num_train", "8",
            "--train_set_seed", "0", "--num_eval", "4", "--max_steps", "30", "--per_device_train_batch_size", "4",
            "--train_as_classification", "--logging_steps", "1", "--report_to", "none", *flags]
    try:
        run.main(argv)
        message = None
    except SystemExit as stop:
        message = str(stop.code)
    return message, json.loads(out.read_text())


@pytest.mark.parametrize("flags, cause", [
    (("--trainer", "zo", "--learning_rate", "1e6"), "--diverge_loss_ratio"),  # 0.69 -> 3e10 at step 2
    (("--trainer", "zo", "--lora", "--zo_optimizer", "adam", "--learning_rate", "1e6"), "--diverge_zero_grad_steps"),
    (("--trainer", "regular", "--lora", "--learning_rate", "1e6"), "--diverge_grad_norm_ratio"),  # 0.05 -> 9e3
])
def test_a_finite_blow_up_stops_as_diverged(tmp_path, tiny_opt_dir, sst2_dir, flags, cause):
    message, result = _run(tmp_path, tiny_opt_dir, sst2_dir, *flags)
    step = result["status"].removeprefix("diverged at step ")
    assert step.isdigit() and message.startswith(f"run.py: error: diverged at step {step}: ") and cause in message
    assert "eval" not in result and result["train"]["error"] in message
    # the loss stayed finite: no NaN check could have stopped it
    assert all(h["loss"] < 1e30 for h in result["train"]["log_history"] if "loss" in h)


@pytest.mark.parametrize("flags", [("--trainer", "zo", "--learning_rate", "1e-3"),
                                   ("--trainer", "regular", "--lora", "--learning_rate", "1e-3")])
def test_a_normal_run_is_not_stopped(tmp_path, tiny_opt_dir, sst2_dir, flags):
    message, result = _run(tmp_path, tiny_opt_dir, sst2_dir, *flags)
    assert message is None and result["status"] == "completed" and result["train"]["global_step"] == 30


def test_one_class_predictions_warn_with_the_class_and_count(caplog):
    with caplog.at_level(logging.WARNING, logger="mezo_engine.metrics"):
        warn_if_one_class([1, 1, 1])
        warn_if_one_class([0, 1, 1])
        warn_if_one_class([0])
    assert [r.getMessage()[:40] for r in caplog.records] == ["every prediction is class 1 (3 of 3): th"]


def test_a_resumed_run_keeps_the_first_runs_base_loss():
    """The callback replays the restored log_history: 8.0 is 11 x the first run's 0.7, not the resumed run's first."""
    callback = DivergenceCallback(Limits())
    state = SimpleNamespace(log_history=[{"loss": 0.7, "step": 1}, {"eval_accuracy": 0.5, "step": 1}],
                            global_step=2)
    callback.on_train_begin(None, state, None)
    with pytest.raises(DivergenceError, match="diverged at step 2: loss 8 above 10 x the first logged loss 0.7"):
        callback.on_log(None, state, None, logs={"loss": 8.0})
