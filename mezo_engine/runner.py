"""The parts of a run every app shares, between building its trainer and writing its result: callbacks, training
with resume and stop signals, the training summary, saving, publishing the result, and stopped runs.

An app (``large_models/run.py``, ``medium_models/run.py``) parses its arguments, loads its data and model, builds a
``MezoTrainer`` with ``make_trainer`` (its objective, dev evaluator, features and collator), calls ``train`` and
evaluates; the result JSON has the same layout and conventions in both apps (``status``, ``train``, ``ledger``,
``budget``, ``eval``, ``dev``, ``config``, ``resources``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerState
from transformers.trainer import TRAINER_STATE_NAME

from mezo_engine import checkpoint_checks, disk, distributed, int8, lora, resources, run_lock
from mezo_engine.arguments import ArgumentError, default_config_of, launched_world_size
from mezo_engine.checkpoint import (RESUMABLE_EXIT, RUN_STATE, CheckpointError, RunStateCallback, StopOnSignal,
                                     resolve_resume)
from mezo_engine.methods import Mode, ModeError, mode_for
from mezo_engine.placement import placement
from mezo_engine.results import (ResultPathError, check_output_dir, config_hash, hashed_settings, publish_result,
                                 run_name, strict)
from mezo_engine.status import Status
from mezo_engine.trainer import (BestModelCallback, DivergenceCallback, DivergenceError, LedgerCallback, MezoTrainer,
                                 StallCallback)

logger = logging.getLogger("run")


def result_path(args, task_name: str, set_seed_: int | None, many_sets: bool, defaults: dict,
                repo_root: Path, settings: dict | None = None) -> Path:
    """``--result_file`` (with ``-trainset<k>`` before ``.json`` for several train sets), or by default
    ``<result_dir>/<task_name>-<model>-<tag>-<hash>[-trainset<k>].json``, the hash covering every setting that
    changes the result and differs from its value in ``defaults`` (see results.NOT_IN_HASH). ``task_name``: the
    app's task flag; ``settings``: what else the app hashes (rules that changed what some of its runs compute, so
    that those runs are named anew). Call it before anything rewrites ``args``."""
    if args.result_file:
        path = Path(args.result_file)
        return path.with_name(f"{path.stem}-trainset{set_seed_}{path.suffix}") if many_sets else path
    digest = config_hash({**args.to_dict(), **(settings or {})}, args.keep_best_model, defaults)
    name = run_name(task_name, args.model_name, args.tag, digest, set_seed_ if many_sets else None)
    return Path(args.result_dir or repo_root / "result") / f"{name}.json"


def run_output_dir(args, path: Path, many_sets: bool) -> str:
    """The result path without ``.json`` (one folder per distinct run), or ``--output_dir`` if given (with a
    subfolder per train set when there are several)."""
    if not args.output_dir_given:
        return str(path.with_suffix(""))
    return str(Path(args.output_dir) / path.stem) if many_sets else args.output_dir


def lock_output_dirs(out_dirs: list[str]) -> None:
    """Take the lock of each run's output folder (``run_lock``: one job per folder), on rank 0 of a torchrun job
    only (its ``RANK``: the process group may not exist yet, and the lock must be taken before the model loads)."""
    if os.environ.get("RANK", "0") == "0":
        for folder in out_dirs:
            check_output_dir(folder)
            run_lock.acquire(folder)


def release_output_dirs() -> None:
    """Remove this process's output-folder locks: from the apps' ``finally``, after an error or a stop too."""
    run_lock.release_all()


def start_ranks(args) -> None:
    """Under torchrun: join the process group now (accelerate's state, set up as the Trainer sets it up), so that
    evaluation-only runs share their work between the ranks and only rank 0 writes."""
    if launched_world_size() > 1:
        logger.info("rank %s of %d on %s", os.environ.get("RANK"), launched_world_size(), args.device)


def end_ranks() -> None:
    """Leave the process group, if this process joined one. A gloo or NCCL group still alive at interpreter exit
    can abort the process after its result is written ("terminate called without an active exception", exit -6),
    which torchrun then reports as the job's failure."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def model_placement(args) -> str:
    """Where the model goes (``placement.placement``): split over the devices unless ``--no_auto_device``, one
    device per rank under torchrun, the CPU for FSDP (which places the shards) or without CUDA."""
    return placement(args.no_auto_device, launched_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                     torch.cuda.is_available(), fsdp=bool(args.fsdp))


def int8_base(args, model, mode: Mode | None = None) -> int8.Int8Report | None:
    """``--load_int8`` on the CPU: the model's frozen linear layers become int8 (``int8.quantize_frozen_linears_``),
    the LM head and the bases ``mode`` merges into (``Mode.merged_bases``) staying float32. Call it once the mode
    has attached its adapters (PEFT wraps float layers), or right after loading for evaluation alone (``mode``
    None). Nothing happens on CUDA, where bitsandbytes loaded the 8-bit layers, or without ``--load_int8``."""
    if not args.load_int8 or model_placement(args) != "cpu":
        return None
    report = int8.quantize_frozen_linears_(model, mode.merged_bases(model) if mode is not None else set())
    if not report.layers:
        logger.warning("--load_int8: no frozen nn.Linear layer to quantise (GPT-2's Conv1D layers stay float)")
    logger.info("--load_int8: %d linear layers in int8 (%.1f MiB of weights -> %.1f MiB); %d kept float: %s",
                report.layers, report.float_bytes / 2**20, report.int8_bytes / 2**20, len(report.kept_float),
                ", ".join(report.kept_float[:3] + (["..."] if len(report.kept_float) > 3 else [])))
    return report


def build_callbacks(args, metric: str, mode: Mode, run_state: RunStateCallback,
                    comm: distributed.CommCounter | None = None,
                    stall: distributed.StallGuard | None = None, greater_is_better: bool = True) -> list:
    """The mode's callbacks and the run's own; the stateful ones are registered with ``run_state``. ``metric``:
    the dev metric the best-model callback follows (``greater_is_better`` or not); ``comm`` counts the stop-flag
    all-reduces under torchrun and ``stall`` bounds their waits (armed by ``StallCallback``). The ledger comes last,
    so that the steps it times include the other callbacks' work at a step's end (merges)."""
    stateful = mode.callbacks(run_state.record)
    if args.keep_best_model:
        stateful["best"] = BestModelCallback(f"eval_{metric}", mode.mutable_parameters, greater_is_better,
                                             later_ties=args.best_dev_ties == "later",
                                             keep_last=args.eval_last_model)
    stall = stall if stall is not None else distributed.StallGuard()
    callbacks = [*stateful.values(), run_state, StallCallback(stall), StopOnSignal(args.save_on_interrupt, comm, stall),
                 DivergenceCallback(args.divergence_limits)]
    stateful["ledger"] = LedgerCallback(args.budget, comm=comm, stall=stall)
    run_state.stateful = stateful
    return [*callbacks, stateful["ledger"]]


@dataclass
class RunParts:
    """What ``prepare_run`` makes for a trainer: the prepared model, its mode, the run's callbacks and the
    counters they share with the trainer (``MezoTrainer``'s keyword arguments but the data)."""

    model: torch.nn.Module
    mode: Mode
    callbacks: list
    comm: distributed.CommCounter
    ledger: object
    stall: distributed.StallGuard

    def trainer_kwargs(self) -> dict:
        return {"model": self.model, "mode": self.mode, "callbacks": self.callbacks, "comm": self.comm,
                "ledger": self.ledger, "stall": self.stall}


def prepare_run(args, model, objective, batches: Callable[[], list], metric: str,
                also_train: Callable | None = None, greater_is_better: bool = True) -> RunParts:
    """Prepare ``model`` for the run's mode (adapters attached, only its parameters trainable) and build the run's
    callbacks (see ``make_trainer`` for the arguments)."""
    mode = mode_for(args)
    try:
        model = mode.prepare(model, objective, batches)
        if also_train is not None:
            mode.also_train(model, also_train(model))
    except ModeError as err:
        raise ArgumentError(str(err)) from err
    int8_base(args, model, mode)
    run_state = RunStateCallback(model, args.model_name, {}, store_base=mode.stores_base(),
                                 settings=run_settings(args),
                                 beside_adapter=mode.also_trained if mode.adapter else ())
    comm = distributed.CommCounter()  # the zo loss all-reduces and the stop flags, under torchrun
    stall = distributed.StallGuard.open(args.zo_stall_timeout if args.trainer == "zo" else 0.0)  # on every rank
    stall.on_stall = end_stalled_job
    callbacks = build_callbacks(args, metric, mode, run_state, comm, stall, greater_is_better)
    return RunParts(model, mode, callbacks, comm, run_state.stateful["ledger"].ledger, stall)


def make_trainer(args, model, objective, evaluator: Callable | None, batches: Callable[[], list], metric: str,
                 also_train: Callable | None = None, **trainer_kwargs):
    """Prepare ``model`` for the run's mode (adapters attached, only its parameters trainable) and return a ready
    MezoTrainer with the app's ``objective`` and dev ``evaluator`` (None: no dev set; ``run_config.resolve`` then
    turned evaluation during training off) and the run's callbacks. ``args``: the resolved run arguments.
    ``batches()``: a few collated training batches, drawn only by a mode that needs them (LoRA-GA); ``metric``: the
    dev metric the best model follows; ``also_train(model)``: the app's own rule for parameters that train beside
    the mode's (``medium_models``: upstream's MLM head with LoRA and head tuning), called once the mode is prepared;
    it returns their names, which ``Mode.also_train`` makes trainable; ``trainer_kwargs``: the datasets, collator and tokenizer
    the app gives the Trainer."""
    parts = prepare_run(args, model, objective, batches, metric, also_train)
    return MezoTrainer(args=args, objective=objective, evaluator=evaluator, **parts.trainer_kwargs(),
                       **trainer_kwargs)


def stalled_message(err: distributed.StalledRanks) -> str:
    return (f"run.py: error: {err}; ending the job (exit {RESUMABLE_EXIT}) to resume from its latest checkpoint "
            f"(--zo_stall_timeout)")


def end_stalled_job(err: distributed.StalledRanks) -> None:
    """A ``StallGuard`` watch ran out (in its watchdog thread, the main thread blocked in a collective that has no
    bound): say so as a stall in the step's all-reduce is said, and end the process at once (resumable)."""
    print(stalled_message(err), file=sys.stderr, flush=True)
    os._exit(RESUMABLE_EXIT)


def _callback(trainer, cls):
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, cls))


