"""scripts/sweep.py: grid expansion and names, result states, skip / resume / no-retry, the local queue and its
pinning, dry runs, SIGTERM to a running sweep, and one sweep through the real mezo.sh on a tiny model."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps import cli
from sweeps.load import load_sweep
from sweeps.local import SlotError, make_slots
from sweeps.slurm import SlurmOptionError, executor_parameters, slurm_options, time_minutes
from sweeps.spec import SweepError
from sweeps.state import read_state
from tests.sweep_fixtures import write_result, write_sweep

REPO = Path(__file__).resolve().parent.parent
SST2_ROWS = ["a joy to watch \t1", "warm and wise \t1", "boring \t0", "dull and lifeless \t0"]
GRID = """
[fixed]
TASK = "SST2"
LR = 1e-5
"--max_length" = 64

[[grid]]
MODE = ["lora"]
SEED = [0, 1]

[[grid]]
MODE = ["xgblora", "lora"]
XGBLORA_STEPS = [10, 20]
SEED = [0]
"""


def test_grid_is_the_union_of_products_with_formatted_values(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, GRID))
    points = sweep.points()
    # 2 lora seeds + (2 modes x 2 kappas x 1 seed); no point of the second grid equals one of the first
    assert len(points) == 6
    assert sweep.variables() == ["MODE", "SEED", "XGBLORA_STEPS"]
    first = points[0]
    assert first.variables == {"MODE": "lora", "SEED": "0"}
    assert first.env() == {"TASK": "SST2", "LR": "1e-5", "MODE": "lora", "SEED": "0"}
    assert first.flags() == ["--max_length", "64"]
    assert first.name.startswith("MODE=lora,SEED=0-") and first.result_file.parent == tmp_path / "results"
    assert len({p.name for p in points}) == 6


def test_a_point_two_grids_share_runs_once(tmp_path):
    body = '[[grid]]\nMODE = ["lora"]\nSEED = [0, 1]\n[[grid]]\nMODE = ["lora", "ft"]\nSEED = [1]\n'
    points = load_sweep(write_sweep(tmp_path, body)).points()
    assert [p.label() for p in points] == ["MODE=lora SEED=0", "MODE=lora SEED=1", "MODE=ft SEED=1"]


def test_names_are_stable_and_change_with_any_setting(tmp_path):
    names = [p.name for p in load_sweep(write_sweep(tmp_path, GRID)).points()]
    assert names == [p.name for p in load_sweep(write_sweep(tmp_path, GRID)).points()]
    changed_fixed = [p.name for p in load_sweep(write_sweep(tmp_path, GRID.replace("1e-5", "2e-5"))).points()]
    changed_flag = [p.name for p in load_sweep(write_sweep(tmp_path, GRID.replace("= 64", "= 128"))).points()]
    assert not set(names) & set(changed_fixed) and not set(names) & set(changed_flag)


def test_a_point_with_a_task_file_is_renamed_when_the_files_change(tmp_path):
    """TASK_FILE's bytes and its data files' enter the point's hash: an edited file is a new point, not a done one."""
    (tmp_path / "t.jsonl").write_text('{"x": "a", "y": "b"}\n')
    task = tmp_path / "task.toml"
    task.write_text('eval = "t.jsonl"\ntemplate = "{x}"\nanswer_field = "y"\n')
    body = f'[fixed]\nTASK = "custom"\nTASK_FILE = "{task}"\n[grid]\nLR = ["1e-5"]\n'
    names = [load_sweep(write_sweep(tmp_path, body)).points()[0].name]
    (tmp_path / "t.jsonl").write_text('{"x": "a", "y": "c"}\n')
    names.append(load_sweep(write_sweep(tmp_path, body)).points()[0].name)
    assert names[0] != names[1] and names[0].startswith("LR=1e-5-")
    task.unlink()
    with pytest.raises(SweepError, match=f"TASK_FILE={task}: task file {task}: no such file"):
        load_sweep(write_sweep(tmp_path, body)).points()


@pytest.mark.parametrize("body, message", [
    ("[grd]\nX = [1]\n", "unknown table [grd]"),
    ("[grid]\nLR = 1e-5\n", "LR = 1e-05: give a non-empty list"),
    ("[grid]\nLR = []\n", "LR = []: give a non-empty list"),
    ("[fixed]\nLR = 1\n[grid]\nLR = [1, 2]\n", "LR is both in [fixed] and in [grid]"),
    ('[grid]\n"--output_dir" = ["a"]\n', "--output_dir: sets the run's location"),
    ('[grid]\n"bad-name" = [1]\n', "'bad-name': not a driver variable name"),
    ("[grid]\nLR = [[1]]\n", "[grid] LR: [1] is not a string"),
])
def test_bad_sweep_files_name_the_key_and_value(tmp_path, body, message):
    with pytest.raises(SweepError) as err:
        load_sweep(write_sweep(tmp_path, body))
    assert message in str(err.value) and "t.toml" in str(err.value)


