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
* the state of the stateful callbacks (boosting history, booster generator, active blocks; best dev value and
  snapshot; the cost ledger, so that a resumed run continues its counts), through their ``state_dict`` /
  ``load_state_dict``.

The zo step seed is a function of the run seed and the step (``zo.step_seed``), so the step count restores it.

Signals: SIGTERM (what SLURM sends before killing a job) and, with ``--save_on_interrupt``, SIGUSR1 and SIGINT
(as upstream MeZO's flag) make training stop after the current step with a checkpoint; run.py then exits with
``RESUMABLE_EXIT``.
"""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from mezo_engine import distributed, lora

logger = logging.getLogger(__name__)

RUN_STATE = "run_state.pt"
RESUMABLE_EXIT = 75  # EX_TEMPFAIL: stopped by a signal with a checkpoint; re-run with --resume_from_checkpoint auto


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names it and says why."""


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """The checkpoint folder to resume from: ``auto`` is the latest in ``output_dir`` (None if there is none)."""
    if not value:
        return None
    if value == "auto":
        found = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        logger.info("--resume_from_checkpoint auto: %s", f"resuming from {found}" if found else
                    f"no {PREFIX_CHECKPOINT_DIR}-* in {output_dir}, starting from step 0")
        if found is None:
            return None
        value = found
    if not (Path(value) / RUN_STATE).is_file():
        raise CheckpointError(f"--resume_from_checkpoint {value}: no {RUN_STATE} there (not a checkpoint of "
                              f"run.py, or one cut short); delete it, or give another checkpoint-<step> folder")
    return value


class RunStateCallback(TrainerCallback):
    """Writes ``run_state.pt`` into every checkpoint and restores a run from one (see the module docstring)."""

    def __init__(self, model, model_name: str, stateful: dict, store_base: bool = False):
        self.identity = {"model_name": model_name, "base_sha256": lora.base_fingerprint(model)
                         if lora.lora_layers(model) else None}
        self.stateful = stateful  # name -> object with state_dict() / load_state_dict()
        self.store_base = store_base  # LoRA-GA: base weights change outside merges; store them
        self.merges: list[lora.MergeFactor] = []

    def record(self, report: lora.MergeReport) -> None:
        """Keep the factors of a merge (called by the merging callbacks)."""
        self.merges.extend(report.factors)

    def state_dict(self, model) -> dict:
        state = {"identity": self.identity, "callbacks": {k: cb.state_dict() for k, cb in self.stateful.items()}}
        if self.store_base:
            state["base_weights"] = {n: w.detach().cpu().clone() for n, w in lora.base_weights(model).items()}
        else:
            state["merges"] = [vars(f) for f in self.merges]
        return state

    def on_save(self, args, state, control, model=None, **kwargs):
        """Write ``run_state.pt`` beside the Trainer's files; under torchrun rank 0 alone writes it (every rank
        holds the same state, and the Trainer writes the checkpoint's model from rank 0)."""
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        tmp = folder / f".{RUN_STATE}.tmp"
        torch.save(self.state_dict(model), tmp)
        os.replace(tmp, folder / RUN_STATE)

    def restore(self, model, checkpoint: str) -> None:
        """Put the base weights and the callbacks' states of ``checkpoint`` into ``model`` and the callbacks."""
        state = torch.load(Path(checkpoint) / RUN_STATE, map_location="cpu", weights_only=False)
        if state["identity"]["base_sha256"] != self.identity["base_sha256"]:  # the path may move; weights may not
            raise CheckpointError(f"--resume_from_checkpoint {checkpoint}: made from base model "
                                  f"{state['identity']}, but this run loads {self.identity}")
        if "base_weights" in state:
            with torch.no_grad():
                for name, weight in lora.base_weights(model).items():
                    weight.copy_(state["base_weights"][name])
        else:
            self.merges = [lora.MergeFactor(**f) for f in state["merges"]]
            lora.replay_merges(model, self.merges)
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


class StopOnSignal(TrainerCallback):
    """SIGTERM (and SIGUSR1, SIGINT with ``--save_on_interrupt``): finish the current step, save a checkpoint, stop.

    ``stopped`` is then ``(signal name, step)``. The handlers only set a flag; the previous handlers come back in
    ``restore_handlers`` (run.py calls it when training ends). Under torchrun the ranks agree after every step
    (``distributed.max_over_ranks`` of the signal number, one float64; counted in ``comm``): a signal that
    reaches one rank a step later than another still stops all of them after the same step.
    """

    def __init__(self, save_on_interrupt: bool = False, comm: distributed.CommCounter | None = None):
        self.comm = comm
        self.signals = [signal.SIGTERM] + ([signal.SIGUSR1, signal.SIGINT] if save_on_interrupt else [])
        self.received: int | None = None
        self.stopped: tuple[str, int] | None = None
        self._previous = {}

    def install(self) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        logger.warning("received %s: stopping after this step with a checkpoint", signal.Signals(signum).name)
        self.received = signum

    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped is not None:
            return
        received = int(distributed.max_over_ranks(self.received or 0, self.comm))  # 0: no signal on any rank
        if received:
            self.received = received  # the same signal on every rank, whichever got one first
            control.should_save = True
            control.should_training_stop = True
            self.stopped = (signal.Signals(self.received).name, state.global_step)
