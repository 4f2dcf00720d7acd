"""Upstream MeZO's medium-model ZO step rules in medium_models: weight decay on every parameter (its step is
``theta - lr * (g z + wd theta)`` for each), and ``--zero_order_sample n`` without a scheduler meaning one direction.

The decay test compares two one-step runs in float64 that differ only in ``--zo_weight_decay_all``: the same seed
gives the same z and the same projected gradient, so the parameters differ by exactly the extra decay,
``-lr * wd * theta``, on the biases and LayerNorm weights and nowhere else. float64 rounds each update to ~1e-16
of values of size ~1; 1e-12 leaves room for the few operations of the step and is far below lr * wd * theta
(1e-3 of the parameter).
"""
import warnings

import pytest
import torch

from medium_models import run
from medium_models.arguments import parse_args
from medium_models.tasks import TASKS
from tests.lmbff_fixtures import write_kshot
from tests.tiny import save_tiny_mlm

LR, WD, ATOL = 1e-2, 0.1, 1e-12


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return (save_tiny_mlm("roberta", tmp_path_factory.mktemp("tiny-roberta")),
            write_kshot(TASKS["SST-2"], tmp_path_factory.mktemp("kshot"), k=2, seed=42, test_per_label=1))


def trained(monkeypatch, dirs, out, *flags) -> tuple[dict, dict]:
    """Parameters before and after one zo step of medium_models/run.py (through a spy on ``runner.train``)."""
    seen, original = {}, run.runner.train

    def train(args, trainer, *rest):
        seen["before"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        result = original(args, trainer, *rest)
        seen["after"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        return result
    monkeypatch.setattr(run.runner, "train", train)
    model_dir, data_dir = dirs
    run.main(["--task_name", "SST-2", "--num_k", "2", "--seed", "42", "--data_dir", str(data_dir), "--model_name",
              str(model_dir), "--trainer", "zo", "--max_steps", "1", "--per_device_train_batch_size", "4",
              "--learning_rate", str(LR), "--weight_decay", str(WD), "--lr_scheduler_type", "constant",
              "--load_float64", "--disable_tqdm", "True", "--no_eval", "--result_file", str(out), *flags])
    return seen["before"], seen["after"]


def test_zo_weight_decay_reaches_biases_and_layer_norms_as_upstream(monkeypatch, dirs, tmp_path):
    before, every = trained(monkeypatch, dirs, tmp_path / "all.json")
    _, some = trained(monkeypatch, dirs, tmp_path / "some.json", "--zo_weight_decay_all", "False")
    undecayed = {n for n in before if n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n}
    assert len(undecayed) > 10 and "lm_head.bias" in undecayed
    assert sum(bool(before[n].any()) for n in undecayed) >= 5  # the LayerNorm weights (ones): the decay shows
    for name, theta in before.items():
        if name in undecayed:
            assert torch.allclose(every[name] - some[name], -LR * WD * theta, rtol=0, atol=ATOL), name
            assert torch.equal(every[name], some[name]) == (not theta.any()), name  # random init: biases 0
        else:
            assert torch.equal(every[name], some[name]), name


def test_zero_order_sample_without_a_scheduler_is_one_direction_as_upstream():
    with pytest.warns(UserWarning, match="--zero_order_sample 4 without --zero_order_sample_scheduler: one"):
        args = parse_args(["--trainer", "zo", "--zero_order_sample", "4"])
    assert args.zo_num_samples == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_args(["--trainer", "zo", "--zero_order_sample", "4", "--zero_order_sample_scheduler",
                           "constant"]).zo_num_samples == 4
        assert parse_args(["--trainer", "zo", "--zo_num_samples", "4"]).zo_num_samples == 4