@pytest.mark.parametrize("driver, body, message", [
    ("mezo.sh", '[fixed]\nMODEE = "xgblora"\n', "[fixed] MODEE: mezo.sh reads no such variable; did you mean MODE?"),
    ("mezo.sh", "[grid]\nEPOCH = [1, 2]\n", "[grid] EPOCH: mezo.sh reads no such variable"),  # finetune.sh's
    ("icl.sh", "[grid]\nLORA_R = [4]\n", "[grid] LORA_R: icl.sh reads no such variable"),  # no mode to read it
    (None, '[grid]\nXGBLORA_STEP = [10]\n', "reads no such variable; did you mean XGBLORA_STEPS?"),
])
def test_a_variable_the_driver_does_not_read_is_refused_with_the_closest_name(tmp_path, driver, body, message):
    """A misspelt variable would be exported and ignored (MODEE: every run plain full-parameter training). A
    driver given by path (here the tests' stand-in) may also set what any repository driver reads."""
    with pytest.raises(SweepError) as err:
        load_sweep(write_sweep(tmp_path, body, driver=driver))
    assert message in str(err.value)


def _with_head(path: Path, line: str) -> Path:
    """The sweep file at ``path`` with ``line`` added to its [sweep] table."""
    path.write_text(path.read_text().replace("[sweep]\n", f"[sweep]\n{line}\n", 1))
    return path


def test_an_over_that_names_no_key_of_the_sweep_is_refused(tmp_path):
    with pytest.raises(SweepError, match="over = 'SEEDZ': not a key of this sweep; did you mean SEED?"):
        load_sweep(_with_head(write_sweep(tmp_path, "[grid]\nSEED = [0]\n"), 'over = "SEEDZ"'))


def test_the_registry_lists_what_each_driver_reads(tmp_path):
    """Read from the scripts (and what they source or run), so a variable added to a driver is known at once."""
    from mezo_engine import registry
    mezo = registry.script_variables(REPO / "large_models" / "mezo.sh")
    assert {"MODE", "STEPS", "TASK", "DATA_DIR", "NUM_GPU", "LP", "LORA_R", "XGBLORA_STEPS"} <= mezo
    assert not {"EPOCH", "FSDP", "HERE", "DEFAULT_LR", "MODE_ARGS", "LAUNCH"} & mezo
    assert {"EPOCH", "FSDP", "MODE"} <= registry.script_variables(REPO / "large_models" / "finetune_fsdp.sh")
    assert "MODE" not in registry.script_variables(REPO / "large_models" / "icl.sh")
    script = tmp_path / "wrapper.sh"
    script.write_text('source "$(dirname "$0")/../large_models/common.sh"\nTASK_FILE=${TASK_FILE:-}\n')
    found = registry.script_variables(script)
    assert "TASK_FILE" in found and "TASK" not in found  # common.sh is not beside this script: not followed
    (tmp_path / "common.sh").write_text("check() { [ -n \"${TASK:-}\" ]; }\n")
    script.write_text('source "$(dirname "$0")/common.sh"\nTASK_FILE=${TASK_FILE:-}\n')
    assert registry.script_variables(script) == {"TASK_FILE", "TASK"}


@pytest.mark.parametrize("body, message", [
    ('[grid]\n"--lora_rr" = [4, 8]\n', '[grid] --lora_rr: not a flag of large_models/run.py; did you mean --lora_r?'),
    ('[fixed]\n"--max_lenght" = 64\n', "[fixed] --max_lenght: not a flag of large_models/run.py; did you mean "
                                         "--max_length?"),
])
def test_a_run_py_flag_the_parser_does_not_take_stops_the_sweep_before_any_run(tmp_path, capsys, body, message):
    sweep_file = write_sweep(tmp_path, body)
    with pytest.raises(SystemExit) as err:
        cli.main([str(sweep_file)])
    assert message in str(err.value.code) and not (tmp_path / "results").exists()


def test_a_flag_in_the_sweeps_args_is_checked_too(tmp_path):
    from sweeps.load import check_run_py_flags
    path = _with_head(write_sweep(tmp_path, ""), 'args = ["--num_prefx=3", "--max_length", "64"]')
    with pytest.raises(SweepError, match=r"\[sweep\] args --num_prefx: not a flag of large_models/run\.py; did you "
                                         r"mean --num_prefix\?"):
        check_run_py_flags(load_sweep(path))


