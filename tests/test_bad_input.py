"""Bad input gets a clear error naming the file, line or flag (never a raw traceback), or a stated behaviour."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from large_models import run
from large_models.arguments import parse_args
from mezo_engine import models
from mezo_engine.models import ModelError
from large_models.tasks import DataError, get_task
from tests.task_fixtures import NEGATIVE, POSITIVE
from tests.tiny import make_tokenizer, tiny_config

GOOD_TSV = "sentence\tlabel\n" + "\n".join([f"{t}\t1" for t in POSITIVE] + [f"{t}\t0" for t in NEGATIVE]) + "\n"
RTE_ROW = {"premise": "It rains.", "hypothesis": "It is wet.", "idx": 0, "label": "entailment"}


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# ---- data files ---------------------------------------------------------------------------------------------
# (task, file under data_dir, content, expected message after "<file>")
DATA_CASES = [
    ("SST2", "SST-2/dev.tsv", "", ": the file is empty"),
    ("SST2", "SST-2/dev.tsv", "sentence\tlabel\n", ": no examples (the file is empty or holds only a header)"),
    ("SST2", "SST-2/dev.tsv", "sentence\tlabel\ngood film\t1\nno tab here\n",
     ", line 3: 1 tab-separated field(s), expected 2 (sentence, label)"),
    ("SST2", "SST-2/dev.tsv", "sentence\tlabel\ngood film\t1\nbad film\t2\n", ", line 3: label '2' is not one of 0, 1"),
    ("SST2", "SST-2/dev.tsv", "sentence\tlabel\ngood film\tpos\n", ", line 2: label 'pos' is not one of 0, 1"),
    ("SST2", "SST-2/dev.tsv", "text\tgold\ngood film\t1\n", ", line 1: must be the header 'sentence\\tlabel'"),
    ("SST2", "SST-2/dev.tsv", b"sentence\tlabel\ngood film\t1\ncaf\xe9\t0\n", ", line 3: not UTF-8 text"),
    ("RTE", "RTE/val.jsonl", "", ": no examples"),
    ("RTE", "RTE/val.jsonl", _jsonl([RTE_ROW, RTE_ROW]) + '{"premise": "It rai',
     ", line 3: not valid JSON (Unterminated string"),
    ("RTE", "RTE/val.jsonl", _jsonl([RTE_ROW]) + "[1, 2]\n", ", line 2: expected a JSON object, found list"),
    ("RTE", "RTE/val.jsonl", _jsonl([RTE_ROW, {k: v for k, v in RTE_ROW.items() if k != "hypothesis"}]),
     ", line 2: missing field 'hypothesis' for task RTE"),
    ("RTE", "RTE/val.jsonl", _jsonl([RTE_ROW, {**RTE_ROW, "label": "maybe"}]),
     ", line 2: unexpected label 'maybe'; expected one of ['entailment', 'not_entailment']"),
    ("RTE", "RTE/val.jsonl", _jsonl([{**RTE_ROW, "label": ["entailment"]}]), ", line 1: unexpected label"),
    ("Copa", "COPA/val.jsonl", _jsonl([{"premise": "P", "choice1": "a", "choice2": "b", "question": "cause",
                                        "idx": 0, "label": "1"}]),
     ", line 1: unexpected label '1'; expected one of [0, 1]"),
    ("RTE", "RTE/val.jsonl", _jsonl([RTE_ROW]).encode() + b'{"premise": "\xff"}\n',
     ", line 2: not UTF-8 text"),
    ("SQuAD", "SQuAD/dev-v1.1.json", '{"data": [{"title": "T",\n "paragraphs": [', ", line 2: not valid JSON"),
    ("SQuAD", "SQuAD/dev-v1.1.json",
     json.dumps({"data": [{"paragraphs": [{"qas": [{"id": "1", "question": "Who?", "answers": []}]}]}]}),
     ": missing or malformed field 'context' for task SQuAD"),
]


@pytest.mark.parametrize("task, name, content, message", DATA_CASES)
def test_bad_data_file_names_file_line_and_problem(tmp_path, task, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError) as err:
        get_task(task).load("validation", tmp_path)
    assert f"{path}{message}" in str(err.value)
    with pytest.raises(SystemExit) as exit_:  # the CLI ends with that message alone
        run.main(["--task_name", task, "--data_dir", str(tmp_path), "--result_file", str(tmp_path / "r.json")])
    assert exit_.value.code == f"run.py: error: {err.value}"


def test_hub_labels_outside_the_label_set_are_refused():
    with pytest.raises(DataError, match=r"SST2 row 4: label 2 is not one of 0\.\.1"):
        get_task("SST2").build_sample(4, {"sentence": "x", "label": 2})


def test_cli_bad_eval_label_exits_with_file_and_line(tmp_path, tiny_opt_dir):
    _write(tmp_path / "SST-2/dev.tsv", GOOD_TSV + "odd one\t3\n")
    with pytest.raises(SystemExit) as err:
        run.main(["--model_name", str(tiny_opt_dir), "--data_dir", str(tmp_path),
                  "--result_file", str(tmp_path / "r.json")])
    assert str(err.value.code) == f"run.py: error: {tmp_path / 'SST-2/dev.tsv'}, line 10: label '3' is not one of 0, 1"
    assert not (tmp_path / "r.json").exists()


def test_hub_unreachable_says_how_to_run_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # what an unreachable hub looks like to datasets, no network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as err:
        run.main(["--task_name", "SST2", "--result_file", str(tmp_path / "r.json")])
    message = str(err.value.code)
    assert "cannot reach the HuggingFace hub to load nyu-mll/glue" in message
    assert "DATA_DIR=<folder>" in message and "--data_dir" in message and "MODEL=smollm2-135m" in message


# ---- models -------------------------------------------------------------------------------------------------
def _copy_model(src: Path, dst: Path, drop=()) -> Path:
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


def _model_error(tmp_path, model_name: str) -> str:
    _write(tmp_path / "data/SST-2/dev.tsv", GOOD_TSV)
    with pytest.raises(SystemExit) as err:
        run.main(["--model_name", model_name, "--data_dir", str(tmp_path / "data"),
                  "--result_file", str(tmp_path / "r.json")])
    return str(err.value.code)


def test_missing_model_directory(tmp_path):
    message = _model_error(tmp_path, str(tmp_path / "no-such-model"))
    assert f"--model_name '{tmp_path / 'no-such-model'}': no such directory" in message


def test_model_directory_without_tokenizer_files(tmp_path, tiny_opt_dir):
    bare = _copy_model(tiny_opt_dir, tmp_path / "bare", drop=["tokenizer.json"])
    message = _model_error(tmp_path, str(bare))
    assert f"--model_name '{bare}': no tokenizer files in it (one of tokenizer.json" in message


def test_corrupt_config_json_names_file_and_line(tmp_path, tiny_opt_dir):
    model = _copy_model(tiny_opt_dir, tmp_path / "m")
    (model / "config.json").write_text('{\n  "model_type": "opt",\n  "hidden_size": \n')
    message = _model_error(tmp_path, str(model))
    assert f"{model / 'config.json'} is not valid JSON (line 4:" in message


def test_corrupt_weights_name_the_model(tmp_path, tiny_opt_dir):
    model = _copy_model(tiny_opt_dir, tmp_path / "m")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # truncated
    message = _model_error(tmp_path, str(model))
    assert f"--model_name '{model}': cannot load the model in {model} (damaged weights or config?)" in message


def test_non_gguf_file_is_refused(tmp_path):
    fake = _write(tmp_path / "model.gguf", "<html>not found</html>")
    message = _model_error(tmp_path, str(fake))
    assert f"--model_name '{fake}': not a GGUF file (it starts with b'<htm', not b'GGUF')" in message


def test_truncated_gguf_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MEZO_CACHE", str(tmp_path / "cache"))
    cut = _write(tmp_path / "cut.gguf", b"GGUF\x03\x00\x00\x00\x05")
    message = _model_error(tmp_path, str(cut))
    assert f"--model_name '{cut}': cannot read this GGUF file (truncated or damaged?)" in message
    assert not list((tmp_path / "cache").rglob("config.json"))  # nothing half-converted is cached


def test_unreachable_hub_model_says_how_to_run_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _model_error(tmp_path, "nobody-here/no-such-model-xyz")
    assert "--model_name 'nobody-here/no-such-model-xyz': cannot load it from the HuggingFace hub" in message
    assert "MODEL=smollm2-135m" in message and "local model directory" in message


def test_local_looking_names_are_not_sent_to_the_hub():
    assert models.looks_local("./m") and models.looks_local("/abs/m") and models.looks_local("~/m")
    assert not models.looks_local("facebook/opt-125m")
    with pytest.raises(ModelError, match="not a directory"):
        models.check_model_dir(__file__)


# ---- flags --------------------------------------------------------------------------------------------------
TRAIN = ["--trainer", "zo", "--num_train", "4"]


@pytest.mark.parametrize("flags, message", [
    (TRAIN + ["--max_steps", "0"], "--max_steps 0 with --trainer zo: must be >= 1 (or -1"),
    (["--trainer", "regular", "--num_train", "0"], "--num_train 0 with --trainer regular: nothing to train on"),
    (TRAIN + ["--learning_rate", "0"], "--learning_rate 0.0 with --trainer zo: must be > 0"),
    (TRAIN + ["--learning_rate=-1e-3"], "--learning_rate -0.001 with --trainer zo: must be > 0"),
    (["--load_float16", "--load_bfloat16"], "--load_float16 and --load_bfloat16: choose one"),
    (["--load_bfloat16", "--load_float64"], "--load_bfloat16 and --load_float64: choose one"),
    (["--xgblora"], "--xgblora with --trainer none: an adapter changes nothing until it is trained"),
    (["--lora"], "--lora with --trainer none"),
    (TRAIN + ["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0: must be >= 1"),
    (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size 0: must be >= 1"),
    (["--task_name", "SQuAD", "--max_length", "50"], "--max_length 50: must exceed --max_new_tokens 50"),
    (TRAIN + ["--load_int8"], "--load_int8 with --trainer zo and no --lora/"),
])
def test_bad_flag_is_reported_before_anything_loads(tmp_path, monkeypatch, capsys, flags, message):
    def fail(*args, **kwargs):
        raise AssertionError("loaded something before checking the flags")
    monkeypatch.setattr(run, "load_model_and_tokenizer", fail)
    monkeypatch.setattr(run, "get_task", fail)
    with pytest.raises(SystemExit) as err:
        run.main(flags + ["--result_file", str(tmp_path / "r.json")])
    assert err.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--xgblora"], "--load_int8 with --xgblora on CUDA: merges write into the base weights"),
    (["--lora", "--lora_merge_every", "2"], "--load_int8 with --lora_merge_every 2 on CUDA: merges write into"),
    ([], "--load_int8 with --trainer zo and no --lora/--prefix_tuning"),
])
def test_load_int8_merges_are_refused_on_cuda_only(monkeypatch, capsys, flags, message):
    """bitsandbytes' 8-bit bases (CUDA) take no merges; on the CPU the layers merges write into stay float32, so
    the same flags pass there (and only an adapter mode trains beside an 8-bit base, on either)."""
    if flags and not torch.cuda.is_available():
        parse_args(TRAIN + ["--load_int8", *flags])  # the CPU path takes them
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit) as err:
        parse_args(TRAIN + ["--load_int8", *flags])
    assert err.value.code == 2 and message in capsys.readouterr().err


# ---- prompts longer than the model's positions --------------------------------------------------------------
@pytest.fixture(scope="module")
def short_opt_dir(tmp_path_factory):
    """A tiny OPT model with 64 positions."""
    path = tmp_path_factory.mktemp("short-opt")
    config = tiny_config("opt")
    config.max_position_embeddings = 64
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("trainer", ["none", "zo"])
def test_max_length_is_capped_to_the_position_limit_and_cut_prompts_counted(tmp_path, short_opt_dir, trainer,
                                                                            caplog):
    long_texts = ["a very long review " * 6, "another long and dull one " * 5]  # > 64 byte tokens each
    short_texts = ["good", "bad", "fine film", "dull"]
    rows = [f"{t}\t{i % 2}" for i, t in enumerate(long_texts + short_texts)]
    _write(tmp_path / "SST-2/dev.tsv", "sentence\tlabel\n" + "\n".join(rows) + "\n")
    _write(tmp_path / "SST-2/train.tsv", "sentence\tlabel\n" + "\n".join(rows[2:]) + "\n")
    out = tmp_path / "r.json"
    flags = ["--trainer", "zo", "--num_train", "4", "--max_steps", "1", "--per_device_train_batch_size", "2",
             "--train_as_classification"] if trainer == "zo" else []
    run.main(["--model_name", str(short_opt_dir), "--data_dir", str(tmp_path), "--result_file", str(out),
              "--disable_tqdm", "True", "--max_length", "5000", *flags])
    result = json.loads(out.read_text())
    assert result["config"]["max_length"] == 64 and result["num_eval"] == 6
    assert result["prompts_cut"] == {"train": 0, "eval": 2}
    assert "--max_length 5000 is more than this model's 64 positions" in caplog.text
    assert "2 eval prompt(s) are longer than --max_length 64 tokens" in caplog.text


def test_position_limit_reads_each_architecture():
    from transformers import GPT2Config, LlamaConfig
    assert models.position_limit(GPT2Config(n_positions=40)) == 40
    assert models.position_limit(LlamaConfig(max_position_embeddings=96)) == 96
    assert models.position_limit(object()) is None
