"""The derived settings are decided in mezo_engine/run_config.py, and nothing changes the parsed arguments after."""
import json

import pytest
from transformers.trainer_utils import IntervalStrategy

from large_models import run
from large_models.arguments import parse_args
from mezo_engine import run_config
from mezo_engine.run_config import FrozenArgumentsError


class _Model:
    """What ``large_models.run.resolve`` reads of a model: its config's position limit."""

    def __init__(self, positions: int):
        self.config = type("Config", (), {"max_position_embeddings": positions})()


def test_flags_alone_derive_best_model_grad_norm_and_output_dir_given():
    zo = parse_args(["--trainer", "zo", "--num_train", "4", "--load_best_model_at_end", "--eval_strategy", "steps"])
    assert zo.keep_best_model and not zo.load_best_model_at_end and zo.max_grad_norm == 0.0
    assert zo.to_dict()["load_best_model_at_end"] is True and not zo.output_dir_given
    regular = parse_args(["--trainer", "regular", "--num_train", "4", "--output_dir", "o"])
    assert not regular.keep_best_model and regular.max_grad_norm == 1.0 and regular.output_dir_given


def test_frozen_arguments_refuse_every_flag_but_what_the_trainer_writes():
    args = run_config.freeze(parse_args(["--trainer", "zo", "--num_train", "4"]))
    for name, value in [("max_length", 16), ("output_dir", "elsewhere"), ("eval_strategy", "no"), ("tag", "x")]:
        with pytest.raises(FrozenArgumentsError, match=f"args.{name}"):
            setattr(args, name, value)
    args.gradient_accumulation_steps = 1  # the HF Trainer's own write (accelerate's gradient accumulation)
    unfrozen = parse_args(["--trainer", "zo", "--num_train", "4"])
    unfrozen.tag = "x"  # not frozen until an app freezes it
    assert unfrozen.tag == "x"


def test_resolve_returns_a_frozen_copy_with_the_run_values_and_leaves_the_parsed_ones():
    parsed = run_config.freeze(parse_args(["--trainer", "zo", "--num_train", "4", "--eval_strategy", "steps", "--eval_steps", "2"]))
    before = parsed.to_dict()
    resolved = run.resolve(parsed, _Model(64), "out/set0", dev_samples=[])
    assert resolved.output_dir == "out/set0" and resolved.max_length == 64
    assert resolved.eval_strategy == IntervalStrategy.NO  # no dev examples: no evaluation during training
    assert parsed.to_dict() == before and parsed.max_length == 2048
    with pytest.raises(FrozenArgumentsError):
        resolved.max_length = 8
    kept = run.resolve(parsed, _Model(4096), "out/set1", dev_samples=["a dev example"])
    assert kept.max_length == 2048 and kept.eval_strategy == IntervalStrategy.STEPS


def test_a_run_leaves_its_parsed_arguments_unchanged_and_records_the_resolved_ones(tmp_path, tiny_opt_dir, sst2_dir,
                                                                                    monkeypatch):
    seen, real = [], run.run_one

    def spy(parsed, *rest, **kw):
        before = parsed.to_dict()
        result = real(parsed, *rest, **kw)
        seen.append((before, parsed.to_dict()))
        return result
    monkeypatch.setattr(run, "run_one", spy)
    out = tmp_path / "r.json"
    run.main(["--model_name", str(tiny_opt_dir), "--task_name", "SST2", "--data_dir", str(sst2_dir),
              "--result_file", str(out), "--output_dir", str(tmp_path / "o"), "--disable_tqdm", "True",
              "--trainer", "zo", "--num_train", "4", "--num_train_sets", "2", "--num_eval", "2", "--max_steps", "1",
              "--per_device_train_batch_size", "2", "--eval_strategy", "steps", "--eval_steps", "1"])
    assert len(seen) == 2 and all(before == after for before, after in seen)
    for k in (0, 1):
        config = json.loads((tmp_path / f"r-trainset{k}.json").read_text())["config"]
        assert config["output_dir"] == str(tmp_path / "o" / f"r-trainset{k}")
        assert config["max_length"] == 1024 and config["eval_strategy"] == "no"  # the tiny OPT's 1024 positions
        assert config["max_grad_norm"] == 0.0
