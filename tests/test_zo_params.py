"""mezo_engine.zo_params: the parameters a zo step perturbs, their weight decay and the cache choice are the
trainer's own, for every mode run.py builds (XGBLoRA with boosters frozen for the iteration included)."""
import pytest
import torch

from large_models import run
from large_models.tasks import Sample, get_task
from mezo_engine import lora, zo
from mezo_engine.trainer import zo_optimizer
from mezo_engine.zo_params import caches, decay_parameter_names, zo_named_parameters, zo_params
from tests.tiny import make_model, make_tokenizer

SAMPLES = [Sample(i, {"sentence": t}, i % 2, [0, 1]) for i, t in enumerate(["a joy", "dull", "great fun", "a mess"])]


def _trainer(tmp_path, *flags):
    """A zo trainer as run.py builds it on a tiny OPT, weight decay on, its ZO optimizer made."""
    args = run.parse_args(["--task_name", "SST2", "--output_dir", str(tmp_path), "--trainer", "zo", "--num_train",
                           "4", "--train_as_classification", "--weight_decay", "0.1", "--report_to", "none",
                           "--use_cpu", "True", *flags])
    torch.manual_seed(0)
    trainer = run.build_trainer(args, get_task("SST2"), make_model("opt"), make_tokenizer(), SAMPLES, [])
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    return trainer


@pytest.mark.parametrize("flags", [(), ("--lora",), ("--xgblora",), ("--prefix_tuning",), ("--head_tuning",)])
def test_zo_params_are_what_the_trainers_optimizer_perturbs(tmp_path, monkeypatch, flags):
    trainer = _trainer(tmp_path, *flags)
    model, optimizer = trainer.model, zo_optimizer(trainer.optimizer)
    zp = zo_params(model, trainer.mode)
    assert [id(p) for p in zp.params] == [id(p) for p in optimizer.zo_params()]
    assert zp.decay == [wd > 0 for _, wd in optimizer.rates()]
    names = dict(model.named_parameters())
    assert all(names[n] is p for n, p in zip(zp.names, zp.params))
    assert zp.cache == _cache_of_a_trainer_step(trainer, monkeypatch)


def _cache_of_a_trainer_step(trainer, monkeypatch) -> bool:
    """The ``cache`` the trainer's zo step passes to the fused ZO-SGD step, seen by wrapping it."""
    seen, fused = [], zo.fused_sgd_step

    def recording(params, loss_fn, seed, eps, rates, cache=False, *rest):  # rest: the direction sampler
        seen.append(cache)
        return fused(params, loss_fn, seed, eps, rates, cache, *rest)
    monkeypatch.setattr(zo, "fused_sgd_step", recording)
    trainer.training_step(trainer.model, next(iter(trainer.get_train_dataloader())))
    assert len(seen) == 1
    return seen[0]


def test_frozen_boosters_are_held_but_not_perturbed(tmp_path):
    """XGBLoRA with one block drawn per iteration: the optimizer holds every booster (a later iteration trains
    them), the step perturbs only the drawn block's."""
    trainer = _trainer(tmp_path, "--xgblora", "--xgblora_num_layers", "1")
    model, optimizer = trainer.model, zo_optimizer(trainer.optimizer)
    lora.set_active_blocks(model, [1])
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert [id(p) for _, p in zo_named_parameters(model, trainer.mode)] == [id(p) for p in held]
    active = zo_params(model, trainer.mode)
    assert [id(p) for p in active.params] == [id(p) for p in optimizer.zo_params()]
    assert 0 < len(active.params) < len(held) and all(".layers.1." in n for n in active.names)


def test_decay_names_and_cache_rule(tmp_path):
    trainer = _trainer(tmp_path)
    model = trainer.model
    assert decay_parameter_names(model) == set(trainer.get_decay_parameter_names(model))
    params = list(model.parameters())
    assert not caches(params, model) and caches(params[:1], model) == (params[0].numel() <= 0.1 * sum(
        p.numel() for p in params))
