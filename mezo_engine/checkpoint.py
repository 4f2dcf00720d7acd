"""Exact resume and preemption: what a checkpoint holds beyond the Trainer's own files, and the stop signals.

The Trainer's checkpoint (``checkpoint-<step>/``) holds the trainable weights (the whole model for full-parameter
training; only the live adapter for a PEFT model), optimizer, scheduler, RNG states and ``trainer_state.json``
(step, log history). ``RunStateCallback.on_save`` adds ``run_state.pt`` beside them with what the trajectory
also depends on:

* the base model's identity: ``--model_name`` and a sha256 of the adapted modules' base weights before training;
* the merges into the base weights (XGBLoRA boosters, partial merges) as a stack of factors (module, A, B,
  scaling, coefficient), replayed on load with the same float ops in the same order (bit-exact), so a checkpoint
  costs the boosters, not a copy of the base model. LoRA-GA shifts the base weights inside PEFT, so in that mode
  the adapted modules' base weights themselves are stored instead;
* the parameters an app trains beside an adapter (``Mode.also_train``: ``medium_models``' MLM head with LoRA),
  which a PEFT model's checkpoint leaves out;
* the state of the stateful callbacks (boosting history, booster generator, active blocks; best dev value and
  snapshot; the cost ledger, so that a resumed run continues its counts), through their ``state_dict`` /
  ``load_state_dict``;
* the run's settings (``runner.run_settings``): a run resumed from the checkpoint is checked against them
  (``checkpoint_checks``), as is every file it needs, before anything of it is loaded.

``run_state.pt`` is written last, whole (a temporary name, then a rename), and older checkpoints are rotated away
only after it: a checkpoint with a readable ``run_state.pt`` is complete.

The zo step seed is a function of the run seed and the step (``zo.step_seed``), so the step count restores it.

Signals: SIGTERM (what SLURM sends before killing a job) and, with ``--save_on_interrupt``, SIGUSR1 and SIGINT
(as upstream MeZO's flag) make training stop after the current step with a checkpoint; run.py then exits with
``RESUMABLE_EXIT``.
"""
from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from mezo_engine import distributed, lora
from mezo_engine.checkpoint_checks import RUN_STATE, CheckpointError, DamagedCheckpoint, named_step

__all__ = ["RUN_STATE", "RESUMABLE_EXIT", "CheckpointError", "resolve_resume", "RunStateCallback", "StopOnSignal"]

logger = logging.getLogger(__name__)

RESUMABLE_EXIT = 75  # EX_TEMPFAIL: stopped by a signal with a checkpoint; re-run with --resume_from_checkpoint auto
DAMAGED_PREFIX = "damaged-"  # a damaged checkpoint that auto walked past is moved aside under this prefix


def resolve_resume(value: str | None, output_dir: str, check: Callable[[Path], dict]) -> tuple[str | None, dict]:
    """The checkpoint folder to resume from and its run state (``check(folder)``, which raises a CheckpointError
    naming the problem; ``checkpoint_checks.check``); (None, {}) for a fresh start. An explicit folder that fails
    is refused. ``auto`` takes the newest ``checkpoint-<step>`` in ``output_dir`` that passes: a damaged one is
    skipped (logged, and moved aside so that neither a later ``auto`` nor the rotation of old checkpoints counts
    it), a mismatched one refused."""
    if not value:
        return None, {}
    if value != "auto":
        try:
            return value, check(Path(value))
        except CheckpointError as err:
            raise type(err)(f"--resume_from_checkpoint {value}: {err}") from None
    for folder in checkpoints_newest_first(output_dir):
        try:
            state = check(folder)
        except DamagedCheckpoint as err:
            logger.warning("--resume_from_checkpoint auto: skipping %s: %s%s", folder, err, set_aside(folder))
            continue
        except CheckpointError as err:
            raise type(err)(f"--resume_from_checkpoint auto: {folder}: {err}") from None
        logger.info("--resume_from_checkpoint auto: resuming from %s", folder)
        return str(folder), state
    logger.info("--resume_from_checkpoint auto: no usable %s-* in %s, starting from step 0", PREFIX_CHECKPOINT_DIR,
                output_dir)
    return None, {}


