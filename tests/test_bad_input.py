"""Bad input gets a clear error naming the file, line or flag (never a raw traceback), or a stated behaviour."""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from large_models import run
from large_models.arguments import parse_args
from mezo_engine import hub, models
from mezo_engine.models import ModelError
from large_models.tasks import DataError, get_task
from tests.task_fixtures import NEGATIVE, POSITIVE, write_sst2
from tests.tiny import make_tokenizer, tiny_config

REPO = Path(__file__).resolve().parent.parent
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


def _model_error(tmp_path, model_name: str, *flags: str) -> str:
    _write(tmp_path / "data/SST-2/dev.tsv", GOOD_TSV)
    _write(tmp_path / "data/SST-2/train.tsv", GOOD_TSV)
    with pytest.raises(SystemExit) as err:
        run.main(["--model_name", model_name, "--data_dir", str(tmp_path / "data"),
                  "--result_file", str(tmp_path / "r.json"), *flags])
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


def _refused_before_loading(tmp_path, monkeypatch, model_dir, *flags) -> str:
    """run.py's one-line error for ``model_dir`` with ``flags``, failing the test if the model's weights load."""
    monkeypatch.setattr(run, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("loaded the model"))
    return _model_error(tmp_path, str(model_dir), *flags)


def test_a_masked_lm_is_refused_before_it_loads(tmp_path, monkeypatch):
    from tests.tiny import save_tiny_mlm
    mlm = save_tiny_mlm("roberta", tmp_path / "roberta")
    message = _refused_before_loading(tmp_path, monkeypatch, mlm)
    assert message == (f"run.py: error: --model_name '{mlm}': a masked LM (RobertaForMaskedLM); large_models runs "
                       f"causal LMs, medium_models/run.py runs masked ones")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    small = tmp_path / "small-vocab"
    AutoModelForCausalLM.from_config(tiny_config("opt", vocab_size=200)).save_pretrained(small)
    make_tokenizer().save_pretrained(small)  # 260 tokens
    message = _refused_before_loading(tmp_path, monkeypatch, small)
    assert f"--model_name '{small}': its tokenizer has 260 tokens but the model's vocabulary only 200" in message


@pytest.mark.parametrize("flags, message", [
    (["--xgblora", "--xgblora_num_layers", "3"], "--xgblora_num_layers 3: larger than this model's 2 blocks"),
    (["--prefix_tuning", "--num_prefix", "1025"], "--num_prefix 1025: more than this model's 1024 positions"),
])
def test_mode_flags_beyond_the_model_are_refused_before_it_loads(tmp_path, monkeypatch, tiny_opt_dir, flags,
                                                                 message):
    train = ["--trainer", "zo", "--num_train", "4", "--max_steps", "1"]
    assert message in _refused_before_loading(tmp_path, monkeypatch, tiny_opt_dir, *train, *flags)


def test_a_checkpoint_without_its_lm_head_is_refused(tmp_path):
    """An untied LLaMA whose file lacks lm_head.weight: transformers would start the head random."""
    from safetensors.torch import load_file, save_file
    from tests.tiny import save_tiny
    model = save_tiny("llama", tmp_path / "headless")
    weights = load_file(model / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("lm_head.")}, model / "model.safetensors",
              metadata={"format": "pt"})
    message = _model_error(tmp_path, str(model))
    assert message == (f"run.py: error: --model_name '{model}': its checkpoint has no lm_head.weight (the output "
                       f"layer) and the config does not tie it to the input embeddings; transformers would start it "
                       f"random. Give a complete checkpoint (or set tie_word_embeddings if the model was trained "
                       f"tied)")


