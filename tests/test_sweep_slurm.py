"""The sweep's SLURM path against a real SLURM (submitit job arrays); skipped where no controller answers.

On a machine without a cluster, start a single-node one (root, Debian):
    apt-get install slurm-wlm munge
    bash scripts/slurm_local_cluster.sh start /tmp/slurm-local && export SLURM_CONF=/tmp/slurm-local/slurm.conf
    python -m pytest tests/test_sweep_slurm.py
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps.load import load_sweep
from sweeps.state import read_state
from tests.sweep_fixtures import write_sweep

REPO = Path(__file__).resolve().parent.parent


def _no_slurm() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    if not shutil.which("sbatch"):
        return "no sbatch here (see scripts/slurm_local_cluster.sh for a single-node cluster)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout.strip():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"sbatch is here but no SLURM controller answers sinfo ({last}); set SLURM_CONF or start one"
    return None


NO_SLURM = _no_slurm()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))]


def _sweep(sweep_file, *flags):
    return subprocess.run([sys.executable, "scripts/sweep.py", str(sweep_file), "--executor", "slurm", "--wait",
                           "--cpus-per-run", "1", *flags], cwd=REPO, capture_output=True, text=True, timeout=600)


def _calls(point) -> list[list[str]]:
    path = point.output_dir / "calls"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_job_array_runs_points_and_a_rerun_resumes_only_the_interrupted(tmp_path):
    body = '[grid]\nOUTCOME = ["completed", "diverged", "interrupt_once"]\n[slurm]\ntime = 5\n'
    sweep_file = write_sweep(tmp_path, body)
    first = _sweep(sweep_file)
    assert first.returncode == 1, first.stdout + first.stderr  # one run was interrupted
    assert "submitted job array" in first.stdout
    completed, diverged, interrupted = load_sweep(sweep_file).points()
    assert read_state(completed.result_file).kind == "completed"
    assert read_state(diverged.result_file).detail == "diverged at step 3"
    assert read_state(interrupted.result_file).detail == "interrupted at step 2"
    assert _calls(completed)[0][1] == "1"  # OMP_NUM_THREADS from the array task's --cpus-per-task

    second = _sweep(sweep_file)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "3 points: 1 skip, 1 no retry, 1 resume" in second.stdout
    assert [len(_calls(p)) for p in (completed, diverged, interrupted)] == [1, 1, 2]
    assert read_state(interrupted.result_file).kind == "completed"
    assert list((tmp_path / "results" / "slurm").glob("*_log.out"))  # submitit's per-task logs


def test_time_limit_sends_sigterm_and_the_run_is_left_resumable(tmp_path):
    # 1 minute limit, SIGTERM 50 s before it: the stand-in for run.py writes "interrupted" and exits 75
    body = '[fixed]\nOUTCOME = "wait_term"\n[grid]\nSEED = [0]\n[slurm]\ntime = 1\nsignal_grace = 50\n'
    sweep_file = write_sweep(tmp_path, body)
    proc = _sweep(sweep_file)
    point = load_sweep(sweep_file).points()[0]
    assert read_state(point.result_file).detail == "interrupted at step 1", proc.stdout + proc.stderr
    assert proc.returncode == 1 and "interrupted at step 1" in proc.stdout


def test_an_option_sbatch_refuses_is_reported_without_a_traceback(tmp_path):
    proc = _sweep(write_sweep(tmp_path, '[grid]\nSEED = [0]\n'), "--partition", "no-such-partition")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "sweep.py: error: sbatch refused the job array" in proc.stderr and "no-such-partition" in proc.stderr