def run_settings(args) -> dict:
    """What a checkpoint records of the run and a resumed run must match: the settings in the result name's hash
    (``results.hashed_settings``, against the app's defaults) and the mode, as JSON gives them back."""
    defaults = default_config_of(type(args))
    return checkpoint_checks.canonical({checkpoint_checks.MODE: args.mode,
                                        **hashed_settings(args.to_dict(), args.keep_best_model, defaults)})


def expected_of(args, trainer: MezoTrainer) -> checkpoint_checks.Expected:
    """What a checkpoint must hold for ``trainer`` (model prepared, callbacks built) to continue from it."""
    model, run_state = trainer.model, _callback(trainer, RunStateCallback)
    groups = trainer.optimizer_groups(model)
    return checkpoint_checks.Expected(
        settings=run_state.settings, defaults=default_config_of(type(args)),
        schedule_changes=lambda old, new, step: checkpoint_checks.schedule_changes(args, old, new, step),
        weights=checkpoint_checks.saved_weight_shapes(model),
        optimizer=None if groups is None else [[tuple(p.shape) for p in g["params"]] for g in groups],
        callbacks={k: set(cb.state_dict()) for k, cb in run_state.stateful.items()
                   if not getattr(cb, "optional_state", False)},  # the ledger: older checkpoints lack it
        base=lora.base_shapes(model),
        base_sha256=run_state.identity["base_sha256"])