def checkpoints_newest_first(output_dir: str) -> list[Path]:
    """The ``checkpoint-<step>`` folders in ``output_dir``, highest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(named_step(p), p) for p in folder.iterdir() if p.is_dir() and named_step(p) is not None]
    return [p for _, p in sorted(found, reverse=True)]


def set_aside(folder: Path) -> str:
    """Rename a damaged checkpoint to ``damaged-checkpoint-<step>[.<k>]`` (rank 0 only); the log's note."""
    if not distributed.is_main():
        return ""
    target, k = folder.with_name(DAMAGED_PREFIX + folder.name), 1
    while target.exists():
        target, k = folder.with_name(f"{DAMAGED_PREFIX}{folder.name}.{k}"), k + 1
    os.replace(folder, target)
    return f" (moved to {target})"


class RunStateCallback(TrainerCallback):
    """Writes ``run_state.pt`` into every checkpoint and restores a run from one (see the module docstring)."""

    def __init__(self, model, model_name: str, stateful: dict, store_base: bool = False,
                 settings: dict | None = None, beside_adapter: Sequence[str] = ()):
        self.identity = {"model_name": model_name, "base_sha256": lora.base_fingerprint(model)
                         if lora.lora_layers(model) else None}
        self.settings = settings  # the run's settings a resumed run is checked against (checkpoint_checks)
        self.stateful = stateful  # name -> object with state_dict() / load_state_dict()
        self.store_base = store_base  # LoRA-GA: base weights change outside merges; store them
        self.beside_adapter = list(beside_adapter)  # trained beside an adapter: not in the PEFT checkpoint
        self.merges: list[lora.MergeFactor] = []

    def record(self, report: lora.MergeReport) -> None:
        """Keep the factors of a merge (called by the merging callbacks)."""
        self.merges.extend(report.factors)

    def state_dict(self, model) -> dict:
        state = {"identity": self.identity, "settings": self.settings,
                 "callbacks": {k: cb.state_dict() for k, cb in self.stateful.items()}}
        if self.store_base:
            state["base_weights"] = {n: w.detach().cpu().clone() for n, w in lora.base_weights(model).items()}
        else:
            state["merges"] = [vars(f) for f in self.merges]
        if self.beside_adapter:
            params = dict(model.named_parameters())
            state["beside_adapter"] = {n: params[n].detach().cpu().clone() for n in self.beside_adapter}
        return state

    def on_save(self, args, state, control, model=None, **kwargs):
        """Complete the checkpoint the Trainer just wrote with ``run_state.pt`` (written whole under another name,
        then renamed: a checkpoint holds all of it or none), then rotate old checkpoints: the Trainer is handed
        no ``save_total_limit`` (``run_config.derive_flags``), so an older checkpoint goes only once a newer one
        is complete. Under torchrun rank 0 alone writes (every rank holds the same state, and the Trainer writes
        the checkpoint's model from rank 0)."""
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        write_whole(self.state_dict(model), folder / RUN_STATE)
        rotate_checkpoints(args.output_dir, getattr(args, "checkpoints_kept", None), best_model_checkpoint=str(folder),
                           use_mtime=True)  # as the Trainer rotates; the new one protected as its "best"

    def restore(self, model, checkpoint: str, state: dict) -> None:
        """Put the base weights and the callbacks' states of ``checkpoint`` (its run state ``state``, checked by
        ``checkpoint_checks.check``) into ``model`` and the callbacks."""
        if "base_weights" in state:
            with torch.no_grad():
                for name, weight in lora.base_weights(model).items():
                    weight.copy_(state["base_weights"][name])
        else:
            self.merges = [lora.MergeFactor(**f) for f in state["merges"]]
            lora.replay_merges(model, self.merges)
        self._restore_beside_adapter(model, state.get("beside_adapter", {}), checkpoint)
        for name, cb in self.stateful.items():
            self._restore_callback(checkpoint, name, cb, state["callbacks"])
        logger.info("restored %s: %d merges replayed", checkpoint, len(self.merges))

    @staticmethod
    def _restore_callback(checkpoint: str, name: str, cb, saved: dict) -> None:
        """Load ``cb``'s state from the checkpoint's ``saved`` states. A checkpoint without it is refused, unless
        the callback can start afresh there (``optional_state``: the cost ledger, which older checkpoints lack)."""
        if name in saved:
            cb.load_state_dict(saved[name])
        elif getattr(cb, "optional_state", False):
            logger.warning("%s holds no %s state (an older checkpoint): it starts afresh there", checkpoint, name)
        else:
            raise CheckpointError(f"--resume_from_checkpoint {checkpoint}: it holds no state of the {name} callback "
                                  f"this run needs; resume it with the settings it was made with")


    def _restore_beside_adapter(self, model, saved: dict, checkpoint: str) -> None:
        """Copy the saved parameters trained beside the adapter back; a checkpoint without them is refused."""
        if missing := sorted(set(self.beside_adapter) - set(saved)):
            raise CheckpointError(f"--resume_from_checkpoint {checkpoint}: it lacks {', '.join(missing)}, which "
                                  f"this run trains beside its adapter (a checkpoint of another trainable set)")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in self.beside_adapter:
                params[name].copy_(saved[name])


