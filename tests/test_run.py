"""End to end: run.py and the shell drivers on a tiny model with raw-format fixture data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from large_models import run
from large_models.arguments import ArgumentError, parse_args
from large_models.arguments import default_config
from mezo_engine.results import config_hash
from mezo_engine import runner

REPO = Path(__file__).resolve().parent.parent


def _run(tmp_path, model_dir, data_dir, *flags):
    out = tmp_path / "result.json"
    argv = ["--model_name", str(model_dir), "--task_name", "SST2", "--data_dir", str(data_dir),
            "--result_file", str(out), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True",
            "--per_device_eval_batch_size", "4", *flags]
    run.main(argv)
    return json.loads(out.read_text())


def test_zero_shot_and_icl_write_results(tmp_path, tiny_opt_dir, sst2_dir):
    result = _run(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "none", "--num_train", "2", "--train_set_seed", "1",
                  "--num_eval", "6")
    assert result["trainer"] == "none" and result["num_eval"] == 6 and result["num_train"] == 2
    assert 0.0 <= result["eval"]["accuracy"] <= 1.0
    assert result["config"]["task_name"] == "SST2"
    # per-example scores (for paired tests between runs): 1 or 0 each, their mean the accuracy
    assert len(result["eval_scores"]) == 6 and set(result["eval_scores"]) <= {0.0, 1.0}
    assert sum(result["eval_scores"]) / 6 == result["eval"]["accuracy"]


@pytest.mark.parametrize("trainer", ["zo", "regular"])
def test_training_writes_results_with_dev_and_train_summary(tmp_path, tiny_model_dir, sst2_dir, trainer):
    result = _run(tmp_path, tiny_model_dir, sst2_dir, "--trainer", trainer, "--num_train", "12", "--num_dev", "4",
                  "--train_set_seed", "0", "--num_eval", "4", "--max_steps", "4", "--per_device_train_batch_size", "4",
                  "--train_as_classification", "--learning_rate", "1e-3", "--logging_steps", "2",
                  "--eval_strategy", "steps", "--eval_steps", "2", "--load_best_model_at_end")
    assert set(result) >= {"eval", "dev", "train", "config", "runtime_s"}
    assert result["train"]["global_step"] == 4
    losses = [h["loss"] for h in result["train"]["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(0 < x < 5 for x in losses)
    assert result["train"]["best_dev"]["step"] in (2, 4)
    assert result["num_train"] == 12 and result["num_dev"] == 4  # MeZO: num_train + num_dev sampled, dev from the end


def test_result_file_name_follows_task_model_tag_hash(tmp_path):
    args = parse_args(["--task_name", "RTE", "--model_name", "org/opt-1.3b", "--tag", "mezo-ft-1-2"])
    digest = config_hash(args.to_dict(), args.keep_best_model, default_config())
    assert len(digest) == 8 and int(digest, 16) >= 0
    assert run.result_path(args, 0, False).name == f"RTE-opt-1.3b-mezo-ft-1-2-{digest}.json"
    assert run.result_path(args, 3, True).name == f"RTE-opt-1.3b-mezo-ft-1-2-{digest}-trainset3.json"


@pytest.mark.parametrize("flags, message", [
    (["--task_name", "SST"], "--task_name 'SST': unknown task; known: SST2"),
    (["--zo_eps", "0"], "--zo_eps 0.0: must be > 0"),
    (["--zo_eps=-1e-3"], "--zo_eps -0.001"),
    (["--xgblora", "--xgblora_steps_per_iteration=-5"], "--xgblora_steps_per_iteration -5: must be >= 0"),
    (["--xgblora", "--prefix_tuning"], "--prefix_tuning: cannot be combined with --xgblora"),
    (["--lora", "--prefix_tuning"], "--prefix_tuning: cannot be combined with --lora"),
    (["--lora", "--xgblora"], "choose one"),
    (["--trainer", "zo", "--lora", "--lora_init", "lora_ga"], "LoRA-GA needs backprop"),
    (["--task_name", "SQuAD", "--train_as_classification"], "generation"),
    (["--trainer", "zo", "--num_train", "8", "--eval_last_model"],
     "--eval_last_model needs training with --load_best_model_at_end"),
    (["--trainer", "zo", "--num_train", "8", "--load_best_model_at_end", "--eval_last_model", "--no_eval"],
     "--eval_last_model with --no_eval"),
])
def test_bad_flags_name_the_flag_and_value(flags, message):
    with pytest.raises(ArgumentError, match=None) as err:
        from large_models.arguments import Arguments
        from transformers import HfArgumentParser
        HfArgumentParser(Arguments).parse_args_into_dataclasses(args=flags)
    assert message in str(err.value)


def _cli(*argv, env=None, cwd=REPO):
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_cli_bad_flag_exits_nonzero_with_message():
    proc = _cli(sys.executable, "large_models/run.py", "--task_name", "SST", "--zo_eps", "0")
    assert proc.returncode != 0
    assert "--task_name 'SST'" in proc.stderr and "--zo_eps 0.0" in proc.stderr


@pytest.mark.slow
def test_cli_missing_data_file_names_it(tmp_path, tiny_opt_dir):
    proc = _cli(sys.executable, "large_models/run.py", "--task_name", "RTE", "--model_name", str(tiny_opt_dir),
                "--data_dir", str(tmp_path))
    assert proc.returncode != 0
    assert str(tmp_path / "RTE") in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("script", ["mezo.sh", "finetune.sh"])
def test_driver_rejects_unknown_mode_and_missing_task(script):
    bad = _cli("bash", script, env={"MODE": "bogus", "TASK": "SST2"})
    assert bad.returncode != 0 and "MODE=bogus unknown" in bad.stderr
    missing = _cli("bash", script, env={"TASK": ""})
    assert missing.returncode != 0 and "set TASK" in missing.stderr


@pytest.mark.slow
def test_mezo_driver_runs_from_large_models_dir(tmp_path, tiny_opt_dir, sst2_dir):
    out = tmp_path / "r.json"
    env = {"MODEL": str(tiny_opt_dir), "TASK": "SST2", "MODE": "xgblora", "DATA_DIR": str(sst2_dir), "STEPS": "2",
           "TRAIN": "8", "DEV": "4", "EVAL": "4", "EVAL_STEPS": "2", "BS": "4", "XGBLORA_STEPS": "1"}
    proc = _cli("bash", "mezo.sh", "--result_file", str(out), "--disable_tqdm", "True", env=env,
                cwd=REPO / "large_models")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["config"]["tag"] == "mezo-xgblora-k1-2-4-1e-5-1e-3-0"
    assert result["train"]["boosting"]["num_merges"] == 2
    assert "TASK=SST2" in proc.stderr  # the resolved configuration is printed


@pytest.mark.parametrize("script, mode, lp, tag, mode_name", [
    ("mezo.sh", "head", "0", "mezo-head-2-4-1e-5-1e-3-0", "head"),
    ("mezo.sh", "ft", "1", "mezo-lp-ft-2-4-1e-5-1e-3-0", "lp-ft"),
    ("finetune.sh", "head", "1", "lp-head-1-4-1e-5-0", "lp-head"),
])
@pytest.mark.slow
def test_drivers_run_head_tuning_and_linear_probe_starts(tmp_path, tiny_opt_dir, sst2_dir, script, mode, lp, tag,
                                                         mode_name):
    out = tmp_path / "r.json"
    env = {"MODEL": str(tiny_opt_dir), "TASK": "SST2", "MODE": mode, "LP": lp, "DATA_DIR": str(sst2_dir),
           "STEPS": "2", "EPOCH": "1", "TRAIN": "8", "DEV": "4", "EVAL": "4", "EVAL_STEPS": "2", "BS": "4"}
    if lp == "1":  # the probe's 5 cross-validation folds need >= 5 training examples; the fixture has 8 in all
        env["DEV"] = "0"
    proc = _cli("bash", script, "--result_file", str(out), "--disable_tqdm", "True", env=env,
                cwd=REPO / "large_models")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["config"]["tag"] == tag and result["mode"] == mode_name
    assert ("linear_probe" in result.get("head", {})) == (lp == "1")
    if mode == "head":
        assert result["train"]["trainable"]  # only the head's weight trains


def test_save_model_writes_merged_model_and_adapter(tmp_path, tiny_opt_dir, sst2_dir):
    from transformers import AutoModelForCausalLM
    result = _run(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "regular", "--xgblora", "--num_train", "8",
                  "--train_set_seed", "0", "--num_eval", "4", "--max_steps", "3", "--per_device_train_batch_size", "4",
                  "--xgblora_steps_per_iteration", "2", "--train_as_classification", "--learning_rate", "1e-2",
                  "--save_model")
    assert result["train"]["boosting"]["num_merges"] == 1
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    original = AutoModelForCausalLM.from_pretrained(tiny_opt_dir)
    changed = [n for n, p in saved.named_parameters() if not torch.equal(p, original.state_dict()[n])]
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)  # only the adapted weights moved
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()


def test_model_names_resolve(tmp_path):
    from mezo_engine.models import resolve_model_path
    assert resolve_model_path("facebook/opt-125m") == "facebook/opt-125m"
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        resolve_model_path(str(tmp_path / "missing.gguf"))


def test_generation_task_trains_as_lm_and_evaluates_f1(tmp_path, tiny_opt_dir, squad_dir):
    out = tmp_path / "squad.json"
    run.main(["--model_name", str(tiny_opt_dir), "--task_name", "SQuAD", "--data_dir", str(squad_dir),
              "--result_file", str(out), "--output_dir", str(tmp_path / "o"), "--disable_tqdm", "True",
              "--trainer", "zo", "--num_train", "4", "--train_set_seed", "0", "--num_eval", "3", "--max_steps", "2",
              "--per_device_train_batch_size", "2", "--max_new_tokens", "4", "--per_device_eval_batch_size", "2"])
    result = json.loads(out.read_text())
    assert 0.0 <= result["eval"]["f1"] <= 1.0 and result["train"]["global_step"] == 2


def test_config_records_the_users_load_best_model_at_end(tmp_path, tiny_opt_dir, sst2_dir):
    result = _run(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "zo", "--num_train", "8", "--num_dev", "2",
                  "--train_set_seed", "0", "--num_eval", "2", "--max_steps", "1", "--per_device_train_batch_size",
                  "2", "--train_as_classification", "--eval_strategy", "steps", "--eval_steps", "1",
                  "--load_best_model_at_end", "--save_strategy", "no")
    assert result["config"]["load_best_model_at_end"] is True  # what the user asked for (mezo.sh's combination)
    assert result["config"]["trainer_load_best_model_at_end"] is False  # the best model is kept by our callback
    assert result["train"]["best_dev"]["step"] == 1


def _captured_eval(monkeypatch):
    seen = []
    real = run.evaluate_sharded

    def spy(model, tokenizer, task, samples, demos=(), cfg=None, shard=True):
        seen.append((list(samples), demos))
        return real(model, tokenizer, task, samples, demos, cfg, shard)
    monkeypatch.setattr(run, "evaluate_sharded", spy)
    return seen


def test_eval_subset_is_drawn_with_the_train_set_seed(tmp_path, tiny_opt_dir, sst2_dir, monkeypatch):
    from large_models.tasks import get_task
    seen = _captured_eval(monkeypatch)
    result = _run(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "none", "--num_train", "1", "--train_set_seed", "3",
                  "--num_eval", "4")
    valid = get_task("SST2").load("validation", sst2_dir)
    expected = get_task("SST2").sample_subset(valid, seed=3, num=4)
    assert [s.id for s in seen[0][0]] == [s.id for s in expected]
    assert [s.id for s in seen[0][0]] != [s.id for s in get_task("SST2").sample_subset(valid, seed=0, num=4)]
    assert result["eval_seed"] == 3 and result["demonstrations"] == "one set"


def test_num_train_sets_draw_a_new_eval_subset_per_set(tmp_path, tiny_opt_dir, sst2_dir, monkeypatch):
    seen = _captured_eval(monkeypatch)
    results = _run_many(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "none", "--num_train", "1",
                        "--num_train_sets", "2", "--num_eval", "4")
    assert [r["eval_seed"] for r in results] == [0, 1]
    assert [s.id for s in seen[0][0]] != [s.id for s in seen[1][0]]


def _run_many(tmp_path, model_dir, data_dir, *flags):
    argv = ["--model_name", str(model_dir), "--task_name", "SST2", "--data_dir", str(data_dir),
            "--result_dir", str(tmp_path), "--disable_tqdm", "True", "--per_device_eval_batch_size", "4", *flags]
    return run.main(argv)


def test_icl_without_a_seed_draws_one_demonstration_set_per_example(tmp_path, tiny_opt_dir, sst2_dir, monkeypatch):
    """MeZO's in-context default: example i's demonstrations are the train subset drawn with seed i of
    numpy's randint(0, 10000) under seed 0 (the global generator, as upstream draws them)."""
    import numpy as np
    from large_models.tasks import get_task
    seen = _captured_eval(monkeypatch)
    result = _run(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "none", "--num_train", "2", "--num_eval", "5")
    task = get_task("SST2")
    train, valid = task.load("train", sst2_dir), task.load("validation", sst2_dir)
    np.random.seed(0)
    seeds = np.random.randint(0, 10000, 5)
    samples, demos = seen[0]
    assert [s.id for s in samples] == [s.id for s in task.sample_subset(valid, 0, 5)]
    assert len(demos) == 5
    for i, seed in enumerate(seeds):
        assert [d.id for d in demos[i]] == [d.id for d in task.sample_subset(train, int(seed), 2)]
    assert len({tuple(d.id for d in ds) for ds in demos}) > 1  # not one shared set
    assert result["demonstrations"] == "one set per eval example" and result["train_set_seed"] is None


