"""Preemption and divergence through the real CLI: a real signal to a real run.py process, and a huge LR."""
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from large_models import run
from mezo_engine import checkpoint, lora
from mezo_engine.checkpoint import RESUMABLE_EXIT, RUN_STATE, StopOnSignal

REPO = Path(__file__).resolve().parent.parent
STEPS = 200


def _command(tmp_path, model_dir, data_dir, *flags):
    return [sys.executable, "large_models/run.py", "--model_name", str(model_dir), "--task_name", "SST2",
            "--data_dir", str(data_dir), "--result_file", str(tmp_path / "result.json"), "--output_dir",
            str(tmp_path / "out"), "--disable_tqdm", "True", "--trainer", "zo", "--num_train", "8",
            "--train_set_seed", "0", "--num_eval", "4", "--max_steps", str(STEPS), "--per_device_train_batch_size",
            "4", "--train_as_classification", "--learning_rate", "1e-3", "--logging_steps", "1",
            "--resume_from_checkpoint", "auto", "--report_to", "none", *flags]


def _signal_after_first_step(command, sig):
    """Start ``command``, send ``sig`` once it has logged a training loss, return (exit code, stdout, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "'loss'" in line:
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + out, err


@pytest.mark.parametrize("stop", [True, False])
def test_a_repeated_signal_after_the_stop_cannot_end_the_process(stop):
    """Once a stop is decided, a second SIGTERM must not reach the previous handler (in run.py the default one,
    which ends the process with 143 although the checkpoint is written); without a stop the previous handler
    comes back. A recording handler stands in for the default one."""
    from transformers import TrainerControl, TrainerState
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        stopper = StopOnSignal()
        stopper.install()
        if stop:
            os.kill(os.getpid(), signal.SIGTERM)
        control = TrainerControl()
        stopper.on_step_end(None, TrainerState(global_step=3), control)
        stopper.restore_handlers()
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (stopper.stopped, control.should_save) == ((("SIGTERM", 3), True) if stop else (None, False))
    assert seen == ([] if stop else [signal.SIGTERM])


@pytest.mark.slow
def test_two_sigterms_in_quick_succession_exit_resumably(tmp_path, tiny_opt_dir, sst2_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_command(tmp_path, tiny_opt_dir, sst2_dir), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if "'loss'" in line:
            for gap in (0.0, 0.15):
                time.sleep(gap)
                proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == RESUMABLE_EXIT, err[-3000:]
    assert _result(tmp_path)["status"].startswith("interrupted at step ")


def _full_disk_in(folder: str):
    """A torch.save that fails as a full disk does (ENOSPC) for files under ``folder``."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if folder in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real(obj, f, *args, **kwargs)
    return save


def test_a_checkpoint_the_disk_cannot_take_ends_the_run_resumably(tmp_path, tiny_opt_dir, sst2_dir, monkeypatch,
                                                                  capsys):
    """checkpoint-4 cannot be written: exit 75 with one line, the part of it that was written removed, the result
    interrupted at step 4; the next run resumes from checkpoint-2 and completes."""
    argv = _command(tmp_path, tiny_opt_dir, sst2_dir, "--save_strategy", "steps", "--save_steps", "2")[2:]
    argv[argv.index("--max_steps") + 1] = "6"
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(torch, "save", _full_disk_in(str(out / "checkpoint-4")))
        with pytest.raises(SystemExit) as stop:
            run.main(argv)
    assert stop.value.code == RESUMABLE_EXIT
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"run.py: error: cannot write checkpoint-4 in {out} (No space left on device); removed what was "
                    f"written of it; make room and re-run with --resume_from_checkpoint auto to continue from the "
                    f"latest complete checkpoint; result in {tmp_path / 'result.json'}")
    assert not (out / "checkpoint-4").exists() and (out / "checkpoint-2" / RUN_STATE).is_file()
    assert _result(tmp_path)["status"] == "interrupted at step 4"
    run.main(argv)
    result = _result(tmp_path)
    assert result["status"] == "completed" and result["train"]["global_step"] == 6 and "eval" in result