def test_unknown_driver_is_named(tmp_path):
    with pytest.raises(SweepError, match="driver = 'nope.sh': no such file"):
        load_sweep(write_sweep(tmp_path, "", driver="nope.sh"))


def test_states_from_result_files(tmp_path):
    cases = {"done": {"status": "completed"}, "old": {"eval": {}}, "div": {"status": "diverged at step 7"},
             "int": {"status": "interrupted at step 40"}, "junk": "not json {", "budget": {"status": "budget reached"}}
    for name, content in cases.items():
        write_result(tmp_path / f"{name}.json", content if isinstance(content, str) else json.dumps(content))
    (tmp_path / "ckpt" / "checkpoint-20").mkdir(parents=True)
    (tmp_path / "ckpt" / "checkpoint-100").mkdir()
    got = {n: read_state(tmp_path / f"{n}.json") for n in cases}
    assert {n: s.action for n, s in got.items()} == {"done": "skip", "old": "skip", "div": "no retry",
                                                       "int": "resume", "junk": "refuse", "budget": "skip"}
    assert [n for n, s in got.items() if s.finished] == ["done", "old", "budget"]  # evaluated: aggregated
    assert got["div"].detail == "diverged at step 7"
    missing = read_state(tmp_path / "ckpt.json", tmp_path / "ckpt")
    assert missing.runs and "checkpoint-100" in missing.detail  # the highest step, not the last in name order


OUTCOMES = '[grid]\nOUTCOME = ["completed", "diverged", "interrupt_once", "crash"]\n'


def _calls(sweep_file) -> dict[str, int]:
    sweep = load_sweep(sweep_file)
    out = {}
    for p in sweep.points():
        calls = p.output_dir / "calls"
        out[p.variables["OUTCOME"]] = len(calls.read_text().splitlines()) if calls.exists() else 0
    return out