def test_zo_run_records_projected_gradient_statistics_and_resources(tmp_path, tiny_model_dir, sst2_dir,
                                                                    monkeypatch):
    from mezo_engine import resources
    from mezo_engine.zo_methods.sgd import ZOSGD
    seen = []
    fused = ZOSGD.fused_step

    def spy(self, *a, **kw):
        out = fused(self, *a, **kw)
        seen.append(abs(out.projected_grad))
        return out
    monkeypatch.setattr(ZOSGD, "fused_step", spy)
    result = _run(tmp_path, tiny_model_dir, sst2_dir, "--trainer", "zo", "--num_train", "12", "--num_eval", "4",
                  "--max_steps", "5", "--per_device_train_batch_size", "4", "--train_as_classification",
                  "--learning_rate", "1e-3", "--logging_steps", "2")
    logged = [h for h in result["train"]["log_history"] if "loss" in h]
    assert len(seen) == 5 and [h["step"] for h in logged] == [2, 4]  # step 5's |g| is never logged
    for entry, window in zip(logged, (seen[0:2], seen[2:4])):
        mean = sum(window) / 2
        assert entry["projected_grad_abs_mean"] == pytest.approx(mean, rel=1e-12)
        assert entry["projected_grad_abs_std"] == pytest.approx(abs(window[0] - window[1]) / 2, rel=1e-9, abs=1e-15)
        assert entry["projected_grad_abs_max"] == max(window)
    train, used = result["train"], result["resources"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert train["trainable_parameters"] == sum(p.numel() for p in model.parameters())  # full-parameter zo
    assert train["steps_this_process"] == 5
    assert train["steps_per_s"] == 5 / train["train_s"]  # stored unrounded: the quotient, to the last bit
    assert 50 < used["peak_rss_mib"] <= resources.peak_rss_mib()  # torch alone takes more than 50 MiB
    assert used["cuda_max_allocated_mib"] is None or used["cuda_max_allocated_mib"] > 0
    assert 0 < train["train_s"] <= used["wall_s"] and result["runtime_s"] == round(used["wall_s"], 2)  # one clock


def test_resumed_run_counts_its_steps_from_the_checkpoint():
    assert runner.checkpoint_step(None) == 0 and runner.checkpoint_step("out/checkpoint-250") == 250


@pytest.mark.parametrize("later_ties, kept_step", [(True, 3), (False, 2)])
def test_which_of_tied_best_dev_scores_is_kept(later_ties, kept_step):
    """Dev accuracy 0.5, 0.7, 0.7, 0.6 at steps 1-4 (the weight set to the step each time): ``--best_dev_ties
    later`` keeps step 3's model, ``first`` (upstream's rule) step 2's; the restored weight says which."""
    from transformers import TrainerControl, TrainerState
    from mezo_engine.trainer import BestModelCallback
    weight = torch.nn.Parameter(torch.zeros(1))
    callback = BestModelCallback("eval_accuracy", lambda model: {"w": weight}, later_ties=later_ties)
    state = TrainerState()
    for step, accuracy in enumerate([0.5, 0.7, 0.7, 0.6], start=1):
        state.global_step = step
        with torch.no_grad():
            weight.fill_(step)
        callback.on_evaluate(None, state, TrainerControl(), metrics={"eval_accuracy": accuracy})
    callback.on_train_end(None, state, TrainerControl(), model=None)
    assert (callback.best, callback.best_step, weight.item()) == (0.7, kept_step, kept_step)


def test_tied_best_dev_scores_keep_the_later_here_and_the_first_in_medium_models():
    from medium_models.arguments import Arguments as MediumArguments
    assert run.parse_args([]).best_dev_ties == "later" and MediumArguments().best_dev_ties == "first"


def test_the_last_model_is_swapped_in_for_its_evaluation_and_the_best_put_back():
    """Best dev at step 2 of 4: within ``swap_in_last`` the weight is step 4's, after it step 2's again; where the
    best is the last model there is nothing to swap."""
    from transformers import TrainerControl, TrainerState
    from mezo_engine.trainer import BestModelCallback
    for accuracies, best_step in (([0.5, 0.7, 0.6, 0.6], 2), ([0.5, 0.6, 0.6, 0.7], 4)):
        weight = torch.nn.Parameter(torch.zeros(1))
        callback = BestModelCallback("eval_accuracy", lambda model: {"w": weight}, keep_last=True)
        state = TrainerState()
        for step, accuracy in enumerate(accuracies, start=1):
            state.global_step = step
            with torch.no_grad():
                weight.fill_(step)
            callback.on_evaluate(None, state, TrainerControl(), metrics={"eval_accuracy": accuracy})
        callback.on_train_end(None, state, TrainerControl(), model=None)
        assert (callback.best_step, callback.last_step, weight.item()) == (best_step, 4, best_step)
        with callback.swap_in_last(None):
            assert weight.item() == 4
        assert weight.item() == best_step


def test_eval_last_model_reuses_the_evaluation_where_the_best_is_the_last_model(tmp_path, tiny_opt_dir, sst2_dir,
                                                                                monkeypatch):
    """Dev accuracy rises at every evaluation (a stub): the best dev model is the last one, so ``eval_last`` is
    ``eval`` with its step, and the test set is evaluated once (then dev once)."""
    calls = []
    original = run.evaluate_sharded
    monkeypatch.setattr(run, "evaluate_sharded", lambda *a, **k: calls.append(len(a[3])) or original(*a, **k))
    rising = iter(range(1, 100))
    monkeypatch.setattr(run, "dev_evaluator", lambda *a: lambda model: {"accuracy": 0.01 * next(rising)})
    result = _run(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "zo", "--learning_rate", "1e-2", "--max_steps", "3",
                  "--num_train", "12", "--num_dev", "4", "--num_eval", "4", "--per_device_train_batch_size", "4",
                  "--train_as_classification", "--eval_strategy", "steps", "--eval_steps", "1", "--lora",
                  "--lora_r", "2", "--load_best_model_at_end", "--eval_last_model")
    assert result["train"]["best_dev"]["step"] == 3 and calls == [4, 4]
    assert result["eval_last"] == {**result["eval"], "scores": result["eval_scores"], "step": 3}


def test_eval_last_model_scores_the_last_steps_model_as_a_run_that_keeps_no_best(tmp_path, tiny_opt_dir, sst2_dir,
                                                                                 monkeypatch):
    """Dev accuracy falls at every evaluation (a stub), so the best dev model is step 1's and the last is step 4's.
    ``--eval_last_model`` evaluates the test set on both: the parameters each evaluation saw (their sum, float64)
    are step 1's for ``eval`` and for the final dev evaluation (the best put back), and for ``eval_last`` those of
    the same run without a kept best model, whose ``eval`` it equals exactly (same weights, same kernels)."""
    from large_models import pipeline
    seen = []
    original = run.evaluate_sharded

    def spy(model, tokenizer, task, samples, *rest):
        lora = [p for n, p in model.named_parameters() if "lora_" in n]
        seen.append((len(samples), sum(p.double().sum().item() for p in lora)))
        return original(model, tokenizer, task, samples, *rest)

    def falling_dev(args, tokenizer, task, dev_samples):
        calls = []
        def evaluate(model):
            calls.append(1)
            return {"accuracy": 1.0 - 0.1 * len(calls)}
        return evaluate
    monkeypatch.setattr(run, "evaluate_sharded", spy)
    monkeypatch.setattr(run, "dev_evaluator", falling_dev)
    flags = ["--trainer", "zo", "--load_float64", "--learning_rate", "1e-2", "--max_steps", "4", "--num_train", "12",
             "--num_dev", "4", "--num_eval", "4", "--per_device_train_batch_size", "4", "--train_as_classification",
             "--eval_strategy", "steps", "--eval_steps", "1", "--lora", "--lora_r", "2"]
    kept = _run(tmp_path / "kept", tiny_opt_dir, sst2_dir, *flags, "--load_best_model_at_end", "--eval_last_model")
    kept_seen, seen[:] = list(seen), []
    plain = _run(tmp_path / "plain", tiny_opt_dir, sst2_dir, *flags)
    assert kept["train"]["best_dev"] == {"value": 0.9, "step": 1} and kept["eval_last"]["step"] == 4
    (_, best_sum), (_, last_sum), (_, dev_sum) = kept_seen  # test on the best, test on the last, dev on the best
    assert [n for n, _ in kept_seen] == [4, 4, 4] and dev_sum == best_sum != last_sum
    assert seen[0] == (4, last_sum)  # the plain run's test evaluation: its last model, the same parameters
    assert kept["eval_last"]["accuracy"] == plain["eval"]["accuracy"]
    assert kept["eval_last"]["scores"] == plain["eval_scores"]

