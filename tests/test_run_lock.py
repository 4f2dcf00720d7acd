"""One run per output folder (issue 27, section 6): a live holder refuses a second run with one line, before the
model loads; a stale lock (dead pid, or a free flock) is taken over; the lock is gone after a run, also a stopped
one; only rank 0 of a torchrun job locks."""
import json
import socket
import subprocess
import os
import sys

import pytest

from large_models import run
from mezo_engine import run_lock, runner
from mezo_engine.run_lock import LOCK_NAME, OutputLockError


def _write_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _argv(tmp_path, model_dir, data_dir, *flags):
    return ["--model_name", str(model_dir), "--task_name", "SST2", "--data_dir", str(data_dir), "--result_file",
            str(tmp_path / "result.json"), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True",
            "--trainer", "zo", "--num_train", "8", "--train_set_seed", "0", "--num_eval", "4", "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--train_as_classification", "--report_to", "none", *flags]


def test_a_live_holder_refuses_a_second_run_before_the_model_loads(tmp_path, sst2_dir):
    """The holder is simulated by a lock file naming a live process of this host (the test's parent)."""
    holder = os.getppid()
    _write_lock(tmp_path / "out", holder)
    with pytest.raises(SystemExit) as stop:  # the model does not exist: the lock is checked before it loads
        run.main(_argv(tmp_path, tmp_path / "no-model", sst2_dir))
    message = str(stop.value.code)
    assert message.startswith("run.py: error: another run (host ") and "\n" not in message
    assert f"host {socket.gethostname()}, pid {holder})" in message and str(tmp_path / "out") in message
    assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] == holder  # the holder's lock is kept


def test_a_process_holding_the_flock_refuses_the_folder(tmp_path):
    """A real second process that holds the lock (its flock, its pid in the file)."""
    code = (f"from mezo_engine import run_lock; import time; run_lock.acquire({str(tmp_path)!r}); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockError, match=f"pid {holder.pid}\\) is using the output folder {tmp_path}"):
            run_lock.acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    run_lock.acquire(tmp_path)  # the kernel dropped the dead holder's flock: its file is stale, taken over
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    run_lock.release_all()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("host", [None, "another-node"])
def test_a_stale_lock_is_taken_over_and_the_lock_is_gone_after_the_run(tmp_path, tiny_opt_dir, sst2_dir, host,
                                                                       caplog):
    _write_lock(tmp_path / "out", _dead_pid(), host)
    run.main(_argv(tmp_path, tiny_opt_dir, sst2_dir))
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "completed"
    assert "taking over the stale lock" in caplog.text
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_the_lock_is_gone_after_a_stopped_run(tmp_path, tiny_opt_dir, sst2_dir):
    with pytest.raises(SystemExit):
        run.main(_argv(tmp_path, tiny_opt_dir, sst2_dir, "--learning_rate", "1e6", "--logging_steps", "1"))
    assert json.loads((tmp_path / "result.json").read_text())["status"].startswith("diverged at step")
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_an_output_folder_the_run_created_is_removed_when_left_empty(tmp_path):
    run_lock.acquire(tmp_path / "new")
    assert (tmp_path / "new" / LOCK_NAME).is_file()
    run_lock.release_all()
    assert not (tmp_path / "new").exists()


def test_only_rank_0_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    runner.lock_output_dirs([str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("RANK", "0")
    runner.lock_output_dirs([str(tmp_path / "out")])
    assert (tmp_path / "out" / LOCK_NAME).is_file()
    runner.release_output_dirs()


def test_a_folder_that_cannot_hold_a_lock_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputLockError, match="cannot lock the output folder .*file.*--output_dir"):
        run_lock.acquire(tmp_path / "file")