def train(args, trainer: MezoTrainer, resume: str | None,
          fit: Callable | None = None) -> tuple[MezoTrainer, dict, Status]:
    """Fine-tune with ``trainer`` (resuming if asked, from a checkpoint that passes ``checkpoint_checks``); returns
    the trainer (``trainer.model`` is the trained model), a summary for the result JSON and the status: completed,
    budget reached, interrupted at step N or diverged at step N. ``resume``: a checkpoint folder, ``auto`` or None
    (the apps pass ``--resume_from_checkpoint``); ``fit(checkpoint)``: the Trainer's own ``train`` (default
    ``trainer.train``; ``ZOTrainer``, which overrides ``train``, passes the Trainer's)."""
    fit = fit or (lambda checkpoint: trainer.train(resume_from_checkpoint=checkpoint))
    expected = expected_of(args, trainer) if resume else None
    checkpoint, state = resolve_resume(resume, args.output_dir, lambda folder: checkpoint_checks.check(folder, expected))
    if checkpoint:
        _callback(trainer, RunStateCallback).restore(trainer.model, checkpoint, state)
        at_budget = check_budget_left(checkpoint, _callback(trainer, LedgerCallback)) == "stopped"
        if at_budget or checkpoint_step(checkpoint) == trainer.args.max_steps:  # (past it: checkpoint_checks)
            return finish_without_training(trainer, checkpoint, at_budget)
    stopper = _callback(trainer, StopOnSignal)
    stopper.install()
    status, summary = Status.completed(), {}
    first_step, started = checkpoint_step(checkpoint), time.time()
    try:
        output = fit(checkpoint)
        summary = {"train_loss": output.training_loss, "global_step": output.global_step}
    except DivergenceError as err:
        logger.error("%s", err)
        status, summary["error"] = Status.diverged(err.step), str(err)
    except distributed.StalledRanks as err:  # no collective can run any more: no summary, no result
        raise RunStopped(stalled_message(err), RESUMABLE_EXIT, error=True, abandon=True) from err
    except Exception as err:  # a checkpoint the disk could not take: stop resumably, else a real error
        message = disk.failed_checkpoint(err, args.output_dir, trainer.state.global_step, RUN_STATE)
        if message is None:
            raise
        status, summary["write_error"] = Status.interrupted(trainer.state.global_step), message
    finally:
        stopper.restore_handlers()
    summary.update(resources.training_speed(time.time() - started, first_step, trainer.state.global_step))
    if _callback(trainer, LedgerCallback).reached and status.is_completed:
        status = Status.budget_reached()  # even with a signal at the same step: the run is done, evaluate it
    if stopper.stopped and status.is_completed:
        status = Status.interrupted(stopper.stopped[1])
        summary["signal"] = stopper.stopped[0]
    return trainer, train_summary(trainer, summary), status


