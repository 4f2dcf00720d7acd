"""Results are never lost or silently replaced: path checks, strict atomic writes, names, overwrite refusal."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from large_models import run
from mezo_engine import results
from large_models.arguments import default_config, parse_args
from mezo_engine.results import ResultPathError, check_result_path, write_result

REPO = Path(__file__).resolve().parent.parent


def _strict_load(path: Path):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


# ---- strict, atomic writing ---------------------------------------------------------------------------------
def test_write_result_turns_non_finite_floats_into_null(tmp_path):
    result = {"loss": float("nan"), "log": [{"loss": float("inf")}, {"loss": 0.5}], "acc": (float("-inf"), 1.0)}
    path = write_result(tmp_path / "r.json", result)
    assert _strict_load(path) == {"loss": None, "log": [{"loss": None}, {"loss": 0.5}], "acc": [None, 1.0]}
    json.dumps(results.strict(result), allow_nan=False)  # what the writer relies on


def test_write_result_replaces_atomically_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_result(path, {"run": 1})
    write_result(path, {"run": 2})
    assert _strict_load(path) == {"run": 2}

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(results.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_result(path, {"run": 3})
    assert _strict_load(path) == {"run": 2}  # the old result is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # and no temporary file is left


# ---- checks before the run ----------------------------------------------------------------------------------
def test_result_path_under_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ResultPathError, match=r"afile is a file, not a folder"):
        check_result_path(tmp_path / "afile" / "sub" / "r.json", overwrite=False)


def test_result_path_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(ResultPathError, match="is a directory"):
        check_result_path(tmp_path, overwrite=True)


def test_result_path_in_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits: make the OS answer as it would for a normal user
        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(results.tempfile, "mkstemp", denied)
    try:
        with pytest.raises(ResultPathError, match=rf"cannot write in {folder} \(Permission denied\)"):
            check_result_path(folder / "r.json", overwrite=False)
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("content, refused", [
    ({"eval": {"accuracy": 0.9}}, True),                        # an old result, without status: complete
    ({"status": "completed", "eval": {}}, True),
    ({"status": "interrupted at step 5"}, False),
    ({"status": "diverged at step 3"}, False),
    ("not json at all", True),                                  # some other file: never replaced silently
])
def test_existing_result_is_refused_unless_incomplete_or_overwrite(tmp_path, content, refused):
    path = tmp_path / "r.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    if refused:
        with pytest.raises(ResultPathError, match="--overwrite"):
            check_result_path(path, overwrite=False)
    else:
        check_result_path(path, overwrite=False)
    check_result_path(path, overwrite=True)


def test_a_result_completed_meanwhile_by_another_run_is_kept(tmp_path):
    path = tmp_path / "r.json"
    check_result_path(path, overwrite=False)
    write_result(path, {"run": "other"})  # another run with the same name finishes first
    written = results.publish_result(path, {"run": "this"}, overwrite=False)
    assert written != path and written.parent == tmp_path and written.name.startswith("r.")
    assert _strict_load(path) == {"run": "other"} and _strict_load(written) == {"run": "this"}
    assert results.publish_result(path, {"run": "forced"}, overwrite=True) == path
    assert _strict_load(path) == {"run": "forced"}


# ---- names --------------------------------------------------------------------------------------------------
BASE = ["--task_name", "SST2", "--model_name", "org/opt-1.3b", "--tag", "t", "--trainer", "zo", "--num_train", "8",
        "--max_steps", "4", "--xgblora", "--xgblora_steps_per_iteration", "2"]


def _name(*flags):
    return run.result_path(parse_args(BASE + list(flags)), 0, False).name


@pytest.mark.parametrize("flags", [
    ["--output_dir", "/elsewhere"], ["--result_dir", "/elsewhere"], ["--logging_steps", "7"],
    ["--resume_from_checkpoint", "auto"], ["--overwrite"], ["--disable_tqdm", "True"], ["--verbose"],
    ["--per_device_eval_batch_size", "3"], ["--save_strategy", "steps", "--save_steps", "5"],
    ["--save_model"], ["--data_dir", "/some/data"], ["--eval_strategy", "steps", "--eval_steps", "2"],
])
def test_name_ignores_settings_that_do_not_change_the_result(flags):
    assert _name(*flags) == _name()


@pytest.mark.parametrize("flags", [
    ["--xgblora_num_layers", "1"], ["--num_train", "9"], ["--num_dev", "2"], ["--num_eval", "5"],
    ["--learning_rate", "1e-4"], ["--seed", "1"], ["--train_set_seed", "1"], ["--zo_eps", "1e-2"],
    ["--max_steps", "5"], ["--xgblora_rank", "2"], ["--lora_alpha", "8"], ["--max_length", "512"],
    ["--load_best_model_at_end"], ["--per_device_train_batch_size", "4"], ["--model_name", "other/opt-1.3b"],
])
def test_name_changes_with_every_setting_that_changes_the_result(flags):
    assert _name(*flags) != _name()
    assert _name(*flags).startswith("SST2-opt-1.3b-t-") or "--model_name" in flags


def test_a_flag_left_at_its_default_does_not_change_names():
    """A flag added later (here: a new config key) at its default value keeps every earlier run's name; at
    another value it names the run apart. A flag given explicitly at its default names the run as if omitted."""
    args = parse_args(BASE)
    config, defaults = args.to_dict(), dict(default_config())
    digest = results.config_hash(config, args.keep_best_model, defaults)
    later = {**defaults, "new_flag": 3}
    assert results.config_hash({**config, "new_flag": 3}, args.keep_best_model, later) == digest
    assert results.config_hash({**config, "new_flag": 4}, args.keep_best_model, later) != digest
    assert _name("--zo_eps", "1e-3") == _name()  # 1e-3 is --zo_eps' default


def test_eval_schedule_names_the_run_only_when_the_best_dev_model_is_kept():
    keep = ["--load_best_model_at_end", "--eval_strategy", "steps"]
    assert _name(*keep, "--eval_steps", "2") != _name(*keep, "--eval_steps", "3")
    assert _name("--eval_strategy", "steps", "--eval_steps", "2") == _name("--eval_strategy", "steps",
                                                                           "--eval_steps", "3")


# ---- through the CLI ----------------------------------------------------------------------------------------
def _no_model(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the result path was checked")
    monkeypatch.setattr(run, "load_model_and_tokenizer", fail)


def test_cli_refuses_a_bad_result_file_before_loading(tmp_path, monkeypatch):
    _no_model(monkeypatch)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as err:
        run.main(["--result_file", str(tmp_path / "afile" / "r.json"), "--data_dir", str(tmp_path / "nodata")])
    bad = tmp_path / "afile"
    assert f"result file {bad / 'r.json'}: {bad} is a file, not a folder; choose another" in str(err.value.code)


def test_cli_refuses_to_replace_a_complete_result_and_overwrite_replaces_it(tmp_path, monkeypatch, tiny_opt_dir):
    from tests.task_fixtures import NEGATIVE, POSITIVE
    (tmp_path / "SST-2").mkdir()
    rows = [f"{t}\t1" for t in POSITIVE] + [f"{t}\t0" for t in NEGATIVE]
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"eval": {"accuracy": 0.99}}))
    argv = ["--model_name", str(tiny_opt_dir), "--data_dir", str(tmp_path), "--result_file", str(out),
            "--disable_tqdm", "True", "--num_eval", "4"]
    with monkeypatch.context() as m:
        _no_model(m)
        with pytest.raises(SystemExit) as err:
            run.main(argv)
    assert f"result file {out}: it holds a completed result; pass --overwrite" in str(err.value.code)
    assert json.loads(out.read_text()) == {"eval": {"accuracy": 0.99}}
    run.main(argv + ["--overwrite"])
    assert _strict_load(out)["num_eval"] == 4


def _driver(tmp_path, tiny_opt_dir, data_dir, layers):
    env = {**os.environ, "MODEL": str(tiny_opt_dir), "TASK": "SST2", "MODE": "xgblora", "DATA_DIR": str(data_dir),
           "STEPS": "1", "TRAIN": "4", "DEV": "0", "EVAL": "2", "BS": "2", "XGBLORA_STEPS": "1",
           "XGBLORA_LAYERS": str(layers)}
    proc = subprocess.run(["bash", "mezo.sh", "--result_dir", str(tmp_path), "--disable_tqdm", "True"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    return proc


@pytest.mark.slow
def test_driver_runs_differing_in_xgblora_layers_get_their_own_result_and_output_dir(tmp_path, tiny_opt_dir):
    from tests.task_fixtures import NEGATIVE, POSITIVE
    data = tmp_path / "data"
    (data / "SST-2").mkdir(parents=True)
    rows = "\n".join([f"{t}\t1" for t in POSITIVE] + [f"{t}\t0" for t in NEGATIVE])
    for name in ("train.tsv", "dev.tsv"):
        (data / "SST-2" / name).write_text("sentence\tlabel\n" + rows + "\n")
    out = tmp_path / "results"
    for layers in (1, 2):
        proc = _driver(out, tiny_opt_dir, data, layers)
        assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(out.glob("*.json"))
    assert len(files) == 2 and all(f.name.startswith(f"SST2-{tiny_opt_dir.name}-mezo-xgblora-k1-") for f in files)
    configs = [json.loads(f.read_text())["config"] for f in files]
    assert sorted(c["xgblora_num_layers"] for c in configs) == [1, 2]
    assert [c["output_dir"] for c in configs] == [str(f.with_suffix("")) for f in files]
    again = _driver(out, tiny_opt_dir, data, 1)  # the same command again: same name, refused before loading
    assert again.returncode != 0 and "holds a completed result; pass --overwrite" in again.stderr
    assert "Traceback" not in again.stderr and sorted(out.glob("*.json")) == files