def test_a_failed_save_is_told_from_other_errors():
    """torch.save reports a full disk without a reason: a probe write into the folder gives it; an error with a
    complete checkpoint folder, or none, and no write errno is not a disk failure."""
    from mezo_engine import disk
    full = OSError(errno.ENOSPC, "No space left on device")
    assert disk.errno_reason(RuntimeError("wrapped")) is None
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    wrapped.__context__ = RuntimeError("basic_ios::clear: iostream error")
    assert disk.errno_reason(wrapped) is None
    chained = ValueError("outer")
    chained.__cause__ = full
    assert disk.errno_reason(chained) == "No space left on device"
    assert disk.errno_reason(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert disk.errno_reason(OSError(errno.ENOENT, "No such file")) is None


def test_an_unexplained_error_during_a_save_is_a_disk_failure_only_if_the_disk_says_so(tmp_path, monkeypatch):
    from mezo_engine import disk
    (tmp_path / "checkpoint-3").mkdir()
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert disk.failed_checkpoint(torch_error, tmp_path, 3, RUN_STATE) is None  # the disk takes a probe: a bug
    monkeypatch.setattr(disk, "probe_write", lambda folder: "No space left on device")
    assert "cannot write checkpoint-3 in" in disk.failed_checkpoint(torch_error, tmp_path, 3, RUN_STATE)
    assert not (tmp_path / "checkpoint-3").exists()
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / RUN_STATE).write_bytes(b"")
    assert disk.failed_checkpoint(torch_error, tmp_path, 5, RUN_STATE) is None  # complete: not a save failure


def _result(tmp_path):
    return json.loads((tmp_path / "result.json").read_text())


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_auto_resume_continues(tmp_path, tiny_opt_dir, sst2_dir):
    command = _command(tmp_path, tiny_opt_dir, sst2_dir)
    code, _, err = _signal_after_first_step(command, signal.SIGTERM)
    assert code == RESUMABLE_EXIT, err[-3000:]
    result = _result(tmp_path)
    stopped = int(result["status"].removeprefix("interrupted at step "))
    assert 1 <= stopped < STEPS and "eval" not in result and result["train"]["signal"] == "SIGTERM"
    assert (tmp_path / "out" / f"checkpoint-{stopped}" / RUN_STATE).is_file()
    assert "--resume_from_checkpoint auto" in err
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {tmp_path / 'out' / f'checkpoint-{stopped}'}" in done.stderr
    result = _result(tmp_path)
    assert result["status"] == "completed" and result["train"]["global_step"] == STEPS and "eval" in result
    steps = [h["step"] for h in result["train"]["log_history"] if "loss" in h]
    assert steps == list(range(1, STEPS + 1))  # the losses before the stop are kept, none is repeated


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGINT])
def test_save_on_interrupt_saves_the_model_and_stops(tmp_path, tiny_opt_dir, sst2_dir, sig):
    """Upstream MeZO's --save_on_interrupt: SIGUSR1 or SIGINT saves the model and stops."""
    code, _, err = _signal_after_first_step(_command(tmp_path, tiny_opt_dir, sst2_dir, "--save_on_interrupt"), sig)
    assert code == RESUMABLE_EXIT, err[-3000:]
    result = _result(tmp_path)
    assert result["status"].startswith("interrupted at step ") and result["train"]["signal"] == sig.name
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    stopped = result["status"].removeprefix("interrupted at step ")
    assert (tmp_path / "out" / f"checkpoint-{stopped}" / RUN_STATE).is_file()


def _strict_json(path):
    def refuse(token):
        raise AssertionError(f"{path} holds {token}: not JSON")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


@pytest.mark.parametrize("trainer", ["zo", "regular"])
def test_huge_learning_rate_stops_with_diverged_status(tmp_path, tiny_opt_dir, sst2_dir, trainer):
    out = tmp_path / "result.json"
    with pytest.raises(SystemExit) as stop:
        run.main(["--model_name", str(tiny_opt_dir), "--task_name", "SST2", "--data_dir", str(sst2_dir),
                  "--result_file", str(out), "--output_dir", str(tmp_path / "o"), "--disable_tqdm", "True",
                  "--trainer", trainer, "--num_train", "8", "--train_set_seed", "0", "--num_eval", "4",
                  "--max_steps", "30", "--per_device_train_batch_size", "4", "--train_as_classification",
                  "--learning_rate", "1e6", "--logging_steps", "1", "--logging_nan_inf_filter", "false",
                  "--report_to", "none"])
    message = str(stop.value.code)
    assert "diverged at step" in message and "--learning_rate" in message
    result = _strict_json(out)
    step = int(result["status"].removeprefix("diverged at step "))
    assert 1 <= step <= 30 and f"diverged at step {step}" in message
    assert "eval" not in result and "eval_predictions" not in result


