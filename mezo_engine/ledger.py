"""What a run has spent, and the budgets that end it: pure bookkeeping, standard library only.

A *forward* is one pass over a batch of B training examples; a method that runs one batched pass over N·B rows
(N perturbations at once) counts N. A ZO step costs what its optimizer says (``ZOOptimizer.forwards_per_step``:
2 for MeZO's ZO-SGD, 2n for n-SPSA); a regular (backprop) micro-batch costs one forward and one backward. Under
torchrun a step's forwards are those of the global batch, the same count on every rank. Dev evaluations are not
training forwards: they are counted apart (``dev_evaluations``).

The seconds are those of the training steps alone (from a step's start to its end, merges between steps
included), without evaluation, logging and checkpoint saving: wall-clock seconds and this process's CPU seconds
(``time.process_time``, every thread). A resumed run continues the counts stored in its checkpoint, so they are
the cost of the trajectory that led to the result, whatever number of processes it took (``processes``).

Where the wall-clock time went, per phase (seconds, summed over the processes like the rest): ``forward_s`` (the
training loss's forwards; for regular training the whole forward and backward of each micro-batch),
``step_other_s`` (the rest of the steps: perturbing and restoring the weights, the update, merges),
``between_steps_s`` (from a step's end to the next one's start, without evaluation and saving: the data loader,
logging, callbacks), of which ``data_s`` is the collating of training batches, ``eval_s`` (dev evaluations) and
``checkpoint_s`` (saving checkpoints). ``loop_wall_s`` is the training loop's wall-clock from start to end;
``reused_forwards`` counts the forwards (among ``forwards``) that took what lies below the perturbed blocks from
the step's first forward instead of computing it (``--zo_reuse_activations``);
``summary()`` adds the CPU time over the wall time of the steps (``cpu_over_wall``: about the number of threads
for a run that has its cores, well below it for one starved by other jobs).

``Budget``: ``--max_forwards`` and ``--max_time`` (0: none); a run stops after the first step at which its
ledger reaches one of them (the last step may pass the forward budget by less than its own cost); a checkpoint
written at that step ends the run's training, so a run stopped during its final evaluation is finished from it
without another step (``runner.train``).
``results.py`` reads the ledger a result records to decide whether a new budget continues it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields


@dataclass
class Ledger:
    """The cumulative cost of a run's training (see the module docstring)."""

    forwards: int = 0
    backwards: int = 0
    train_wall_s: float = 0.0
    train_cpu_s: float = 0.0
    dev_evaluations: int = 0
    processes: int = 0  # the processes whose training steps are counted (1 + the resumes)
    forward_s: float = 0.0
    step_other_s: float = 0.0
    data_s: float = 0.0
    between_steps_s: float = 0.0
    eval_s: float = 0.0
    checkpoint_s: float = 0.0
    loop_wall_s: float = 0.0
    reused_forwards: int = 0  # forwards that took the lower blocks' output from the step's first (activation_reuse)

    def count(self, forwards: int, backwards: int = 0) -> None:
        """Add the passes of one step (or micro-batch)."""
        self.forwards += forwards
        self.backwards += backwards

    def add_time(self, wall_s: float, cpu_s: float) -> None:
        """Add the seconds of one step."""
        self.train_wall_s += wall_s
        self.train_cpu_s += cpu_s

    def row(self) -> dict[str, float]:
        """What every logged row carries: the counts and seconds so far."""
        return {"forwards": self.forwards, "backwards": self.backwards, "train_wall_s": self.train_wall_s,
                "train_cpu_s": self.train_cpu_s}

    def state_dict(self) -> dict:
        """Every field, as plain numbers (the checkpoint's ``ledger``)."""
        return asdict(self)

    def summary(self) -> dict:
        """The result JSON's ``ledger``: every field, and the steps' CPU seconds over their wall seconds."""
        ratio = self.train_cpu_s / self.train_wall_s if self.train_wall_s else None
        return {**asdict(self), "cpu_over_wall": ratio}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (a ``state_dict``); a field it lacks keeps its value."""
        for f in fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])

    @classmethod
    def from_record(cls, record: dict) -> Ledger:
        """The ledger a result JSON recorded."""
        ledger = cls()
        ledger.load_state_dict(record)
        return ledger


class StepClock:
    """Wall and process CPU seconds from ``start`` to ``stop``."""

    def __init__(self):
        self._start: tuple[float, float] | None = None

    def start(self) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def stop(self) -> tuple[float, float]:
        """(wall, cpu) seconds since ``start``; (0, 0) without a start."""
        if self._start is None:
            return 0.0, 0.0
        wall, cpu = self._start
        self._start = None
        return time.perf_counter() - wall, time.process_time() - cpu


@dataclass(frozen=True)
class Budget:
    """``--max_forwards`` (training forwards) and ``--max_time`` (training wall seconds); 0 is no limit."""

    max_forwards: int = 0
    max_time: float = 0.0

    def reached_by(self, ledger: Ledger) -> str | None:
        """The flag whose limit ``ledger`` has reached (``max_forwards`` first), or None."""
        if self.max_forwards and ledger.forwards >= self.max_forwards:
            return "max_forwards"
        if self.max_time and ledger.train_wall_s >= self.max_time:
            return "max_time"
        return None

    def stopped_at(self, before: Ledger, after: Ledger) -> str | None:
        """The flag whose limit a step from ``before`` to ``after`` reached first (the step a run with this budget
        stops after), or None: reached by ``after`` and not yet by ``before``."""
        flag = self.reached_by(after)
        return flag if flag and not self.reached_by(before) else None

    def spent(self, ledger: Ledger, flag: str) -> str:
        """What ``ledger`` has spent of ``flag``'s limit, in words."""
        if flag == "max_forwards":
            return f"{ledger.forwards} forwards (--max_forwards {self.max_forwards})"
        return f"{ledger.train_wall_s:.1f} training seconds (--max_time {self.max_time:g})"

    def record(self, reached: tuple[str, int] | None) -> dict:
        """The result JSON's ``budget``: the limits and, when one ended the run, its flag and step."""
        flag, step = reached or (None, None)
        return {"max_forwards": self.max_forwards, "max_time": self.max_time, "reached": flag, "step": step}