def check_budget_left(checkpoint: str, ledger: LedgerCallback) -> str:
    """``ledger.budget_at_restore()``: ``open`` or ``stopped`` (the checkpoint was written at the step where this
    budget stops the run: nothing is left to train). Refuse a checkpoint past the budget (the Trainer would take
    one more step before the budget could stop it, and the run would be judged at a budget it exceeded)."""
    where = ledger.budget_at_restore()
    if where == "past":
        flag = ledger.budget.reached_by(ledger.ledger)
        raise CheckpointError(f"--resume_from_checkpoint {checkpoint}: the run has spent "
                              f"{ledger.budget.spent(ledger.ledger, flag)} already; raise --{flag} (0: no limit) "
                              f"to continue it")
    return where


def finish_without_training(trainer: MezoTrainer, checkpoint: str, at_budget: bool
                            ) -> tuple[MezoTrainer, dict, Status]:
    """End a run whose ``checkpoint`` (its run state restored) was written where its training ended, at the step
    where its budget stopped it (``at_budget``) or at ``--max_steps``, as that process would have ended had it not
    been stopped during its final evaluation: the checkpoint's weights and Trainer state, then the best dev model
    put back; no training step (the Trainer, resumed there, would take one more when ``--max_steps`` is not a whole
    number of epochs)."""
    trainer._load_from_checkpoint(checkpoint)  # the Trainer's own loader: full weights, shards or adapters
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, BestModelCallback):
            cb.on_train_end(trainer.args, trainer.state, trainer.control, model=trainer.model)
    step = trainer.state.global_step
    ledger = _callback(trainer, LedgerCallback)
    if at_budget:
        ledger.reached = (ledger.budget.reached_by(ledger.ledger), step)
    logger.info("%s was written where training ended (%s): nothing left to train, evaluating it", checkpoint,
                ledger.budget.spent(ledger.ledger, ledger.reached[0]) if at_budget else f"--max_steps {step}")
    summary = {"global_step": step, **resources.training_speed(0.0, step, step)}  # no loss: no step here
    return trainer, train_summary(trainer, summary), Status.budget_reached() if at_budget else Status.completed()


