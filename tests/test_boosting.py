"""XGBLoRA's schedule inside real training runs (zo and regular) on tiny models."""
import pytest
import torch
from transformers import HfArgumentParser

from large_models import run
from mezo_engine import lora, runner
from large_models.arguments import Arguments
from mezo_engine.methods.lora import merge_due
from mezo_engine.methods.xgblora import epoch_merge_due, jagged_factor, num_merges
from large_models.tasks import Sample, get_task
from tests.tiny import make_model, make_tokenizer

TEXTS = ["a gripping , funny film", "dull and lifeless", "the best movie of the year", "a mess", "warm and wise",
         "boring", "a joy to watch", "painfully slow"]
SAMPLES = [Sample(i, {"sentence": t, "label": (i + 1) % 2}, (i + 1) % 2, [0, 1]) for i, t in enumerate(TEXTS)]


def _args(tmp_path, *flags) -> Arguments:
    base = ["--task_name", "SST2", "--output_dir", str(tmp_path), "--per_device_train_batch_size", "4",
            "--num_train", "8",
            "--train_as_classification", "--learning_rate", "1e-2", "--logging_steps", "1", "--seed", "3",
            "--disable_tqdm", "True", "--lr_scheduler_type", "constant"]
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(args=base + list(flags))
    return args


def _trainer(tmp_path, kind, *flags, layers=2):
    args = _args(tmp_path, *flags)
    torch.manual_seed(args.seed)
    model = make_model(kind, layers=layers)
    return run.build_trainer(args, get_task("SST2"), model, make_tokenizer(), SAMPLES, [])


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _boosting(trainer):
    return next(cb for cb in trainer.callback_handler.callbacks if hasattr(cb, "boost"))


# ---- pure schedule ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_steps, kappa", [(10, 3), (9, 3), (5, 1), (4, 5), (4, 4), (100, 7)])
def test_merge_count_is_floor_of_max_steps_over_kappa(max_steps, kappa):
    due = [s for s in range(1, max_steps + 1) if merge_due(s, kappa)]
    assert len(due) == num_merges(max_steps, kappa) == max_steps // kappa
    assert not merge_due(0, kappa)


def test_epoch_schedule_and_jagged_lr():
    assert [e for e in range(1, 7) if epoch_merge_due(e, 2)] == [2, 4, 6]
    assert [jagged_factor(s, 4, 2) for s in range(10)] == [1, 1, 1, 1, 0.5, 1, 1, 1, 0.5, 1]
    assert jagged_factor(5, 4, 0) == 1.0


# ---- inside training ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("trainer_kind", ["zo", "regular"])
@pytest.mark.parametrize("max_steps, kappa", [(4, 1), (5, 2), (3, 3)])
def test_training_merges_floor_max_steps_over_kappa_times(tmp_path, trainer_kind, max_steps, kappa):
    trainer = _trainer(tmp_path, "opt", "--trainer", trainer_kind, "--xgblora", "--max_steps", str(max_steps),
                       "--xgblora_steps_per_iteration", str(kappa))
    trainer.train()
    history = _boosting(trainer).history
    assert [h["step"] for h in history] == list(range(kappa, max_steps + 1, kappa))
    assert all(h["modules"] == 4 for h in history)  # q_proj and v_proj of 2 blocks
    assert all(h["delta_norm"] > 0 for h in history)


def test_epoch_based_schedule_merges_every_frequency_epochs(tmp_path):
    # 8 samples, batch 4 -> 2 steps per epoch; 4 epochs with a merge every 2 epochs -> merges after steps 4 and 8.
    trainer = _trainer(tmp_path, "llama", "--trainer", "zo", "--xgblora", "--num_train_epochs", "4",
                       "--xgblora_steps_per_iteration", "0", "--xgblora_merge_frequency", "2")
    trainer.train()
    assert [h["step"] for h in _boosting(trainer).history] == [4, 8]


