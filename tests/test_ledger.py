"""The cost ledger and the budgets: forwards counted per step as each ZO method says, log rows and the result JSON
carrying the ledger, --max_forwards / --max_time stopping a run with a checkpoint and status 'budget reached', and
a larger budget continuing it exactly (the tiny OPT in float64, as tests/test_resume.py)."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from large_models import run
from large_models.arguments import Arguments, default_config, parse_args
from mezo_engine import checkpoint
from mezo_engine.arguments import ArgumentError
from mezo_engine.ledger import Budget, Ledger, StepClock
from mezo_engine.results import ResultPathError, check_result_path, config_hash, write_result
from mezo_engine.trainer import LedgerCallback
from mezo_engine.zo_methods.sgd import ZOSGD

REPO = Path(__file__).resolve().parent.parent


# ---- the bookkeeping alone ------------------------------------------------------------------------------------
def test_ledger_sums_and_round_trips_through_its_state():
    ledger = Ledger()
    ledger.count(forwards=2)
    ledger.count(forwards=1, backwards=1)
    ledger.add_time(0.5, 0.25)
    ledger.add_time(1.0, 2.0)
    assert ledger.row() == {"forwards": 3, "backwards": 1, "train_wall_s": 1.5, "train_cpu_s": 2.25}
    again = Ledger.from_record(ledger.state_dict())
    assert again == ledger and again is not ledger
    again.load_state_dict({"forwards": 7})  # a field the state lacks keeps its value
    assert (again.forwards, again.backwards) == (7, 1)


def test_budget_names_the_limit_reached():
    spent = Ledger(forwards=6, train_wall_s=9.5)
    assert Budget().reached_by(spent) is None  # 0: no limit
    assert Budget(max_forwards=7).reached_by(spent) is None
    assert Budget(max_forwards=6).reached_by(spent) == "max_forwards"  # reached, not only passed
    assert Budget(max_time=10).reached_by(spent) is None
    assert Budget(max_forwards=100, max_time=9.5).reached_by(spent) == "max_time"
    assert Budget(max_forwards=6, max_time=1).reached_by(spent) == "max_forwards"
    assert "6 forwards (--max_forwards 6)" == Budget(6).spent(spent, "max_forwards")
    assert Budget(6).record(("max_forwards", 3)) == {"max_forwards": 6, "max_time": 0.0, "reached": "max_forwards",
                                                    "step": 3}


def test_step_clock_measures_from_start_to_stop_once():
    clock = StepClock()
    assert clock.stop() == (0.0, 0.0)  # no start: nothing
    clock.start()
    sum(range(10000))
    wall, cpu = clock.stop()
    assert wall >= 0 and cpu >= 0
    assert clock.stop() == (0.0, 0.0)  # a stop without a new start adds nothing


# ---- the flags ------------------------------------------------------------------------------------------------
def _parse(*flags) -> Arguments:
    from transformers import HfArgumentParser
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(args=list(flags))
    return args


@pytest.mark.parametrize("flags, message", [
    (["--trainer", "zo", "--max_forwards=-1"], "--max_forwards -1: must be >= 0"),
    (["--trainer", "zo", "--max_time=-5"], "--max_time -5.0: must be >= 0"),
    (["--trainer", "zo", "--max_time", "nan"], "--max_time nan: must be >= 0"),
    (["--max_forwards", "10"], "--max_forwards 10 with --trainer none"),
    (["--max_zo_forward_steps", "10"], "--max_zo_forward_steps 10 with --trainer none"),
    (["--trainer", "zo", "--max_zo_forward_steps", "4", "--max_forwards", "6"], "the same setting twice"),
])
def test_bad_budgets_are_refused_by_name(flags, message):
    with pytest.raises(ArgumentError) as err:
        _parse("--task_name", "SST2", *flags)
    assert message in str(err.value)


def test_upstream_name_sets_the_budget_and_budgets_keep_the_result_name():
    base = ["--task_name", "SST2", "--trainer", "zo", "--max_steps", "100", "--num_train", "8"]
    plain = parse_args(base)
    assert _parse(*base, "--max_zo_forward_steps", "40").budget == Budget(max_forwards=40)
    budgeted = parse_args([*base, "--max_forwards", "40", "--max_time", "3600"])
    assert budgeted.budget == Budget(40, 3600.0)
    # a budget changes no step before its stop: the name stays, so that a larger budget continues the run
    assert (config_hash(budgeted.to_dict(), False, default_config())
            == config_hash(plain.to_dict(), False, default_config()))
    assert run.result_path(budgeted, 0, False) == run.result_path(plain, 0, False)


# ---- whether a result may be replaced --------------------------------------------------------------------------
def test_a_budget_reached_result_is_continued_only_by_a_budget_with_room(tmp_path):
    path = tmp_path / "r.json"
    write_result(path, {"status": "budget reached", "ledger": Ledger(forwards=6, train_wall_s=50.0).state_dict()})
    for refused in (Budget(6), Budget(4), Budget(10, max_time=50)):
        with pytest.raises(ResultPathError, match="budget reached result .*raise --max_(forwards|time)"):
            check_result_path(path, overwrite=False, budget=refused)
    for allowed in (Budget(10), Budget(), None, Budget(0, max_time=51)):
        check_result_path(path, overwrite=False, budget=allowed)
    check_result_path(path, overwrite=True, budget=Budget(6))
    write_result(path, {"status": "completed", "ledger": Ledger(forwards=6).state_dict()})
    with pytest.raises(ResultPathError, match="completed"):  # a run that reached --max_steps stays done
        check_result_path(path, overwrite=False, budget=Budget(100))


# ---- runs on the tiny model ------------------------------------------------------------------------------------
def _argv(tmp_path, model_dir, data_dir, *flags, name="r"):
    return ["--model_name", str(model_dir), "--task_name", "SST2", "--data_dir", str(data_dir),
            "--result_file", str(tmp_path / f"{name}.json"), "--output_dir", str(tmp_path / name),
            "--disable_tqdm", "True", "--report_to", "none", "--per_device_eval_batch_size", "4",
            "--num_train", "8", "--train_set_seed", "0", "--num_eval", "4", "--per_device_train_batch_size", "4",
            "--train_as_classification", "--logging_steps", "1", "--seed", "3", *flags]


def _main(tmp_path, model_dir, data_dir, *flags, name="r", monkeypatch=None):
    """run.main; the result JSON and (with ``monkeypatch``) a copy of the trained parameters."""
    trained = {}
    if monkeypatch is not None:
        real = run.train

        def spy(*args, **kwargs):
            trainer, summary, status = real(*args, **kwargs)
            trained.update({n: p.detach().clone() for n, p in trainer.model.state_dict().items()})
            return trainer, summary, status
        monkeypatch.setattr(run, "train", spy)
    run.main(_argv(tmp_path, model_dir, data_dir, *flags, name=name))
    return json.loads((tmp_path / f"{name}.json").read_text()), trained


@pytest.mark.parametrize("flags, per_step", [
    (["--trainer", "zo"], (2, 0)),  # MeZO's ZO-SGD: +eps and -eps
    (["--trainer", "zo", "--zo_num_samples", "3"], (6, 0)),  # n-SPSA: 2n
    (["--trainer", "zo", "--zo_optimizer", "adam", "--zo_num_samples", "2"], (4, 0)),
    (["--trainer", "regular", "--gradient_accumulation_steps", "2"], (2, 2)),  # one of each per micro-batch
])
def test_forwards_per_step_in_the_result_and_every_log_row(tmp_path, tiny_opt_dir, sst2_dir, flags, per_step):
    result, _ = _main(tmp_path, tiny_opt_dir, sst2_dir, *flags, "--max_steps", "4", "--learning_rate", "1e-3")
    forwards, backwards = per_step
    ledger = result["ledger"]
    assert (ledger["forwards"], ledger["backwards"], ledger["processes"]) == (4 * forwards, 4 * backwards, 1)
    assert ledger["dev_evaluations"] == 0  # no dev set: nothing evaluated during training
    assert result["status"] == "completed" and result["budget"]["reached"] is None
    rows = result["train"]["log_history"]
    losses = [h for h in rows if "loss" in h]
    assert [(h["forwards"], h["backwards"]) for h in losses] == [(s * forwards, s * backwards) for s in (1, 2, 3, 4)]
    assert all({"forwards", "backwards", "train_wall_s", "train_cpu_s"} <= set(h) for h in rows)  # every row
    walls = [h["train_wall_s"] for h in losses] + [ledger["train_wall_s"]]
    assert all(0 <= a <= b for a, b in zip(walls, walls[1:]))  # cumulative: never decreasing
    assert 0 < ledger["train_wall_s"] <= result["train"]["train_s"]  # the steps alone, inside trainer.train


def test_the_count_is_the_zo_method_s_own(tmp_path, tiny_opt_dir, sst2_dir, monkeypatch):
    """A method that says its step costs 3 forwards (HiZOO's three-point step) is counted at 3, not at 2n."""
    monkeypatch.setattr(ZOSGD, "forwards_per_step", lambda self, n: 3 * n)
    result, _ = _main(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "zo", "--max_steps", "3", "--max_forwards", "6")
    assert (result["ledger"]["forwards"], result["train"]["global_step"]) == (6, 2)
    assert result["budget"] == {"max_forwards": 6, "max_time": 0.0, "reached": "max_forwards", "step": 2}
    assert result["status"] == "budget reached"


def test_a_budget_reached_at_max_steps_is_a_completed_run(tmp_path, tiny_opt_dir, sst2_dir):
    result, _ = _main(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "zo", "--max_steps", "3", "--max_forwards", "6")
    assert result["status"] == "completed" and result["budget"]["reached"] is None
    assert not (tmp_path / "r" / "checkpoint-3").exists()  # no checkpoint for a stop that did not happen


@pytest.mark.parametrize("trainer", ["zo", "regular"])
def test_the_time_per_phase_adds_up(tmp_path, tiny_opt_dir, sst2_dir, trainer):
    """The per-phase seconds are a partition, not timings to compare: each step's wall-clock is its forwards plus
    the rest of it (an identity up to float addition, 1e-9 s), evaluations and saves are counted where they ran,
    and the training loop's wall-clock holds the steps, the stretches between them, evaluation and saving."""
    result, _ = _main(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", trainer, "--max_steps", "4", "--num_dev", "2",
                      "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps",
                      "2", "--learning_rate", "1e-3")
    led = result["ledger"]
    assert led["forward_s"] > 0 and led["step_other_s"] >= 0 and led["data_s"] > 0
    assert led["forward_s"] + led["step_other_s"] == pytest.approx(led["train_wall_s"], abs=1e-9)
    assert led["eval_s"] > 0 and led["checkpoint_s"] > 0 and led["between_steps_s"] > 0
    parts = led["train_wall_s"] + led["between_steps_s"] + led["eval_s"] + led["checkpoint_s"]
    assert parts <= led["loop_wall_s"] + 1e-6  # the loop also holds what precedes its first step
    assert led["cpu_over_wall"] == led["train_cpu_s"] / led["train_wall_s"]


def test_dev_evaluations_are_counted_apart(tmp_path, tiny_opt_dir, sst2_dir):
    result, _ = _main(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "zo", "--max_steps", "4", "--num_dev", "2",
                      "--eval_strategy", "steps", "--eval_steps", "2")
    assert result["ledger"]["dev_evaluations"] == 2 and result["ledger"]["forwards"] == 8
    evals = [h for h in result["train"]["log_history"] if "eval_accuracy" in h]
    assert [h["forwards"] for h in evals] == [4, 8]  # evaluation rows carry the ledger too


def test_a_budget_stop_evaluates_on_dev_as_the_last_step_does(tmp_path, tiny_opt_dir, sst2_dir):
    result, _ = _main(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "zo", "--max_steps", "10", "--num_dev", "2",
                      "--eval_strategy", "steps", "--eval_steps", "2", "--max_forwards", "6")
    evals = [(h["step"], h["forwards"]) for h in result["train"]["log_history"] if "eval_accuracy" in h]
    assert evals == [(2, 4), (3, 6)]  # step 3 is no eval step: the stop adds it (the dev metric at the budget)
    assert result["ledger"]["dev_evaluations"] == 2 and result["status"] == "budget reached"


def test_dev_every_so_many_forwards(tmp_path, tiny_opt_dir, sst2_dir):
    """--eval_forwards 3 with ZO-SGD (2 forwards a step: 2, 4, 6, 8, 10 after steps 1-5): dev after the steps that
    pass 3, 6 and 9, i.e. steps 2, 3 and 5; --eval_steps 100 adds none (HF also evaluates at --max_steps: step 5)."""
    result, _ = _main(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "zo", "--max_steps", "5", "--num_dev", "2",
                      "--eval_strategy", "steps", "--eval_steps", "100", "--eval_forwards", "3")
    evals = [(h["step"], h["forwards"]) for h in result["train"]["log_history"] if "eval_accuracy" in h]
    assert evals == [(2, 4), (3, 6), (5, 10)]
    with pytest.raises(ArgumentError, match="--eval_forwards 3 with --eval_strategy no: needs --eval_strategy steps"):
        _parse("--trainer", "zo", "--eval_forwards", "3")


BUDGET_RUN = ["--trainer", "zo", "--load_float64", "--max_steps", "10", "--learning_rate", "1e-2"]


def test_a_forward_budget_stops_evaluates_and_a_larger_one_continues_exactly(tmp_path, tiny_opt_dir, sst2_dir,
                                                                              monkeypatch):
    first, _ = _main(tmp_path, tiny_opt_dir, sst2_dir, *BUDGET_RUN, "--max_forwards", "6")
    assert first["status"] == "budget reached" and first["train"]["global_step"] == 3
    assert first["budget"] == {"max_forwards": 6, "max_time": 0.0, "reached": "max_forwards", "step": 3}
    assert first["ledger"]["forwards"] == 6 and "accuracy" in first["eval"]  # evaluated as at a normal end
    assert (tmp_path / "r" / "checkpoint-3" / checkpoint.RUN_STATE).is_file()  # saved at the stop (strategy no)
    with pytest.raises(SystemExit, match="spent 6 forwards .*raise --max_forwards"):  # the same budget: done
        _main(tmp_path, tiny_opt_dir, sst2_dir, *BUDGET_RUN, "--max_forwards", "6")

    resumed, continued = _main(tmp_path, tiny_opt_dir, sst2_dir, *BUDGET_RUN, "--max_zo_forward_steps", "10",
                               "--resume_from_checkpoint", "auto", monkeypatch=monkeypatch)
    assert resumed["status"] == "budget reached" and resumed["train"]["global_step"] == 5
    assert resumed["budget"]["step"] == 5 and resumed["train"]["steps_this_process"] == 2
    ledger = resumed["ledger"]
    assert (ledger["forwards"], ledger["processes"]) == (10, 2)  # 6 + 4 across the two processes
    for key in ("train_wall_s", "train_cpu_s"):
        assert 0 <= first["ledger"][key] <= ledger[key]  # continued, not restarted
    rows = [h for h in resumed["train"]["log_history"] if "loss" in h]
    assert [h["forwards"] for h in rows] == [2, 4, 6, 8, 10]

    single, whole = _main(tmp_path, tiny_opt_dir, sst2_dir, *BUDGET_RUN, "--max_forwards", "10", name="single",
                          monkeypatch=monkeypatch)
    assert single["train"]["global_step"] == 5 and single["ledger"]["forwards"] == 10
    assert [h["loss"] for h in single["train"]["log_history"] if "loss" in h] == [h["loss"] for h in rows]
    assert whole.keys() == continued.keys() and whole
    for name in whole:  # float64 and the same float ops in the same order: equal to the last bit
        assert torch.equal(whole[name], continued[name]), name


def test_a_resume_past_its_budget_is_refused(tmp_path, tiny_opt_dir, sst2_dir):
    """A budget-6 run stops at step 3 (forwards 2, 4, 6). Budget 3 would have stopped at step 2 (4 forwards): its
    checkpoint-3 began its last step at 4 forwards, past that budget, and is refused."""
    _main(tmp_path, tiny_opt_dir, sst2_dir, *BUDGET_RUN, "--max_forwards", "6")
    ckpt = tmp_path / "r" / "checkpoint-3"
    with pytest.raises(SystemExit, match="checkpoint-3: the run has spent 6 forwards .*raise --max_forwards"):
        _main(tmp_path, tiny_opt_dir, sst2_dir, *BUDGET_RUN, "--max_forwards", "3", "--resume_from_checkpoint",
              str(ckpt), name="other")


def test_where_a_restored_ledger_stands_against_the_budget():
    """``stopped``: the checkpoint's last step first reached the budget (began under it, ended at or over it)."""
    cases = [({"forwards": 4}, "open"),
             ({"forwards": 6, "before_last_step": {"forwards": 4, "train_wall_s": 0.0}}, "stopped"),
             ({"forwards": 5, "before_last_step": {"forwards": 3, "train_wall_s": 0.0}}, "stopped"),  # exactly
             ({"forwards": 6, "before_last_step": {"forwards": 5, "train_wall_s": 0.0}}, "past"),
             ({"forwards": 6, "before_last_step": None}, "past"),  # where the step began is not known
             ({"forwards": 6}, "past")]  # a checkpoint made before it was kept
    for state, where in cases:
        callback = LedgerCallback(Budget(max_forwards=5))
        callback.load_state_dict(state)
        assert callback.budget_at_restore() == where, state
    timed = LedgerCallback(Budget(max_time=10.0))
    timed.load_state_dict({"train_wall_s": 10.5, "before_last_step": {"forwards": 0, "train_wall_s": 9.0}})
    assert timed.budget_at_restore() == "stopped"
    saved = LedgerCallback(Budget(max_forwards=5))
    saved.on_step_begin(None, None, None)
    saved.ledger.count(2)
    assert saved.state_dict()["before_last_step"] == {"forwards": 0, "train_wall_s": 0.0}


@pytest.mark.parametrize("mode", [[], ["--lora", "--lora_r", "2"],  # full weights; adapters (PEFT's files)
                                  ["--xgblora", "--xgblora_steps_per_iteration", "2", "--xgblora_num_layers", "1"]])
def test_a_run_stopped_during_its_final_evaluation_is_finished_from_its_budget_checkpoint(
        tmp_path, tiny_opt_dir, sst2_dir, monkeypatch, mode):
    """The budget's stop saves checkpoint-3, then the run evaluates and writes its result. A process killed
    between the two (no result) is finished by the same command: no training step, the same best dev model, the
    same test predictions, ledger and budget record as the run that was not killed (XGBLoRA: its merge at step
    2 replayed, then the best dev model's merged base and booster put back)."""
    flags = [*BUDGET_RUN, "--max_forwards", "6", "--num_dev", "4", "--eval_strategy", "steps", "--eval_steps", "2",
             "--load_best_model_at_end", "--best_dev_ties", "first", *mode,
             "--resume_from_checkpoint", "auto"]
    whole, whole_params = _main(tmp_path, tiny_opt_dir, sst2_dir, *flags, monkeypatch=monkeypatch)
    (tmp_path / "r.json").unlink()  # as if killed during the final evaluation (the best dev model: step 2)
    finished, finished_params = _main(tmp_path, tiny_opt_dir, sst2_dir, *flags, monkeypatch=monkeypatch)
    assert finished["status"] == whole["status"] == "budget reached"
    assert finished["train"]["steps_this_process"] == 0 and finished["train"]["global_step"] == 3
    assert finished["budget"] == whole["budget"] == {"max_forwards": 6, "max_time": 0.0, "reached": "max_forwards",
                                                     "step": 3}
    for key in ("forwards", "processes", "dev_evaluations", "train_cpu_s"):  # no step, no evaluation of dev
        assert finished["ledger"][key] == whole["ledger"][key], key
    assert finished["train"]["best_dev"] == whole["train"]["best_dev"]
    assert finished["eval"] == whole["eval"]  # float64, the same weights and kernels: equal, not close
    assert finished_params.keys() == whole_params.keys()
    for name in whole_params:
        assert torch.equal(finished_params[name], whole_params[name]), name


def test_a_completed_run_stopped_during_its_final_evaluation_is_finished_without_another_step(
        tmp_path, tiny_opt_dir, sst2_dir, monkeypatch):
    """--max_steps 3 over 2 batches an epoch (not a whole number of epochs, where the Trainer resumed at its last
    checkpoint would take a fourth step): the rerun of a run killed before its result evaluates checkpoint-3's
    best dev model as the run that was not killed did; a checkpoint past --max_steps is refused."""
    flags = ["--trainer", "zo", "--load_float64", "--learning_rate", "1e-2", "--max_steps", "3", "--num_dev", "4",
             "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
             "--load_best_model_at_end", "--best_dev_ties", "first", "--lora", "--lora_r", "2",
             "--resume_from_checkpoint", "auto"]
    whole, whole_params = _main(tmp_path, tiny_opt_dir, sst2_dir, *flags, monkeypatch=monkeypatch)
    assert (tmp_path / "r" / "checkpoint-3").is_dir()  # the Trainer saves at --max_steps
    (tmp_path / "r.json").unlink()
    finished, finished_params = _main(tmp_path, tiny_opt_dir, sst2_dir, *flags, monkeypatch=monkeypatch)
    assert finished["status"] == whole["status"] == "completed"
    assert finished["train"]["steps_this_process"] == 0 and finished["train"]["global_step"] == 3
    assert finished["ledger"]["forwards"] == whole["ledger"]["forwards"] == 6
    assert finished["eval"] == whole["eval"] and finished["train"]["best_dev"] == whole["train"]["best_dev"]
    for name in whole_params:
        assert torch.equal(finished_params[name], whole_params[name]), name
    shorter = [f if f != "3" else "2" for f in flags]  # --max_steps 2 on the same folder: checkpoint-3 is past it
    with pytest.raises(SystemExit, match="checkpoint-3: --max_steps 2 is below the checkpoint's step 3"):
        _main(tmp_path, tiny_opt_dir, sst2_dir, *shorter, "--overwrite")


def test_a_time_budget_stops_after_the_step_that_reaches_it(tmp_path, tiny_opt_dir, sst2_dir):
    result, _ = _main(tmp_path, tiny_opt_dir, sst2_dir, "--trainer", "regular", "--max_steps", "5",
                      "--max_time", "1e-9")  # any step takes longer than a nanosecond
    assert result["status"] == "budget reached" and result["train"]["global_step"] == 1
    assert result["budget"]["reached"] == "max_time" and result["ledger"]["forwards"] == 1


def test_an_older_checkpoint_without_a_ledger_resumes_with_counts_from_there(tmp_path, tiny_opt_dir, sst2_dir):
    _main(tmp_path, tiny_opt_dir, sst2_dir, *BUDGET_RUN, "--max_forwards", "4")
    ckpt = tmp_path / "r" / "checkpoint-2"
    state = torch.load(ckpt / checkpoint.RUN_STATE, weights_only=False)
    assert state["callbacks"]["ledger"]["forwards"] == 4
    del state["callbacks"]["ledger"]
    torch.save(state, ckpt / checkpoint.RUN_STATE)
    result, _ = _main(tmp_path, tiny_opt_dir, sst2_dir, *BUDGET_RUN, "--max_forwards", "4",
                      "--resume_from_checkpoint", str(ckpt), name="again")
    assert result["train"]["global_step"] == 4 and result["ledger"]["forwards"] == 4  # steps 3 and 4 only


def test_a_missing_state_of_another_callback_is_refused_by_name(tmp_path):
    class Needed:
        def load_state_dict(self, state):
            raise AssertionError("not called")
    with pytest.raises(checkpoint.CheckpointError, match="no state of the boosting callback"):
        checkpoint.RunStateCallback._restore_callback(str(tmp_path), "boosting", Needed(), {})


# ---- the drivers ----------------------------------------------------------------------------------------------
def _driver_argv(tmp_path, script: str, **env) -> tuple[int, str, list[str]]:
    """Run a driver with a stand-in ``python`` that writes down the run.py flags; (exit status, stderr, flags)."""
    stand_in = tmp_path / "bin" / "python"
    stand_in.parent.mkdir(exist_ok=True)
    stand_in.write_text('#!/bin/sh\nprintf \'%s\\n\' "$@" > "$FLAGS_OUT"\n')
    stand_in.chmod(0o755)
    out = tmp_path / "argv"
    out.unlink(missing_ok=True)
    data = tmp_path / "data"
    (data / "SST-2" / "16-42").mkdir(parents=True, exist_ok=True)
    full = {"PATH": f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}", "FLAGS_OUT": str(out),
            "DATA_DIR": str(data), **env}
    proc = subprocess.run(["bash", script], cwd=REPO, env=full, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr, out.read_text().splitlines()[1:] if out.exists() else []


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_large_drivers_pass_run_seed_zo_and_budgets(tmp_path):
    code, _, plain = _driver_argv(tmp_path, "large_models/mezo.sh", TASK="SST2")
    assert code == 0 and "--seed" not in plain and "--zo_optimizer" not in plain and "--max_forwards" not in plain
    assert _flag(plain, "--tag") == "mezo-ft-20000-16-1e-5-1e-3-0"  # unset: today's tag and name
    code, err, argv = _driver_argv(tmp_path, "large_models/mezo.sh", TASK="SST2", SEED="2", RUN_SEED="7", ZO="adam",
                                   MAX_FORWARDS="500", MAX_TIME="90.5")
    assert code == 0, err
    assert (_flag(argv, "--seed"), _flag(argv, "--train_set_seed")) == ("7", "2")  # the run's seed, the data's
    assert (_flag(argv, "--zo_optimizer"), _flag(argv, "--max_forwards"), _flag(argv, "--max_time")) == \
        ("adam", "500", "90.5")
    assert _flag(argv, "--tag") == "mezo-ft-adam-20000-16-1e-5-1e-3-2-rs7"  # budgets stay out of it
    assert "RUN_SEED=7" in err and "MAX_FORWARDS=500" in err  # the resolved configuration is printed
    code, _, argv = _driver_argv(tmp_path, "large_models/finetune.sh", TASK="SST2", RUN_SEED="4", MAX_FORWARDS="9")
    assert code == 0 and (_flag(argv, "--seed"), _flag(argv, "--max_forwards")) == ("4", "9")
    assert _flag(argv, "--tag") == "ft-5-8-1e-5-0-rs4"


def test_medium_drivers_keep_seed_as_the_split_and_run_seed_as_the_run(tmp_path):
    code, _, plain = _driver_argv(tmp_path, "medium_models/mezo.sh")
    assert code == 0 and _flag(plain, "--seed") == "42" and "--data_seed" not in plain  # upstream's one seed
    code, err, argv = _driver_argv(tmp_path, "medium_models/mezo.sh", RUN_SEED="5", ZO="momentum", MAX_TIME="60")
    assert code == 0, err
    assert (_flag(argv, "--seed"), _flag(argv, "--data_seed")) == ("5", "42")
    assert argv.count("--seed") == 1 and _flag(argv, "--zo_optimizer") == "momentum"
    assert _flag(argv, "--max_time") == "60" and _flag(argv, "--tag").endswith("-42-rs5")


@pytest.mark.parametrize("script, env, message", [
    ("large_models/mezo.sh", {"TASK": "SST2", "RUN_SEED": "x1"}, "RUN_SEED=x1: must be a whole number"),
    ("large_models/mezo.sh", {"TASK": "SST2", "MAX_FORWARDS": "1e3"}, "MAX_FORWARDS=1e3: must be a whole number"),
    ("large_models/mezo.sh", {"TASK": "SST2", "MAX_TIME": "1.2.3"}, "MAX_TIME=1.2.3: must be a number"),
    ("large_models/mezo.sh", {"TASK": "SST2", "ZO": "nope"}, "ZO=nope unknown; known: sgd"),
    ("large_models/finetune.sh", {"TASK": "SST2", "ZO": "adam"}, "ZO=adam: the finetune driver trains with backprop"),
    ("medium_models/finetune.sh", {"ZO": "adam"}, "ZO=adam: the medium-finetune driver"),
])
def test_drivers_refuse_bad_variables_by_name(tmp_path, script, env, message):
    code, err, argv = _driver_argv(tmp_path, script, **env)
    assert code != 0 and message in err and not argv


def test_zo_takes_the_method_s_default_learning_rate(tmp_path, monkeypatch):
    """The ZO method's registry defaults win over the mode's (``registry.defaults MODE DRIVER ZO``)."""
    from mezo_engine import registry
    assert registry.defaults("ft", "mezo", "adam") == registry.defaults("ft", "mezo")  # no own defaults yet
    lines = registry.driver_assignments("lora", "mezo", {}, "adam").splitlines()
    assert "ZO_ARGS=(--zo_optimizer adam)" in lines and "MODE_TAG=lora-adam" in lines
    monkeypatch.setitem(registry.ZO_METHODS, "adam", registry.ZoSpec("adam", {"mezo": registry.Defaults("3e-4",
                                                                                                      "1e-2")}))
    lines = registry.driver_assignments("lora", "mezo", {}, "adam").splitlines()
    assert "DEFAULT_LR=3e-4" in lines and "DEFAULT_EPS=1e-2" in lines
    default = registry.driver_assignments("lora", "mezo", {}, "sgd").splitlines()
    assert "MODE_TAG=lora" in default  # the default method keeps the unset tag