def ledger_record(trainer: MezoTrainer) -> dict:
    """The result JSON's ``ledger`` (``ledger.Ledger``: the training's cost over every process) and ``budget``
    (the limits, and which one ended training at which step, if one did)."""
    ledger = _callback(trainer, LedgerCallback)
    return {"ledger": ledger.ledger.summary(), "budget": ledger.budget.record(ledger.reached)}


def evaluate_last(trainer: MezoTrainer | None, evaluate: Callable[[torch.nn.Module], dict],
                  best: dict) -> dict | None:
    """``--eval_last_model``: ``evaluate(model)`` on the model of the run's last step (swapped in for the block,
    then the best dev model put back), with that step under ``step``; where the best dev model is the last one,
    ``best`` (what the same evaluation gave it) instead. None where no best dev model was kept."""
    kept = _callback(trainer, RunStateCallback).stateful.get("best") if trainer is not None else None
    if kept is None or kept.last_step is None:
        return None
    if not kept.last_differs:
        return {**best, "step": kept.last_step}
    with kept.swap_in_last(trainer.model):
        return {**evaluate(trainer.model), "step": kept.last_step}


def checkpoint_step(checkpoint: str | None) -> int:
    """The step a run resumes from: the N of its ``checkpoint-N`` folder, or for a folder named otherwise the
    ``global_step`` in its ``trainer_state.json`` (0 for a fresh start)."""
    if not checkpoint:
        return 0
    named = checkpoint_checks.named_step(Path(checkpoint))
    return named if named is not None else checkpoint_checks.checkpoint_step(Path(checkpoint))