def _closed_port_url() -> str:
    """An endpoint on this machine that refuses connections: a port the kernel just handed out and that is closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_the_hub_probe_tells_a_closed_port_from_a_listening_one():
    assert "does not answer: Connection refused" in hub.probe(_closed_port_url())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert hub.probe(f"http://127.0.0.1:{sock.getsockname()[1]}") is None


def test_the_hub_probe_connects_to_the_proxy_the_environment_names(monkeypatch):
    proxy = _closed_port_url()
    monkeypatch.setenv("https_proxy", proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert hub.first_hop("https://hub.example:8443").geturl() == proxy
    assert f"(through the proxy {proxy}) does not answer" in hub.probe("https://hub.example:8443")
    monkeypatch.setenv("no_proxy", "hub.example")
    assert hub.first_hop("https://hub.example:8443").port == 8443


def test_an_unreachable_hub_fails_the_model_without_retries(tmp_path, monkeypatch, caplog):
    for name in hub.OFFLINE_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    url = _closed_port_url()
    monkeypatch.setattr(hub, "endpoint", lambda: url)
    message = _model_error(tmp_path, "nobody-here/no-such-model-xyz")
    assert message == (f"run.py: error: --model_name 'nobody-here/no-such-model-xyz': cannot load it from the "
                       f"HuggingFace hub, which is unreachable ({url} does not answer: Connection refused), and it "
                       f"is not in the local cache; {models.OFFLINE_MODEL_HINT}")
    assert "Retrying" not in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", [
    (["--model_name", "facebook/opt-125m", "--data_dir", "DATA"], "--model_name 'facebook/opt-125m': cannot load it "
                                                                    "from the HuggingFace hub, which is unreachable"),
    ([], "cannot reach the HuggingFace hub to load nyu-mll/glue (unreachable: "),
])
def test_an_unreachable_hub_endpoint_fails_in_one_try(tmp_path, sst2_dir, flags, message):
    """run.py in a process of its own with HF_ENDPOINT on a closed local port and an empty cache: one line, and
    none of the libraries' retries (each a sleep of seconds)."""
    url = _closed_port_url()
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    for name in hub.OFFLINE_SWITCHES:
        env.pop(name, None)
    flags = [str(sst2_dir) if f == "DATA" else f for f in flags]
    done = subprocess.run([sys.executable, "large_models/run.py", "--task_name", "SST2", "--result_file",
                           str(tmp_path / "r.json"), *flags], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "Retrying" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"run.py: error: {message}") and f"{url} does not answer" in last


def test_local_looking_names_are_not_sent_to_the_hub():
    assert models.looks_local("./m") and models.looks_local("/abs/m") and models.looks_local("~/m")
    assert not models.looks_local("facebook/opt-125m")
    with pytest.raises(ModelError, match="not a directory"):
        models.check_model_dir(__file__)


# ---- flags --------------------------------------------------------------------------------------------------
TRAIN = ["--trainer", "zo", "--num_train", "4"]