def write_whole(obj, path: Path) -> None:
    """``torch.save`` to a temporary name beside ``path``, flushed to disk, then renamed to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class StopOnSignal(TrainerCallback):
    """SIGTERM (and SIGUSR1, SIGINT with ``--save_on_interrupt``): finish the current step, save a checkpoint, stop.

    ``stopped`` is then ``(signal name, step)``. The handlers only set a flag; the previous handlers come back in
    ``restore_handlers`` (run.py calls it when training ends). Under torchrun the ranks agree after every step
    (``distributed.max_over_ranks`` of the signal number, one float64; counted in ``comm``, its wait bounded by
    ``guard``; 0: no signal on any rank): a signal that reaches one rank a step later than another still stops all
    of them after the same step.
    """

    def __init__(self, save_on_interrupt: bool = False, comm: distributed.CommCounter | None = None,
                 guard: distributed.StallGuard | None = None):
        self.comm, self.guard = comm, guard
        self.signals = [signal.SIGTERM] + ([signal.SIGUSR1, signal.SIGINT] if save_on_interrupt else [])
        self.received: int | None = None
        self.stopped: tuple[str, int] | None = None
        self._previous = {}

    def install(self) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore_handlers(self) -> None:
        """Put the previous handlers back; after a stop, ignore SIGTERM and SIGUSR1 instead, so that a repeated one
        (a scheduler sending SIGTERM twice) cannot end the process with 143 before it exits with RESUMABLE_EXIT.
        Ignored at the OS level (``SIG_IGN``): a Python handler is reset to the default at interpreter exit. A
        second Ctrl-C (SIGINT) still ends the process, as a person at a terminal expects."""
        ignored = [s for s in self._previous if self.stopped and s != signal.SIGINT]
        if ignored:
            logger.info("stopping: %s ignored from now on", ", ".join(s.name for s in ignored))
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if sig in ignored else handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        logger.warning("received %s: stopping after this step with a checkpoint", signal.Signals(signum).name)
        self.received = signum

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped is not None:
            return
        received = int(distributed.max_over_ranks(self.received or 0, self.comm, self.guard,
                                                  f"the ranks' agreement after step {state.global_step}"))
        if received:
            self.received = received  # the same signal on every rank, whichever got one first
            control.should_save = True
            control.should_training_stop = True
            self.stopped = (signal.Signals(self.received).name, state.global_step)
