"""Divergence that never reaches NaN, read from the logged numbers alone (standard library only).

A run can blow up and stay finite: ZO-SGD at a huge LR takes the loss from 0.7 to 1e11, after which the
projected gradient is exactly 0 at every step (the loss saturates, both forwards give the same number); regular
training can hold its loss near ln 2 while the gradient norm grows ten-thousandfold. ``Watch`` reads each logged
entry of the Trainer's ``log_history`` (``loss``, ``grad_norm``, ``projected_grad_abs_max``, at the step it was
logged) and names the first sign of such a blow-up:

* the logged loss above ``loss_ratio`` times the *first logged loss*. The first is the model as it came, averaged
  over ``--logging_steps`` steps; a run's loss should fall from there. A running minimum would be a worse base:
  the minimum of noisy values drifts down, so a healthy run's later noise would trip it. A first loss <= 0 (an
  objective such as minus F1) gives no base and no check;
* for zo, the projected gradient exactly 0 over ``zero_steps`` consecutive steps (every logged
  ``projected_grad_abs_max`` of those steps is 0): the estimate no longer sees the loss change at all;
* for regular training, the logged ``grad_norm`` above ``grad_norm_ratio`` times the first positive one (zo logs
  none, or 0, which gives no base).

The base values come from the history itself, so a resumed run that replays its restored ``log_history`` first
(``trainer.DivergenceCallback``) checks against the same ones. 0 turns a check off.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

CAUSE = "likely cause: --learning_rate too large"


@dataclass(frozen=True)
class Limits:
    """The thresholds (``--diverge_loss_ratio``, ``--diverge_zero_grad_steps``, ``--diverge_grad_norm_ratio``)."""

    loss_ratio: float = 10.0
    zero_steps: int = 20
    grad_norm_ratio: float = 1000.0


class Watch:
    """The logged entries of one run, in order; ``observe`` returns the reason the run diverged, or None."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.first_loss: float | None = None
        self.first_grad_norm: float | None = None
        self.zero_steps = 0  # consecutive steps whose projected gradients were all exactly 0
        self.last_step = 0

    def observe(self, entry: dict, step: int) -> str | None:
        """Read one logged entry (the Trainer's ``logs``) made at the 1-based ``step``; entries without a training
        loss (evaluations, the final summary) are skipped."""
        if "loss" not in entry:
            return None
        steps, self.last_step = step - self.last_step, step
        return (self._loss(entry["loss"]) or self._zero_projected(entry.get("projected_grad_abs_max"), steps)
                or self._grad_norm(entry.get("grad_norm")))

    def _loss(self, loss: float) -> str | None:
        if self.first_loss is None:
            self.first_loss = loss
        base, ratio = self.first_loss, self.limits.loss_ratio
        if ratio and base > 0 and loss > ratio * base:
            return (f"loss {loss:.4g} above {ratio:g} x the first logged loss {base:.4g} (--diverge_loss_ratio); "
                    f"{CAUSE}")
        return None

    def _zero_projected(self, largest: float | None, steps: int) -> str | None:
        if largest is None:
            return None
        self.zero_steps = self.zero_steps + steps if largest == 0 else 0
        limit = self.limits.zero_steps
        if limit and self.zero_steps >= limit:
            return (f"projected gradient exactly 0 for {self.zero_steps} consecutive steps "
                    f"(--diverge_zero_grad_steps {limit}): the loss no longer changes with the weights; {CAUSE}, "
                    f"or --zo_eps too small for this dtype")
        return None

    def _grad_norm(self, norm: float | None) -> str | None:
        if norm is None or not math.isfinite(norm):
            return None  # a non-finite norm is check_finite's case
        if self.first_grad_norm is None and norm > 0:
            self.first_grad_norm = norm
        base, ratio = self.first_grad_norm, self.limits.grad_norm_ratio
        if ratio and base and norm > ratio * base:
            return (f"grad_norm {norm:.4g} above {ratio:g} x the first logged grad_norm {base:.4g} "
                    f"(--diverge_grad_norm_ratio); {CAUSE} (or no gradient clipping: --max_grad_norm)")
        return None


def replay(history: Iterable[dict], limits: Limits) -> tuple[int, str] | None:
    """The first (step, reason) at which a ``log_history`` (entries with ``step``) diverged, or None."""
    watch = Watch(limits)
    for entry in history:
        reason = watch.observe(entry, entry["step"])
        if reason:
            return entry["step"], reason
    return None
