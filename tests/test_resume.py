"""Exact resume: k steps in one go == stop at a checkpoint at step j and resume, bit for bit, in every mode."""
import logging
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers import HfArgumentParser

from large_models import run
from mezo_engine import checkpoint, checkpoint_checks as checks, lora
from large_models.arguments import Arguments
from large_models.tasks import Sample, get_task
from tests.tiny import make_model, make_tokenizer

TEXTS = ["a gripping , funny film", "dull and lifeless", "the best movie of the year", "a mess", "warm and wise",
         "boring", "a joy to watch", "painfully slow", "fine", "awful"]
SAMPLES = [Sample(i, {"sentence": t, "label": (i + 1) % 2}, (i + 1) % 2, [0, 1]) for i, t in enumerate(TEXTS)]
STEPS, CUT = 7, 3  # 8 training samples in batches of 4: the cut falls inside the second epoch

MODES = {
    "zo-full": ["--trainer", "zo", "--learning_rate", "1e-3"],
    "zo-lora": ["--trainer", "zo", "--lora", "--lora_r", "2"],
    # merges at steps 2 (before the cut), 4 and 6 (after); one of two blocks trains per iteration; best dev kept
    "zo-xgblora": ["--trainer", "zo", "--xgblora", "--xgblora_steps_per_iteration", "2", "--xgblora_num_layers", "1",
                   "--eval_strategy", "steps", "--eval_steps", "2", "--load_best_model_at_end"],
    # momentum and Adam state travel in the Trainer's optimizer.pt; n-SPSA's directions follow the step count
    "zo-full-momentum": ["--trainer", "zo", "--learning_rate", "1e-3", "--zo_optimizer", "momentum"],
    "zo-xgblora-adam-nspsa": ["--trainer", "zo", "--xgblora", "--xgblora_steps_per_iteration", "2",
                              "--xgblora_num_layers", "1", "--zo_optimizer", "adam", "--zo_num_samples", "3",
                              "--zo_sample_scheduler", "linear"],
    # the low-rank methods' subspace seeds and step counts (LOZO-M: its factored momentum) travel in optimizer.pt;
    # V or U, V are redrawn every 2 steps, so the cut at 3 falls inside an interval
    "zo-full-lozo": ["--trainer", "zo", "--learning_rate", "1e-3", "--zo_optimizer", "lozo", "--lozo_interval", "2"],
    # (XGBLoRA's merges at 2, 4, 6 restart the boosters' counts: V redrawn every step, the momentum projected)
    "zo-xgblora-lozo_m": ["--trainer", "zo", "--xgblora", "--xgblora_steps_per_iteration", "2",
                          "--xgblora_num_layers", "1", "--zo_optimizer", "lozo_m", "--lozo_interval", "1"],
    "zo-lora-subzero-nspsa": ["--trainer", "zo", "--lora", "--lora_r", "2", "--zo_optimizer", "subzero",
                              "--subzero_rank", "2", "--subzero_interval", "2", "--zo_num_samples", "2"],
    # FZOO keeps no state: its query directions follow the step count; batched queries (adapters), in turn (full)
    "zo-xgblora-fzoo": ["--trainer", "zo", "--xgblora", "--xgblora_steps_per_iteration", "2",
                        "--xgblora_num_layers", "1", "--zo_optimizer", "fzoo", "--fzoo_num_queries", "3"],
    "zo-full-fzoo": ["--trainer", "zo", "--learning_rate", "1e-3", "--zo_optimizer", "fzoo", "--fzoo_num_queries", "3"],
    # HiZOO's Hessian (D - 1, zeroed at each merge) and Sparse MeZO's thresholds travel in optimizer.pt too
    "zo-full-hizoo": ["--trainer", "zo", "--learning_rate", "1e-3", "--zo_optimizer", "hizoo", "--hizoo_smooth", "0.5"],
    "zo-xgblora-hizoo": ["--trainer", "zo", "--xgblora", "--xgblora_steps_per_iteration", "2", "--xgblora_num_layers",
                         "1", "--zo_optimizer", "hizoo", "--hizoo_smooth", "0.5"],
    "zo-full-sparse_mezo-nspsa": ["--trainer", "zo", "--learning_rate", "1e-3", "--zo_optimizer", "sparse_mezo",
                                  "--zo_num_samples", "2"],
    # an int8 base on the CPU (--load_int8): the adapted layers' bases have no float weight (LoRA), or stay float
    # for XGBLoRA's merges beside int8 layers elsewhere
    "zo-lora-int8": ["--trainer", "zo", "--lora", "--lora_r", "2", "--load_int8"],
    "zo-xgblora-int8": ["--trainer", "zo", "--xgblora", "--xgblora_steps_per_iteration", "2", "--load_int8"],
    # upper-block LoRA, whose forwards share the block below (--zo_reuse_activations)
    "zo-lora-upper": ["--trainer", "zo", "--lora", "--lora_r", "2", "--lora_layers", "1-1"],
    "regular-xgblora-lora_ga": ["--trainer", "regular", "--xgblora", "--xgblora_steps_per_iteration", "2",
                                "--lora_init", "lora_ga", "--lora_ga_batches", "1"],
    "regular-lora-partial": ["--trainer", "regular", "--lora", "--lora_r", "2", "--lora_merge_every", "2"],
    "regular-lora": ["--trainer", "regular", "--lora", "--lora_r", "2"],
    "regular-xgblora": ["--trainer", "regular", "--xgblora", "--xgblora_steps_per_iteration", "2",
                        "--xgblora_num_layers", "1"],
    "zo-prefix": ["--trainer", "zo", "--prefix_tuning", "--num_prefix", "3", "--zo_eps", "1e-1"],
    "regular-prefix": ["--trainer", "regular", "--prefix_tuning", "--num_prefix", "3"],
}