def _booster_model():
    from tests.tiny import make_model
    torch.manual_seed(0)
    pm = lora.attach_lora(make_model("opt", layers=2), r=1, alpha=16)
    return pm, [layer.lora_B["default"].weight for _, layer in lora.lora_layers(pm)]


def test_merge_refuses_a_non_finite_delta_and_leaves_the_model_alone():
    pm, bs = _booster_model()
    for b in bs:
        torch.nn.init.normal_(b)
    bs[-1].data[0, 0] = float("nan")
    before = {n: w.clone() for n, w in lora.base_weights(pm).items()}
    with pytest.raises(lora.NonFiniteDeltaError, match="NaN/inf.*--learning_rate"):
        lora.merge_and_reinit(pm, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(w, before[n]) for n, w in lora.base_weights(pm).items())


@pytest.mark.parametrize("size, ratio, warned", [(1e3, 1.0, True), (1e-3, 1.0, False), (1e3, 0.0, False)])
def test_merge_warns_when_the_delta_outgrows_the_weight(caplog, size, ratio, warned):
    pm, bs = _booster_model()
    for b in bs:
        b.data.fill_(size)
    lora.merge_and_reinit(pm, generator=torch.Generator().manual_seed(0), warn_ratio=ratio)
    assert ("exceeds" in caplog.text) is warned


@pytest.mark.slow
def test_sigterm_to_the_driver_reaches_run_py(tmp_path, tiny_opt_dir, sst2_dir):
    env = {"MODEL": str(tiny_opt_dir), "TASK": "SST2", "MODE": "xgblora", "DATA_DIR": str(sst2_dir),
           "STEPS": str(STEPS), "TRAIN": "8", "DEV": "0", "EVAL": "4", "BS": "4", "XGBLORA_STEPS": "2"}
    command = ["env", *[f"{k}={v}" for k, v in env.items()], "bash", "large_models/mezo.sh", "--result_file",
               str(tmp_path / "result.json"), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True",
               "--logging_steps", "1"]
    code, _, err = _signal_after_first_step(command, signal.SIGTERM)
    assert code == RESUMABLE_EXIT, err[-3000:]
    assert _result(tmp_path)["status"].startswith("interrupted at step ")


def test_merge_warn_ratio_must_not_be_negative():
    from large_models.arguments import ArgumentError, Arguments
    from transformers import HfArgumentParser
    with pytest.raises(ArgumentError, match="--merge_warn_ratio -1.0: must be >= 0"):
        HfArgumentParser(Arguments).parse_args_into_dataclasses(args=["--merge_warn_ratio=-1"])


class _Killed(BaseException):
    """Stands for the process dying while it writes a checkpoint (not an Exception: nothing may handle it)."""


def test_a_crash_while_checkpointing_keeps_the_previous_checkpoint_and_auto_resumes_from_it(
        tmp_path, tiny_opt_dir, sst2_dir, monkeypatch, caplog):
    """--save_total_limit 1: checkpoint-3 goes only once checkpoint-6 is complete. The Trainer used to delete it
    before run_state.pt was written, so a crash there left no checkpoint to resume from."""
    command = _command(tmp_path, tiny_opt_dir, sst2_dir, "--max_steps", "8", "--save_strategy", "steps",
                       "--save_steps", "3", "--save_total_limit", "1")[2:]  # run.main's argv
    real_write, written = checkpoint.write_whole, []

    def write_then_die(obj, path):
        if path.parent.name == "checkpoint-6":
            path.with_name(f".{path.name}.tmp").write_bytes(b"half a run st")
            raise _Killed
        written.append(path.parent.name)
        real_write(obj, path)

    monkeypatch.setattr(checkpoint, "write_whole", write_then_die)
    with pytest.raises(_Killed):
        run.main(command)
    out = tmp_path / "out"
    assert written == ["checkpoint-3"] and (out / "checkpoint-3" / RUN_STATE).is_file()
    assert not (out / "checkpoint-6" / RUN_STATE).exists()
    monkeypatch.setattr(checkpoint, "write_whole", real_write)
    caplog.set_level(logging.INFO, logger="mezo_engine.checkpoint")
    run.main(command)
    assert f"skipping {out / 'checkpoint-6'}: no {RUN_STATE}" in caplog.text
    assert f"resuming from {out / 'checkpoint-3'}" in caplog.text
    result = _result(tmp_path)
    assert result["status"] == "completed" and result["train"]["global_step"] == 8
    assert [h["step"] for h in result["train"]["log_history"] if "loss" in h] == list(range(1, 9))
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-8", "damaged-checkpoint-6"]