@pytest.mark.parametrize("trainer_kind", ["zo", "regular"])
@pytest.mark.parametrize("kind", ["opt", "gpt2"])
def test_kappa_at_least_max_steps_equals_plain_lora_step_for_step(tmp_path, trainer_kind, kind):
    steps = ["--trainer", trainer_kind, "--max_steps", "4"]
    plain = _trainer(tmp_path, kind, *steps, "--lora", "--lora_r", "1")
    plain.train()
    for kappa in ("4", "9"):
        boosted = _trainer(tmp_path, kind, *steps, "--xgblora", "--xgblora_steps_per_iteration", kappa)
        boosted.train()
        assert _losses(boosted) == _losses(plain) and len(_losses(plain)) == 4
        assert len(_boosting(boosted).history) == (1 if kappa == "4" else 0)
    assert len(set(_losses(plain))) > 1  # training did something


@pytest.mark.parametrize("trainer_kind", ["zo", "regular"])
def test_with_ls_below_all_only_the_chosen_blocks_change(tmp_path, trainer_kind):
    trainer = _trainer(tmp_path, "llama", "--trainer", trainer_kind, "--xgblora", "--max_steps", "3",
                       "--xgblora_steps_per_iteration", "5", "--xgblora_num_layers", "1", layers=3)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    chosen = {lora.layer_index(n) for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert len(chosen) == 1
    one_block = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" in n) // 3
    assert runner.train_summary(trainer, {})["trainable_parameters"] == one_block  # the result counts what trains
    for name, p in trainer.model.named_parameters():
        changed = not torch.equal(p, before[name])
        if "lora_" in name and lora.layer_index(name) in chosen:
            assert changed or "lora_A" in name and trainer_kind == "regular", name
        else:
            assert not changed, name
        if "lora_B" in name and lora.layer_index(name) not in chosen:
            assert torch.count_nonzero(p) == 0


def test_optimizer_state_of_reinitialised_boosters_is_zero_after_a_merge(tmp_path):
    trainer = _trainer(tmp_path, "opt", "--trainer", "regular", "--xgblora", "--max_steps", "2",
                       "--xgblora_steps_per_iteration", "2")
    trainer.train()
    params = [p for n, p in trainer.model.named_parameters() if "lora_" in n]
    states = [trainer.optimizer.state[p] for p in params]
    assert all(states) and all(torch.count_nonzero(v) == 0 for s in states for v in s.values() if torch.is_tensor(v))


def test_restart_warmup_lowers_the_lr_right_after_each_merge(tmp_path):
    trainer = _trainer(tmp_path, "opt", "--trainer", "regular", "--xgblora", "--max_steps", "6",
                       "--xgblora_steps_per_iteration", "2", "--xgblora_restart_warmup_steps", "2")
    trainer.train()
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs == pytest.approx([1e-2, 1e-2, 5e-3, 1e-2, 5e-3, 1e-2])


@pytest.mark.parametrize("num_layers", ["0", "1"])
def test_lora_ga_boosters_keep_the_function_and_start_on_the_gradient(tmp_path, num_layers):
    trainer = _trainer(tmp_path, "llama", "--trainer", "regular", "--xgblora", "--max_steps", "2",
                       "--xgblora_steps_per_iteration", "2", "--lora_init", "lora_ga", "--lora_ga_batches", "1",
                       "--xgblora_num_layers", num_layers)
    trainer.train()
    model, boosting = trainer.model, _boosting(trainer)
    ids = torch.tensor([[5, 60, 61, 62, 70, 80]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        boosting.boost(model, trainer.optimizer, step=99)
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    for name, layer in lora.lora_layers(model):
        b = layer.lora_B["default"].weight
        active = b.requires_grad
        assert (torch.count_nonzero(b) > 0) == active, name  # LoRA-GA boosters start non-zero; frozen ones are zero


def test_ls_larger_than_the_number_of_blocks_is_refused(tmp_path):
    from large_models.arguments import ArgumentError
    with pytest.raises(ArgumentError, match="--xgblora_num_layers 5: larger than the 2 blocks"):
        _trainer(tmp_path, "opt", "--trainer", "zo", "--xgblora", "--xgblora_num_layers", "5")


def test_unknown_target_module_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--lora_target_modules: 'q_prj'"):
        _trainer(tmp_path, "opt", "--trainer", "zo", "--lora", "--lora_target_modules", "q_prj")