def _args(out, *flags) -> Arguments:
    base = ["--task_name", "SST2", "--output_dir", str(out), "--per_device_train_batch_size", "4",
            "--num_train", "10", "--num_dev", "2", "--train_as_classification", "--learning_rate", "1e-2",
            "--logging_steps", "1", "--seed", "3", "--disable_tqdm", "True", "--max_steps", str(STEPS),
            "--save_strategy", "steps", "--save_steps", str(CUT), "--report_to", "none"]
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(args=base + list(flags))
    return args


def _train(out, flags, resume=None):
    args = _args(out, *flags, *(["--resume_from_checkpoint", resume] if resume else []))
    torch.manual_seed(0)
    model = make_model("opt", layers=2)
    trainer, summary, status = run.train(args, get_task("SST2"), model, make_tokenizer(), SAMPLES[:8], SAMPLES[8:])
    return trainer.model, summary, status


def _losses(summary):
    return [(h["step"], h["loss"]) for h in summary["log_history"] if "loss" in h]


@pytest.mark.parametrize("mode", list(MODES))
def test_resume_is_exact(tmp_path, mode):
    flags = MODES[mode]
    whole, whole_summary, status = _train(tmp_path / "whole", flags)
    assert status == "completed"
    part_ckpt = tmp_path / "whole" / f"checkpoint-{CUT}"
    assert (part_ckpt / checkpoint.RUN_STATE).is_file()
    resumed, resumed_summary, _ = _train(tmp_path / "resumed", flags, resume=str(part_ckpt))
    assert resumed_summary["global_step"] == STEPS
    assert len(_losses(whole_summary)) == STEPS
    assert _losses(resumed_summary) == _losses(whole_summary)
    assert resumed_summary.get("boosting") == whole_summary.get("boosting")
    assert resumed_summary.get("partial_merges") == whole_summary.get("partial_merges")
    assert resumed_summary.get("best_dev") == whole_summary.get("best_dev")
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    if "xgblora" in mode:
        assert whole_summary["boosting"]["num_merges"] == STEPS // 2


@pytest.mark.parametrize("mode, bases", [("--lora", False), ("--xgblora", True)])
def test_the_best_dev_snapshot_holds_base_weights_only_when_training_writes_them(tmp_path, mode, bases):
    """Plain LoRA never writes its base weights: its checkpoints' best-dev snapshot holds the adapters alone (on
    SmolLM2-135M, 1.9 MB instead of 55 MB); XGBLoRA merges into them, so its snapshot keeps them."""
    _train(tmp_path, ["--trainer", "zo", mode, "--eval_strategy", "steps", "--eval_steps", "2",
                      "--load_best_model_at_end", "--xgblora_steps_per_iteration", "2"])
    snapshot = torch.load(tmp_path / f"checkpoint-{CUT * 2}" / "run_state.pt", weights_only=False)[
        "callbacks"]["best"]["snapshot"]
    assert any("lora_A" in n for n in snapshot)
    assert any(n.endswith("base_layer.weight") for n in snapshot) == bases


