"""When boosters are merged, and how the learning rate restarts after a merge: pure functions of step counts."""
from __future__ import annotations


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
