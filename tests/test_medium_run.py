"""End to end: medium_models/run.py and its drivers (mezo.sh, finetune.sh, and the root drivers with MEDIUM=1) on a
tiny RoBERTa saved as a HuggingFace directory and an SST-2 k-shot folder written by the test; the result JSONs
are what the sweep tools read."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medium_models import run
from medium_models.tasks import TASKS
from mezo_engine.metrics import pearson, spearman
from sweeps.aggregate import metric_value
from sweeps.state import read_state
from tests.lmbff_fixtures import write_kshot
from tests.tiny import save_tiny_mlm

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    return save_tiny_mlm("roberta", tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_kshot(TASKS["SST-2"], tmp_path_factory.mktemp("kshot"), k=4, seed=42)


def driver(script: str, env: dict, *flags: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", script, *flags], cwd=REPO, env=full, capture_output=True, text=True, timeout=600)


def test_zo_xgblora_run_merges_every_kappa_steps_and_keeps_the_best_dev_model(roberta_dir, data_dir, tmp_path):
    out = tmp_path / "r.json"
    result = run.main(["--task_name", "SST-2", "--num_k", "4", "--seed", "42", "--data_dir", str(data_dir),
                       "--model_name", str(roberta_dir), "--trainer", "zo", "--xgblora",
                       "--xgblora_steps_per_iteration", "2", "--max_steps", "6", "--per_device_train_batch_size", "4",
                       "--learning_rate", "1e-2", "--zo_eps", "1e-2", "--eval_strategy", "steps", "--eval_steps", "3",
                       "--load_best_model_at_end", "--result_file", str(out), "--disable_tqdm", "True"])
    written = json.loads(out.read_text())
    assert written["status"] == "completed" and written["model_kind"] == "masked" and written["mode"] == "xgblora"
    assert written["train"]["boosting"]["num_merges"] == 3
    assert [m["step"] for m in written["train"]["boosting"]["merges"]] == [2, 4, 6]
    assert (written["num_train"], written["num_dev"], written["num_eval"]) == (8, 8, 6)
    assert written["prompt"]["label_tokens"] == ["Ġterrible", "Ġgreat"] and written["prompt"]["scored_at"] == "mask"
    assert [h["step"] for h in written["train"]["log_history"] if "eval_accuracy" in h] == [3, 6]
    assert written["train"]["best_dev"]["step"] in (3, 6)
    assert len(written["eval_predictions"]) == 6 and 0 <= written["eval"]["accuracy"] <= 1
    assert result["dev"]["accuracy"] == written["dev"]["accuracy"]


def test_eval_last_model_evaluates_the_last_steps_model_as_a_run_without_a_kept_best(roberta_dir, data_dir,
                                                                                      tmp_path):
    """The same 6 ZO-LoRA steps twice: with the best dev model kept and ``--eval_last_model``, and without a kept
    model; the first's ``eval_last`` (step 6) has the second's test metrics and predictions."""
    flags = ["--task_name", "SST-2", "--num_k", "4", "--seed", "42", "--data_dir", str(data_dir),
             "--model_name", str(roberta_dir), "--trainer", "zo", "--lora", "--lora_r", "2", "--max_steps", "6",
             "--per_device_train_batch_size", "4", "--learning_rate", "1e-1", "--zo_eps", "1e-2",
             "--eval_strategy", "steps", "--eval_steps", "2", "--disable_tqdm", "True"]
    kept = run.main([*flags, "--load_best_model_at_end", "--eval_last_model", "--result_file", str(tmp_path / "k.json")])
    plain = run.main([*flags, "--result_file", str(tmp_path / "p.json")])
    last = kept["eval_last"]
    assert last["step"] == 6 and last["predictions"] == plain["eval_predictions"]
    assert last["accuracy"] == plain["eval"]["accuracy"]


def test_a_forward_budget_stops_the_masked_lm_run_and_the_sweeps_count_it_finished(roberta_dir, data_dir, tmp_path):
    out = tmp_path / "r.json"
    run.main(["--task_name", "SST-2", "--num_k", "4", "--seed", "42", "--data_dir", str(data_dir),
              "--model_name", str(roberta_dir), "--trainer", "zo", "--zo_num_samples", "2", "--max_steps", "6",
              "--max_zo_forward_steps", "8", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2",
              "--result_file", str(out), "--disable_tqdm", "True"])
    written = json.loads(out.read_text())
    assert written["status"] == "budget reached" and written["train"]["global_step"] == 2  # 2n = 4 a step
    assert written["budget"] == {"max_forwards": 8, "max_time": 0.0, "reached": "max_forwards", "step": 2}
    assert written["ledger"]["forwards"] == 8 and "accuracy" in written["eval"] and "accuracy" in written["dev"]
    state = read_state(out)
    assert state.finished and state.action == "skip"


def test_head_tuning_is_untied_by_default_and_tie_emb_restores_the_tied_head(roberta_dir, data_dir, tmp_path):
    """A masked LM's decoder is untied before training (upstream's prompt models), so head tuning leaves the input
    embeddings alone; --tie_emb keeps the earlier, tied head, whose training moves the embeddings."""
    trained = {}
    for extra in ([], ["--tie_emb"]):
        result = run.main(["--task_name", "SST-2", "--num_k", "4", "--seed", "42", "--data_dir", str(data_dir),
                           "--model_name", str(roberta_dir), "--trainer", "zo", "--head_tuning", "--max_steps", "1",
                           "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--disable_tqdm", "True",
                           "--result_file", str(tmp_path / f"r{len(extra)}.json"), *extra])
        trained[bool(extra)] = (result.get("head"), sorted(result["train"]["trainable"]))
    head = ["lm_head.bias", "lm_head.dense.bias", "lm_head.dense.weight", "lm_head.layer_norm.bias",
            "lm_head.layer_norm.weight"]
    assert trained[False] == ({"untied": True}, sorted(head + ["lm_head.decoder.weight"]))
    assert trained[True] == (None, sorted(head + ["roberta.embeddings.word_embeddings.weight"]))


@pytest.fixture(scope="module")
def stsb_dir(tmp_path_factory):
    return write_kshot(TASKS["STS-B"], tmp_path_factory.mktemp("stsb"), k=4, seed=42)


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_sts_b_trains_as_a_regression_and_reports_pearson_and_spearman(kind, stsb_dir, tmp_path):
    model_dir = save_tiny_mlm(kind, tmp_path / kind)
    result = run.main(["--task_name", "STS-B", "--num_k", "4", "--seed", "42", "--data_dir", str(stsb_dir),
                       "--model_name", str(model_dir), "--trainer", "zo", "--max_steps", "2",
                       "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--eval_strategy", "steps",
                       "--eval_steps", "1", "--load_best_model_at_end", "--disable_tqdm", "True",
                       "--result_file", str(tmp_path / "r.json")])
    written = json.loads((tmp_path / "r.json").read_text())
    assert set(written["eval"]) == {"pearson", "spearman"} and set(written["dev"]) == {"pearson", "spearman"}
    predicted = written["eval_predictions"]
    gold = [1.0, 1.2, 1.4, 4.0, 4.2, 4.4]  # tests/lmbff_fixtures.py: three test scores at each end
    assert len(predicted) == 6 and all(0 < p < 5 for p in predicted) and len(set(predicted)) == 6
    assert written["eval"]["pearson"] == pytest.approx(pearson(predicted, gold), abs=1e-12)
    assert written["eval"]["spearman"] == pytest.approx(spearman(predicted, gold), abs=1e-12)
    assert [h["step"] for h in written["train"]["log_history"] if "eval_pearson" in h] == [1, 2]
    assert written["prompt"]["label_words"] == ["No", "Yes"] and result["mode"] == "ft"


@pytest.mark.slow
def test_sts_b_runs_through_the_mezo_driver(roberta_dir, stsb_dir, tmp_path):
    out = tmp_path / "stsb.json"
    proc = driver("medium_models/mezo.sh", {"MODEL": str(roberta_dir), "DATA_DIR": str(stsb_dir), "TASK": "STS-B",
                                            "K": "4", "BS": "4", "STEP": "2", "EVAL_STEP": "1"},
                  "--result_file", str(out), "--disable_tqdm", "True")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["eval"]) == {"pearson", "spearman"} and result["train"]["best_dev"]["step"] in (1, 2)
    assert metric_value(result, "eval.pearson") == result["eval"]["pearson"]


@pytest.mark.slow
def test_drivers_run_zo_and_regular_and_write_results_the_sweep_tools_read(roberta_dir, data_dir, tmp_path):
    env = {"MODEL": str(roberta_dir), "DATA_DIR": str(data_dir), "K": "4", "SEED": "42", "BS": "4", "STEP": "2",
           "EVAL_STEP": "1"}
    runs = [("medium_models/mezo.sh", {"MODE": "lora"}), ("medium_models/finetune.sh", {"MODE": "xgblora",
                                                                                         "XGBLORA_STEPS": "1"}),
            ("mezo.sh", {"MEDIUM": "1", "MODE": "ft"})]
    for i, (script, extra) in enumerate(runs):
        out = tmp_path / f"{i}.json"
        proc = driver(script, {**env, **extra}, "--result_file", str(out), "--disable_tqdm", "True")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "TASK=SST-2 K=4 SEED=42" in proc.stderr  # the resolved configuration is printed
        result = json.loads(out.read_text())
        assert read_state(out).kind == "completed" and metric_value(result, "eval.accuracy") is not None
        assert metric_value(result, "dev.accuracy") is not None
        assert result["trainer"] == ("regular" if "finetune" in script else "zo")
    assert result["config"]["learning_rate"] == 1e-6 and result["config"]["per_device_train_batch_size"] == 4


@pytest.mark.slow
def test_drivers_and_run_refuse_bad_input_with_the_flag_named(roberta_dir, data_dir, tmp_path):
    proc = driver("medium_models/mezo.sh", {"TASK": "SST2"})
    assert proc.returncode == 2 and "TASK=SST2 unknown; known (LM-BFF's names): SST-2" in proc.stderr
    proc = driver("medium_models/mezo.sh", {"DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2 and f"no folder {tmp_path}/SST-2/16-42" in proc.stderr
    proc = subprocess.run([sys.executable, "medium_models/run.py", "--model_name", str(roberta_dir), "--data_dir",
                           str(data_dir), "--num_k", "4", "--seed", "42", "--mapping", "{'0':'terrible','1':'superb'}",
                           "--result_file", str(tmp_path / "x.json")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "label word 'superb'" in proc.stderr and "single token" in proc.stderr
    proc = subprocess.run([sys.executable, "medium_models/run.py", "--task_name", "SST2", "--prefix_tuning"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "--task_name 'SST2': unknown LM-BFF task" in proc.stderr
    assert "--prefix_tuning: not built for medium_models" in proc.stderr


def test_masked_lm_runs_are_named_anew_and_causal_runs_keep_their_names(roberta_dir, tmp_path):
    """Upstream's trainable sets, untied decoder and cut changed what a masked LM's run computes, so its result
    name's hash covers them; a causal LM's run (none of them applies) keeps the name it had."""
    from medium_models.arguments import default_config, parse_args
    from mezo_engine import runner
    from tests.tiny import save_tiny
    causal_dir = save_tiny("gpt2", tmp_path / "gpt2")
    names = {}
    for label, model in (("masked", roberta_dir), ("causal", causal_dir)):
        args = parse_args(["--model_name", str(model), "--trainer", "zo", "--result_dir", str(tmp_path)])
        before = runner.result_path(args, "SST-2", None, False, default_config(), tmp_path)
        now = runner.result_path(args, "SST-2", None, False, default_config(), tmp_path,
                                 run.rule_settings(args, run.is_masked_lm(str(model))))
        names[label] = (before.name, now.name)
    assert names["masked"][0] != names["masked"][1] and names["causal"][0] == names["causal"][1]
    decayed = parse_args(["--model_name", str(causal_dir), "--trainer", "zo", "--weight_decay", "0.1"])
    assert run.rule_settings(decayed, False) == {"zo_decay": "all"}