def test_resume_without_the_merges_would_differ(tmp_path):
    """The replayed merges matter: dropping them from the checkpoint changes the resumed run."""
    flags = MODES["zo-xgblora"][:7]  # without the best-dev model, which would put a snapshot back at the end
    whole, _, _ = _train(tmp_path / "whole", flags)
    ckpt = tmp_path / "whole" / f"checkpoint-{CUT}"
    state = torch.load(ckpt / checkpoint.RUN_STATE, weights_only=False)
    assert len(state["merges"]) == 2  # one merge (step 2) of two q/v modules in the active block
    state["merges"] = []
    torch.save(state, ckpt / checkpoint.RUN_STATE)
    resumed, _, _ = _train(tmp_path / "resumed", flags, resume=str(ckpt))
    a, b = whole.state_dict(), resumed.state_dict()
    assert any(not torch.equal(a[n], b[n]) for n in a if n.endswith("base_layer.weight"))


def test_auto_takes_the_newest_checkpoint_that_passes_and_sets_damaged_ones_aside(tmp_path, caplog):
    for step in (3, 12, 20):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint name: never considered

    def check(folder):
        if folder.name == "checkpoint-20":
            raise checks.DamagedCheckpoint("no trainer_state.json")
        if folder.name == "checkpoint-12":
            raise checks.DamagedCheckpoint("run_state.pt cannot be read")
        return {"step": folder.name}

    found, state = checkpoint.resolve_resume("auto", str(tmp_path), check)
    assert Path(found).name == "checkpoint-3" and state == {"step": "checkpoint-3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-x", "damaged-checkpoint-12",
                                                         "damaged-checkpoint-20"]
    assert f"skipping {tmp_path / 'checkpoint-20'}: no trainer_state.json" in caplog.text
    assert "checkpoint-12: run_state.pt cannot be read" in caplog.text
    assert checkpoint.resolve_resume("auto", str(tmp_path / "none"), check) == (None, {})
    assert checkpoint.resolve_resume(None, str(tmp_path), check) == (None, {})
    (tmp_path / "checkpoint-20").mkdir()  # damaged again: set aside under the next free name
    checkpoint.resolve_resume("auto", str(tmp_path), check)
    assert (tmp_path / "damaged-checkpoint-20.1").is_dir()


def test_auto_refuses_a_mismatched_checkpoint_instead_of_walking_past_it(tmp_path):
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()

    def check(folder):
        raise checks.MismatchedCheckpoint("made with other settings")

    with pytest.raises(checks.MismatchedCheckpoint, match=r"^--resume_from_checkpoint auto: \S*checkpoint-6: made"):
        checkpoint.resolve_resume("auto", str(tmp_path), check)
    assert (tmp_path / "checkpoint-6").is_dir()


def test_checkpoint_of_another_base_model_is_refused(tmp_path):
    flags = MODES["regular-lora"]
    _train(tmp_path / "a", flags)
    ckpt = tmp_path / "a" / f"checkpoint-{CUT}"
    state = torch.load(ckpt / checkpoint.RUN_STATE, weights_only=False)
    state["identity"]["base_sha256"] = "0" * 64
    torch.save(state, ckpt / checkpoint.RUN_STATE)
    with pytest.raises(checkpoint.CheckpointError, match="base model"):
        _train(tmp_path / "b", flags, resume=str(ckpt))


def test_replay_is_bit_exact_and_checks_modules():
    torch.manual_seed(0)
    pm = lora.attach_lora(make_model("opt", layers=2), r=1, alpha=16)
    fresh = {n: w.detach().clone() for n, w in lora.base_weights(pm).items()}
    gen = torch.Generator().manual_seed(1)
    factors = []
    for _ in range(3):
        for _, layer in lora.lora_layers(pm):
            torch.nn.init.normal_(layer.lora_B["default"].weight)
        factors += lora.merge_and_reinit(pm, scale=0.7, generator=gen).factors
    merged = {n: w.detach().clone() for n, w in lora.base_weights(pm).items()}
    with torch.no_grad():
        for n, w in lora.base_weights(pm).items():
            w.copy_(fresh[n])
    lora.replay_merges(pm, factors)
    for n, w in lora.base_weights(pm).items():
        assert torch.equal(w, merged[n]) and not torch.equal(w, fresh[n]), n
    factors[0].module = "no.such.module"
    with pytest.raises(ValueError, match="no.such.module"):
        lora.replay_merges(pm, factors)