@pytest.mark.parametrize("flags, message", [
    (TRAIN + ["--max_steps", "0"], "--max_steps 0 with --trainer zo: must be >= 1 (or -1"),
    (["--trainer", "regular", "--num_train", "4", "--num_train_epochs", "0"],
     "--num_train_epochs 0.0 with --trainer regular: must be > 0 (or give --max_steps >= 1)"),
    (["--trainer", "regular", "--num_train", "0"], "--num_train 0 with --trainer regular: nothing to train on"),
    (TRAIN + ["--learning_rate", "0"], "--learning_rate 0.0 with --trainer zo: must be > 0"),
    (TRAIN + ["--learning_rate=-1e-3"], "--learning_rate -0.001 with --trainer zo: must be > 0"),
    (TRAIN + ["--learning_rate", "-1e-3"],
     "--learning_rate -1e-3: a negative value after a space reads as a flag; write --learning_rate=-1e-3"),
    (["--seed=-1"], "--seed -1: must be between 0 and 2**32 - 1"),
    (["--seed", str(2 ** 32)], f"--seed {2 ** 32}: must be between 0 and 2**32 - 1"),
    (["--xgblora_step_per_iteration", "5"],
     "--xgblora_step_per_iteration: unknown flag; did you mean --xgblora_steps_per_iteration?"),
    (["--max_stepz=5"], "--max_stepz: unknown flag; did you mean --max_steps?"),
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
    monkeypatch.setattr(run, "task_for", fail)
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


def test_cut_prompts_are_counted_with_one_demonstration_set_per_example(tmp_path, short_opt_dir, caplog):
    """MeZO's in-context default draws a demonstration set per evaluation example: short examples behind long
    demonstrations are cut too, and counted."""
    short = ["good", "bad", "fine film", "dull"]
    _write(tmp_path / "SST-2/dev.tsv", "sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(short)))
    long_rows = [f"{'a very long review ' * 6}{i}\t{i % 2}\n" for i in range(4)]  # > 64 byte tokens each
    _write(tmp_path / "SST-2/train.tsv", "sentence\tlabel\n" + "".join(long_rows))
    out = tmp_path / "r.json"
    run.main(["--model_name", str(short_opt_dir), "--data_dir", str(tmp_path), "--result_file", str(out),
              "--num_train", "1", "--max_length", "64"])
    result = json.loads(out.read_text())
    assert result["demonstrations"] == "one set per eval example"
    assert result["prompts_cut"] == {"train": 0, "eval": 4}
    assert "4 eval prompt(s) are longer than --max_length 64 tokens" in caplog.text


# ---- a disk that does not take the run's files ----------------------------------------------------------
def test_an_unwritable_output_dir_is_refused_before_anything_loads(tmp_path, monkeypatch):
    """A read-only folder, simulated (the tests may run as root, for whom chmod does not bar writing)."""
    locked = tmp_path / "ro"
    locked.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    message = _refused_before_loading(tmp_path, monkeypatch, "unused-model", "--output_dir", str(locked / "out"))
    assert message == (f"run.py: error: output folder {locked / 'out'} (--output_dir): cannot write in {locked} "
                       f"(Permission denied); choose another --output_dir")


def test_a_result_the_disk_cannot_take_is_printed_not_lost(tmp_path, tiny_opt_dir, monkeypatch, capsys):
    from mezo_engine import results

    def full(path, result):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(results, "write_result", full)
    out = tmp_path / "r.json"  # _model_error's result path
    message = _model_error(tmp_path, str(tiny_opt_dir), "--num_eval", "4")
    assert message == (f"run.py: error: cannot write the result to {out}: the run finished, its result JSON is "
                       f"printed above on stderr (copy it to that path); make room or fix the folder's permissions")
    err = capsys.readouterr().err
    result, _ = json.JSONDecoder().raw_decode(err[err.index("{\n"):])
    assert result["status"] == "completed" and result["num_eval"] == 4 and "accuracy" in result["eval"]
    assert not out.exists()


def test_position_limit_reads_each_architecture():
    from transformers import GPT2Config, LlamaConfig
    assert models.position_limit(GPT2Config(n_positions=40)) == 40
    assert models.position_limit(LlamaConfig(max_position_embeddings=96)) == 96
    assert models.position_limit(object()) is None


# ---- resuming from a checkpoint the run cannot continue honestly -----------------------------------------------
CB_ROWS = [{"premise": f"Premise {i}.", "hypothesis": f"Hypothesis {i}.", "idx": i,
            "label": ["entailment", "contradiction", "neutral"][i % 3]} for i in range(8)]


@pytest.fixture(scope="module")
def sst2_checkpoint(tmp_path_factory, tiny_opt_dir):
    """(data folder with SST-2 and CB, checkpoint-3 of a 6-step SST-2 zo run, the flags of that run)."""
    root = tmp_path_factory.mktemp("resume")
    data = write_sst2(root)
    for split in ("train", "val"):
        _write(data / f"CB/{split}.jsonl", _jsonl(CB_ROWS))
    flags = ["--model_name", str(tiny_opt_dir), "--task_name", "SST2", "--data_dir", str(data), "--num_train", "8",
             "--num_eval", "4", "--trainer", "zo", "--per_device_train_batch_size", "4", "--logging_steps", "1",
             "--train_as_classification", "--report_to", "none", "--disable_tqdm", "True", "--max_steps", "6"]
    run.main([*flags, "--save_strategy", "steps", "--save_steps", "3", "--output_dir", str(root / "ck"),
              "--result_file", str(root / "a.json")])
    return data, root / "ck" / "checkpoint-3", flags


@pytest.mark.parametrize("change, message", [
    (["--task_name", "CB"], "made with other settings (checkpoint -> this run: --task_name SST2 -> CB)"),
    (["--learning_rate", "1e-3"], "made with other settings (checkpoint -> this run: --learning_rate 5e-05 -> 0.001)"),
    (["--max_steps", "2"], "--max_steps 2 is below the checkpoint's step 3; give --max_steps 3 or more"),
    (["--max_steps", "9"], "--max_steps 9 (checkpoint: 6): with --lr_scheduler_type linear the schedule up to step "
                           "3 depends on --max_steps"),
])
def test_resume_refuses_a_checkpoint_it_cannot_continue(tmp_path, sst2_checkpoint, change, message):
    """The issue's reproduction: each case trained on and reported a "completed" result before."""
    data, ckpt, flags = sst2_checkpoint
    with pytest.raises(SystemExit) as err:
        run.main([*flags, *change, "--resume_from_checkpoint", str(ckpt), "--output_dir", str(tmp_path / "o"),
                  "--result_file", str(tmp_path / "b.json")])
    assert str(err.value.code).startswith(f"run.py: error: --resume_from_checkpoint {ckpt}: {message}")
    assert "\n" not in str(err.value.code) and not (tmp_path / "b.json").exists()
