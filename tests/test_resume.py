"""Exact resume: k steps in one go == stop at a checkpoint at step j and resume, bit for bit, in every mode."""
import pytest
import torch
from transformers import HfArgumentParser

from large_models import run
from mezo_engine import checkpoint, lora
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
    # HiZOO's Hessian (D - 1, zeroed at each merge) and Sparse MeZO's thresholds travel in optimizer.pt too
    "zo-full-hizoo": ["--trainer", "zo", "--learning_rate", "1e-3", "--zo_optimizer", "hizoo", "--hizoo_smooth", "0.5"],
    "zo-xgblora-hizoo": ["--trainer", "zo", "--xgblora", "--xgblora_steps_per_iteration", "2", "--xgblora_num_layers",
                         "1", "--zo_optimizer", "hizoo", "--hizoo_smooth", "0.5"],
    "zo-full-sparse_mezo-nspsa": ["--trainer", "zo", "--learning_rate", "1e-3", "--zo_optimizer", "sparse_mezo",
                                  "--zo_num_samples", "2"],
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


def test_auto_resumes_from_the_latest_checkpoint(tmp_path):
    for step in (3, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpoint.RUN_STATE).write_bytes(b"")
    assert checkpoint.resolve_resume("auto", str(tmp_path)).endswith("checkpoint-12")
    assert checkpoint.resolve_resume("auto", str(tmp_path / "none")) is None
    assert checkpoint.resolve_resume(None, str(tmp_path)) is None
    (tmp_path / "checkpoint-12" / checkpoint.RUN_STATE).unlink()  # cut short: the latest is refused, by name
    for value in ("auto", str(tmp_path / "checkpoint-12")):
        with pytest.raises(checkpoint.CheckpointError, match="--resume_from_checkpoint .*checkpoint-12.*run_state"):
            checkpoint.resolve_resume(value, str(tmp_path))


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