def train_summary(trainer, summary: dict) -> dict:
    """``summary`` plus the log history and what the mode and the best-model callback recorded."""
    summary["log_history"] = trainer.state.log_history
    # what trains at a step (XGBLoRA with Ls < all: the active boosters), as the README's parameter counts
    summary["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    summary["optimizer_state_bytes"] = optimizer_state_bytes(trainer.optimizer)
    stateful = _callback(trainer, RunStateCallback).stateful
    summary.update(trainer.mode.summary(stateful))
    if trainer.mode.also_trained:
        summary["also_trained"] = list(trainer.mode.also_trained)
    if "best" in stateful:
        summary["best_dev"] = {"value": stateful["best"].best, "step": stateful["best"].best_step}
    summary["ranks"] = distributed.gather(rank_checksums(trainer.model, trainer.mode, summary))
    summary["collectives"] = {"calls": trainer.comm.calls, "bytes": trainer.comm.bytes}
    return summary


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of the tensors the optimizer keeps per parameter (momentum, Adam moments, HiZOO's Hessian, ...), as
    at the end of training; 0 without an optimizer (accelerate's wrapper is looked through)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    states = inner.state.values() if inner is not None else ()
    return sum(v.numel() * v.element_size() for state in states for v in state.values() if torch.is_tensor(v))


def rank_checksums(model, mode: Mode, summary: dict) -> dict:
    """This rank's sha256 of the parameters training can change (``mode.mutable_parameters``: trainable ones,
    adapters, merged-into base weights) and of its training record (mode summary, logged losses). Gathered from
    every rank into the result, so that equal digests show the ranks ended bit-identical."""
    record = {k: v for k, v in summary.items() if k not in ("log_history", "ranks", "collectives", "train_s",
                                                            "steps_per_s")}  # timings differ between ranks
    record["losses"] = [h["loss"] for h in summary.get("log_history", []) if "loss" in h]
    text = json.dumps(record, sort_keys=True, default=str)
    digest = distributed.tensors_sha256(mode.mutable_parameters(model).items())
    return {"rank": distributed.rank(), "params_sha256": digest,
            "record_sha256": hashlib.sha256(text.encode()).hexdigest()}


def save(args, model, tokenizer, trainer: MezoTrainer | None = None) -> None:
    """Save the trained model (``--save_model``) from rank 0 only: under torchrun every rank holds the same one.
    Under FSDP every rank takes part in gathering the full state dict, which rank 0 writes (the Trainer's own
    ``save_model``; ``--fsdp`` is full-parameter training, so this is the whole model)."""
    out = Path(args.output_dir)
    if args.fsdp and trainer is not None:
        trainer.save_model(str(out / "model"))
    elif distributed.is_main():
        mode_for(args).save(model, tokenizer, out)
    logger.info("saved the trained model to %s", args.output_dir)


class ResultWriteError(ResultPathError):
    """The result JSON could not be written at the end of a run; it was printed on stderr instead."""


def publish(path: Path, result: dict, overwrite: bool, budget=None) -> Path | None:
    """``results.publish_result`` on rank 0 (the other ranks write nothing and get ``path`` back). ``budget``: the
    run's (``ledger.Budget``), which may continue a ``budget reached`` result at ``path``. If the write fails (a
    full disk, a folder gone read-only), the result is not lost: it is printed on stderr as JSON, the error is
    logged, and None is returned."""
    if not distributed.is_main():
        return path
    try:
        return publish_result(path, result, overwrite, budget)
    except OSError as err:
        print(json.dumps(strict(result), indent=2, default=str), file=sys.stderr, flush=True)
        logger.error("cannot write the result to %s (%s); it is printed above on stderr", path, err.strerror or err)
        return None


def stamp(args, result: dict, start: float) -> None:
    """The run time (one reading of the clock for ``runtime_s`` and ``resources``) and the resolved config."""
    elapsed = time.time() - start
    result["runtime_s"] = round(elapsed, 2)
    result["resources"] = resources.usage(elapsed)
    result["config"] = args.to_dict()


def finish(args, result: dict, path: Path, start: float, model, tokenizer, trainer=None) -> Path:
    """Add the run time, resources and resolved configuration to ``result``, save the model if ``--save_model``,
    and publish the result; returns where it went (another path if a run completed ``path`` meanwhile)."""
    stamp(args, result, start)
    if args.save_model:
        save(args, model, tokenizer, trainer)
    written = publish(path, result, args.overwrite, args.budget)
    if written is None:
        raise ResultWriteError(f"cannot write the result to {path}: the run finished, its result JSON is printed "
                               f"above on stderr (copy it to that path); make room or fix the folder's permissions")
    if written != path:
        logger.error("another run completed %s while this one ran; this run's result is in %s", path, written)
    return written


class RunStopped(Exception):
    """Training stopped early (a signal, divergence, a checkpoint the disk could not take); the result JSON says
    so. ``exit_code`` for run.py; ``error``: the message is an error for stderr, not a warning for the log."""

    def __init__(self, message: str, exit_code: int, error: bool = False, abandon: bool = False):
        super().__init__(message)
        self.exit_code = exit_code  # RESUMABLE_EXIT after a signal or a failed checkpoint, 1 after divergence
        self.error = error
        self.abandon = abandon  # the process group is broken (a stalled rank): exit without leaving it


def stopped_run(args, result: dict, path: Path, model, tokenizer, start: float, trainer=None):
    """Write the result of a run that did not complete (no evaluation) and raise RunStopped."""
    stamp(args, result, start)
    signal_name = result["train"].get("signal")
    if signal_name in ("SIGUSR1", "SIGINT"):  # --save_on_interrupt: save the model as trained so far
        save(args, model, tokenizer, trainer)
    written = publish(path, result, args.overwrite, args.budget) or f"{path} not written (printed on stderr)"
    if signal_name:
        raise RunStopped(f"{result['status']} ({signal_name}); checkpoint in {args.output_dir}, result in "
                         f"{written}; re-run with --resume_from_checkpoint auto to continue", RESUMABLE_EXIT)
    if write_error := result["train"].get("write_error"):
        raise RunStopped(f"run.py: error: {write_error}; result in {written}", RESUMABLE_EXIT, error=True)
    raise RunStopped(f"run.py: error: {result['train']['error']}; result in {written}", 1)


def exit_stopped(stop: RunStopped):
    """End the process after a stopped run: exit 1 with the message after divergence, RESUMABLE_EXIT after a
    signal (the message logged as a warning) or a checkpoint the disk could not take (the message on stderr)."""
    if stop.exit_code != RESUMABLE_EXIT:
        raise SystemExit(str(stop))
    if stop.abandon:  # a rank stopped answering: leaving the group could wait for it, or abort the process
        print(stop, file=sys.stderr, flush=True)
        sys.stdout.flush()
        release_output_dirs()
        os._exit(stop.exit_code)
    if stop.error:
        print(stop, file=sys.stderr)
        raise SystemExit(stop.exit_code)
    logger.warning("%s", stop)
    raise SystemExit(stop.exit_code)
