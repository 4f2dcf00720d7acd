"""Schedules as pure functions of step counts: when boosters are merged, how the learning rate restarts after a
merge, and how many directions an n-SPSA step samples."""
from __future__ import annotations

SAMPLE_SCHEDULERS = ("constant", "linear")


def merge_due(step: int, kappa: int) -> bool:
    """Step-based boosting: merge after optimizer step ``step`` (1-based count) when it is a multiple of kappa."""
    return kappa > 0 and step > 0 and step % kappa == 0


def epoch_merge_due(epoch: int, frequency: int) -> bool:
    """Epoch-based boosting: merge after ``epoch`` (1-based count of finished epochs) every ``frequency`` epochs."""
    return frequency > 0 and epoch > 0 and epoch % frequency == 0


def num_merges(max_steps: int, kappa: int) -> int:
    """Merges during a step-based run of ``max_steps`` steps: floor(max_steps / kappa), none at step 0."""
    return max_steps // kappa if kappa > 0 else 0


def jagged_factor(step: int, kappa: int, warmup: int) -> float:
    """ReLoRA's jagged schedule: after each merge (every kappa steps) the LR warms up again over ``warmup`` steps.

    ``step`` is the 0-based index of the optimizer step about to run; the first iteration keeps the base schedule.
    """
    if warmup <= 0 or kappa <= 0 or step < kappa:
        return 1.0
    return min(1.0, (step % kappa + 1) / warmup)


def num_samples(scheduler: str, samples: int, step: int, max_steps: int) -> int:
    """Directions of the n-SPSA step with 0-based index ``step`` (the steps done before it), as upstream MeZO's
    ``--zero_order_sample_scheduler``: ``constant`` always ``samples``; ``linear`` grows from 1 to about
    ``samples`` over the run, ``max(1, int(step / max_steps * samples))``."""
    if scheduler == "constant":
        return samples
    if scheduler == "linear":
        if max_steps < 1:
            raise ValueError(f"the linear sample scheduler needs the run's number of steps, got {max_steps}")
        return max(1, int(step / max_steps * samples))
    raise ValueError(f"sample scheduler {scheduler!r} unknown; known: {', '.join(SAMPLE_SCHEDULERS)}")