@pytest.mark.slow
def test_rerun_skips_completed_resumes_interrupted_and_never_retries_diverged(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path, OUTCOMES)
    assert cli.main([str(sweep_file)]) == 1  # the crash and the interrupted run are not finished
    first = capsys.readouterr().out
    assert "diverged at step 3" in first and "failed: exit status 3" in first and "interrupted at step 2" in first
    assert _calls(sweep_file) == {"completed": 1, "diverged": 1, "interrupt_once": 1, "crash": 1}

    assert cli.main([str(sweep_file), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "skip      OUTCOME=completed" in plan and "no retry  OUTCOME=diverged" in plan
    assert "resume    OUTCOME=interrupt_once  [interrupted at step 2]" in plan
    assert "run       OUTCOME=crash  [no result yet]" in plan
    assert "4 points: 1 skip, 1 no retry, 1 resume, 1 run" in plan
    assert _calls(sweep_file)["crash"] == 1  # the dry run ran nothing

    assert cli.main([str(sweep_file)]) == 1  # the crash crashes again
    assert _calls(sweep_file) == {"completed": 1, "diverged": 1, "interrupt_once": 2, "crash": 2}
    done = load_sweep(sweep_file).points()[2]
    assert read_state(done.result_file).kind == "completed"
    assert "crashed" in (tmp_path / "results" / "logs" / f"{load_sweep(sweep_file).points()[3].name}.log").read_text()


def test_unreadable_result_is_refused_not_run(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path, '[grid]\nSEED = [0]\n')
    point = load_sweep(sweep_file).points()[0]
    write_result(point.result_file, "half a file {")
    assert cli.main([str(sweep_file)]) == 1
    assert "refuse" in capsys.readouterr().out and not (point.output_dir / "calls").exists()


def test_slots_share_cores_and_gpus_without_overlap():
    slots = make_slots(2, None, ["0", "1", "2", "3"], cores=[0, 1, 2, 3, 4])
    assert [s.cpus for s in slots] == [(0, 1), (2, 3)] and [s.gpus for s in slots] == [("0", "1"), ("2", "3")]
    assert slots[1].env() == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "2,3"}
    assert make_slots(1, 1, None, cores=[3, 5])[0].env() == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with pytest.raises(SlotError, match="--jobs 3 x --cpus-per-run 2 needs 6 cores"):
        make_slots(3, 2, None, cores=[0, 1, 2, 3])
    with pytest.raises(SlotError, match="--gpus gives 2"):
        make_slots(3, 1, ["0", "1"], cores=[0, 1, 2])


@pytest.mark.slow
def test_local_queue_pins_each_run_to_its_slot(tmp_path):
    sweep_file = write_sweep(tmp_path, '[grid]\nSEED = [0, 1, 2, 3]\n')
    cores = sorted(os.sched_getaffinity(0))
    jobs = min(2, len(cores))
    assert cli.main([str(sweep_file), "--jobs", str(jobs), "--cpus-per-run", "1", "--gpus", "7,8"]) == 0
    seen = []
    for point in load_sweep(sweep_file).points():
        pid, threads, allowed, gpus = (point.output_dir / "calls").read_text().split()
        seen.append((allowed, gpus))
        assert threads == "1"
    # slot i: core cores[i] and GPU "7,8"[i]; each run got exactly one of the slots
    slots = {(str(cores[i]), "78"[i]) for i in range(jobs)}
    assert set(seen) <= slots and len(seen) == 4
    assert len(set(seen)) == jobs  # the first runs start together, one in each slot


@pytest.mark.slow
def test_sigterm_to_the_sweep_interrupts_running_runs_and_starts_no_more(tmp_path):
    sweep_file = write_sweep(tmp_path, '[fixed]\nOUTCOME = "wait_term"\n[grid]\nSEED = [0, 1]\n')
    proc = subprocess.Popen([sys.executable, "scripts/sweep.py", str(sweep_file), "--jobs", "1"], cwd=REPO,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # the second run queued
    first, second = load_sweep(sweep_file).points()
    for _ in range(300):
        if (first.output_dir / "started").exists():
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 1, out
    assert read_state(first.result_file).detail == "interrupted at step 1"
    assert not second.output_dir.exists() and "not started" in out


def test_slurm_options_from_table_and_flags():
    assert [time_minutes(t) for t in (90, "90", "01:30:00", "1-00:00:00", "2-6", "45:30")] == \
           [90, 90, 90, 1440, 3240, 46]
    options = slurm_options({"time": "02:00:00", "mem": 16, "gpus_per_run": 1, "extra": {"requeue": True}},
                            {"time": "30", "partition": "gpu", "jobs": None})
    params = executor_parameters(options, "s", "/here")
    assert params["time"] == 30 and params["partition"] == "gpu" and params["mem"] == "16G"
    assert params["gpus_per_node"] == 1 and params["additional_parameters"] == {"signal": "TERM@120",
                                                                                  "requeue": True}
    with pytest.raises(SlurmOptionError, match="unknown key"):
        slurm_options({"gpus": 1}, {})
    with pytest.raises(SlurmOptionError, match="time '1h'"):
        slurm_options({"time": "1h"}, {})


def test_slurm_dry_run_prints_parameters_and_submits_nothing(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path, '[grid]\nSEED = [0]\n[slurm]\ntime = 5\n')
    assert cli.main([str(sweep_file), "--executor", "slurm", "--dry-run", "--partition", "debug"]) == 0
    out = capsys.readouterr().out
    assert "partition=debug" in out and "time=5" in out and "TERM@120" in out
    assert not (tmp_path / "results" / "slurm").exists()


@pytest.mark.slow
def test_sweep_over_the_real_mezo_driver(tmp_path, tiny_opt_dir):
    data = tmp_path / "data" / "SST-2"
    data.mkdir(parents=True)
    for name, copies in (("train.tsv", 3), ("dev.tsv", 1)):
        (data / name).write_text("sentence\tlabel\n" + "\n".join(SST2_ROWS * copies) + "\n")
    body = (f'[fixed]\nTASK = "SST2"\nMODEL = "{tiny_opt_dir}"\nDATA_DIR = "{data.parent}"\nSTEPS = 2\n'
            'TRAIN = 8\nDEV = 4\nEVAL = 4\nEVAL_STEPS = 2\nBS = 4\nXGBLORA_STEPS = 1\n'
            '"--disable_tqdm" = "True"\n[grid]\nMODE = ["xgblora"]\n')
    sweep_file = write_sweep(tmp_path, body, driver="mezo.sh")
    assert cli.main([str(sweep_file), "--cpus-per-run", "1"]) == 0
    point = load_sweep(sweep_file).points()[0]
    result = json.loads(point.result_file.read_text())
    assert result["status"] == "completed" and result["train"]["boosting"]["num_merges"] == 2
    assert result["tag"] == "mezo-xgblora-k1-2-4-1e-5-1e-3-0"  # the driver's own tag, from the sweep's variables
    assert (point.output_dir / "checkpoint-2").is_dir()  # run.py's default --output_dir: the result path
    assert read_state(point.result_file).action == "skip"


def test_without_jobs_a_cpu_machine_runs_one_run_per_core():
    from sweeps.local import default_jobs
    import os
    assert default_jobs(None) == default_jobs([]) == len(os.sched_getaffinity(0)) and default_jobs(["0"]) == 1