# ---- a resumed run must be the run its settings describe ---------------------------------------------------------
ZO = ["--trainer", "zo"]
CONSTANT = [*ZO, "--lr_scheduler_type", "constant"]


def _assert_same_run(a, a_summary, b, b_summary):
    assert _losses(a_summary) == _losses(b_summary) and len(_losses(a_summary)) == STEPS
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[n], sb[n]) for n in sa)


@pytest.fixture(scope="module")
def zo_checkpoint(tmp_path_factory):
    """checkpoint-3 of a zo full-parameter run of 7 steps (linear schedule, the Trainer's default)."""
    out = tmp_path_factory.mktemp("zo-ckpt")
    _train(out, ZO)
    return str(out / f"checkpoint-{CUT}")


@pytest.mark.parametrize("change, listed", [
    (["--learning_rate", "1e-3"], "made with other settings (checkpoint -> this run: --learning_rate 0.01 -> 0.001)"),
    (["--seed", "4", "--zo_eps", "1e-2"], "(checkpoint -> this run: --seed 3 -> 4, --zo_eps 0.001 -> 0.01)"),
    (["--num_train", "9"], "--num_train 10 -> 9"),
    # a full-parameter checkpoint resumed as LoRA: the mode differs, whatever the base weights' hash says
    (["--lora", "--lora_r", "2"], "made with another mode (checkpoint -> this run: mode ft -> lora, --lora false "
                                  "-> true, --lora_r 8 -> 2)"),
])
def test_resume_refuses_a_checkpoint_made_with_other_settings(tmp_path, zo_checkpoint, change, listed):
    with pytest.raises(checks.MismatchedCheckpoint) as refused:
        _train(tmp_path, [*ZO, *change], resume=zo_checkpoint)
    message = str(refused.value)
    assert message.startswith(f"--resume_from_checkpoint {zo_checkpoint}: ") and "\n" not in message
    assert listed in message and "base model" not in message


def test_settings_left_out_of_the_name_may_change(tmp_path, zo_checkpoint):
    _, summary, status = _train(tmp_path, [*ZO, "--logging_steps", "2", "--per_device_eval_batch_size", "3",
                                           "--save_steps", "1", "--save_total_limit", "2"], resume=zo_checkpoint)
    assert status == "completed" and summary["global_step"] == STEPS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6", "checkpoint-7"]


def test_max_steps_below_the_checkpoints_step_is_refused(tmp_path, zo_checkpoint):
    with pytest.raises(checks.MismatchedCheckpoint, match=r"checkpoint-3: --max_steps 2 is below the checkpoint's "
                                                          r"step 3; give --max_steps 3 or more$"):
        _train(tmp_path, [*ZO, "--max_steps", "2"], resume=zo_checkpoint)


def test_max_steps_cannot_extend_a_schedule_that_depends_on_it(tmp_path, zo_checkpoint):
    with pytest.raises(checks.MismatchedCheckpoint, match=r"--max_steps 8 \(checkpoint: 7\): with "
                                                          r"--lr_scheduler_type linear the schedule up to step 3"):
        _train(tmp_path, [*ZO, "--max_steps", "8"], resume=zo_checkpoint)


def test_max_steps_extends_a_constant_schedule_to_the_run_given_it_from_the_start(tmp_path):
    """A constant-LR run of 3 steps, resumed with --max_steps 7, is bit for bit the run of 7 steps."""
    whole, whole_summary, _ = _train(tmp_path / "whole", CONSTANT)
    _train(tmp_path / "short", [*CONSTANT, "--max_steps", str(CUT)])
    extended, extended_summary, status = _train(tmp_path / "extended", CONSTANT,
                                                resume=str(tmp_path / "short" / f"checkpoint-{CUT}"))
    assert status == "completed" and extended_summary["global_step"] == STEPS
    _assert_same_run(whole, whole_summary, extended, extended_summary)


def test_max_steps_cannot_extend_a_linear_number_of_directions(tmp_path):
    flags = [*CONSTANT, "--zo_num_samples", "3", "--zo_sample_scheduler", "linear"]
    _train(tmp_path / "short", [*flags, "--max_steps", str(CUT)])
    with pytest.raises(checks.MismatchedCheckpoint, match="with --zo_sample_scheduler linear the schedule"):
        _train(tmp_path / "extended", flags, resume=str(tmp_path / "short" / f"checkpoint-{CUT}"))


@pytest.mark.parametrize("flags, changed", [
    (["--lr_scheduler_type", "constant"], []),
    (["--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", "2"], []),
    # a warmup given as a ratio of --max_steps: 3 of 6 steps against 4 of 8, different at step 3
    (["--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", "0.5"],
     ["--lr_scheduler_type constant_with_warmup"]),
    (["--lr_scheduler_type", "cosine"], ["--lr_scheduler_type cosine"]),
])
def test_schedule_changes_lists_what_reads_max_steps_before_the_checkpoint(flags, changed):
    args = _args("unused", "--trainer", "zo", *flags)
    assert checks.schedule_changes(args, 6, 8, 3) == changed
    assert checks.schedule_changes(args, 6, 6, 3) == []


# ---- damaged checkpoints: one line for an explicit folder, auto walks back to the previous good one --------------
def _truncate_run_state(ckpt):
    data = (ckpt / checkpoint.RUN_STATE).read_bytes()
    (ckpt / checkpoint.RUN_STATE).write_bytes(data[:len(data) // 2])


def _delete_weights(ckpt):
    for weights in ckpt.glob("*.safetensors"):
        weights.unlink()


def _drop_an_optimizer_parameter(ckpt):
    state = torch.load(ckpt / "optimizer.pt", weights_only=False)
    state["param_groups"][0]["params"].pop()
    torch.save(state, ckpt / "optimizer.pt")


def _widen_the_adapter(ckpt):
    """The adapter file of a rank-3 LoRA in a checkpoint of a rank-2 one."""
    path = ckpt / "adapter_model.safetensors"
    tensors = safetensors.torch.load_file(path)
    wider = {k: torch.zeros(v.shape[0] + ("lora_A" in k), v.shape[1] + ("lora_B" in k)) for k, v in tensors.items()}
    safetensors.torch.save_file(wider, path)


def _drop_the_booster_generator(ckpt):
    state = torch.load(ckpt / checkpoint.RUN_STATE, weights_only=False)
    del state["callbacks"]["boosting"]["generator"]
    torch.save(state, ckpt / checkpoint.RUN_STATE)


DAMAGES = {
    "truncated run_state": ("zo-full", _truncate_run_state, r"run_state\.pt cannot be read \(truncated or damaged: "),
    "deleted weights": ("regular-lora", _delete_weights, r"no model weights \(none of adapter_model\.safetensors"),
    "optimizer group": ("zo-full-momentum", _drop_an_optimizer_parameter,
                        r"optimizer\.pt holds parameter groups of \[(\d+)\] parameters, this run's optimizer "
                        r"\[(\d+)\]$"),
    "LoRA size": ("regular-lora", _widen_the_adapter, r"adapter_model\.safetensors: \S+lora_A\.weight has shape "
                                                      r"\[3, 32\], this run's model \[2, 32\]"),
    "boosting key": ("zo-xgblora", _drop_the_booster_generator,
                     r"run_state\.pt: the state of the 'boosting' callback lacks 'generator'$"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_checkpoint_is_named_and_auto_resumes_from_the_one_before(tmp_path, caplog, damage):
    mode, spoil, problem = DAMAGES[damage]
    flags = MODES[mode][:7]  # zo-xgblora without the best-dev model: evaluation would only cost time here
    whole, whole_summary, _ = _train(tmp_path / "whole", flags)
    last = tmp_path / "whole" / f"checkpoint-{STEPS}"  # the final one (checkpoints at 3, 6 and 7)
    spoil(last)
    with pytest.raises(checks.DamagedCheckpoint) as refused:
        _train(tmp_path / "explicit", flags, resume=str(last))
    named = re.fullmatch(f"--resume_from_checkpoint {re.escape(str(last))}: {problem}.*", str(refused.value))
    assert named, refused.value
    if damage == "optimizer group":  # one parameter fewer than this run's
        assert int(named.group(1)) + 1 == int(named.group(2))
    caplog.set_level(logging.INFO, logger="mezo_engine.checkpoint")
    resumed, resumed_summary, status = _train(tmp_path / "whole", flags, resume="auto")
    assert status == "completed"
    assert f"skipping {last}: " in caplog.text and f"resuming from {tmp_path / 'whole' / 'checkpoint-6'}" in caplog.text
    assert (tmp_path / "whole" / f"damaged-checkpoint-{STEPS}").is_dir()
    _assert_same_run(whole, whole_summary, resumed, resumed_summary)
