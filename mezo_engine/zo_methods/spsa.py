"""The SPSA estimator: two forwards per direction (at theta + eps z and theta - eps z), n directions per step
(n-SPSA: ``--zo_num_samples``, ``--zo_sample_scheduler``), as upstream MeZO's ``--zero_order_sample``. Every ZO
method estimates with it today; another estimator (one-sided, several queries, a curvature estimate) is a class
with the same two methods (``base.Estimator``)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from mezo_engine import zo

SAMPLE_SCHEDULERS = ("constant", "linear")
PAIR_BATCHED_METHODS = ("sgd", "momentum", "adam")  # the methods whose step is this estimator's (and Gaussian z)
PAIR_BATCHED_MODES = ("lora", "xgblora")  # LoRA factors are what batched_queries can vary per copy


@dataclass
class SpsaFlags:
    zo_num_samples: int = field(default=1, metadata={
        "help": "n-SPSA: directions per step, their projected gradients averaged (1/n), as upstream "
                "--zero_order_sample (default 1); with --zo_sample_scheduler linear the number reached at the end."})
    zo_sample_scheduler: Literal["constant", "linear"] = field(default="constant", metadata={
        "help": "Directions per step: constant = --zo_num_samples; linear = max(1, int(step / max_steps * n)) "
                "for the 0-based step, as upstream --zero_order_sample_scheduler (whose default, none, is 1)."})
    zo_pair_batched: bool = field(default=False, metadata={
        "help": "Run each direction's +eps and -eps forwards as one forward of 2B rows, the adapters differing per "
                "row block (mezo_engine/batched_queries.py): the same estimate within float rounding, one pass "
                "over the frozen weights instead of two. LoRA / XGBLoRA with --zo_optimizer sgd, momentum or adam; "
                "whether it pays is measured in docs/benchmarks.md."})


def problems(args, flag: Callable[[str], str]):
    """Yield one message per bad n-SPSA flag value; ``flag(name)``: ``--name value`` as the user wrote it."""
    if args.zo_num_samples < 1:
        yield f"{flag('zo_num_samples')}: must be >= 1"


def zo_problems(args, flag: Callable[[str], str]):
    """The checks that apply when ``--trainer zo`` runs."""
    if args.zo_sample_scheduler == "linear" and args.zo_num_samples == 1:
        yield (f"{flag('zo_sample_scheduler')} with --zo_num_samples 1: every step would take one "
               f"direction; give --zo_num_samples > 1, the number reached at the end of the run")
    if args.zo_pair_batched and args.zo_optimizer not in PAIR_BATCHED_METHODS:
        yield (f"--zo_pair_batched with --zo_optimizer {args.zo_optimizer}: only {', '.join(PAIR_BATCHED_METHODS)} "
               f"take their steps with the two-point estimator it batches")
    if args.zo_pair_batched and args.mode not in PAIR_BATCHED_MODES:
        yield (f"--zo_pair_batched with {args.mode} training: only LoRA factors can differ between the rows of one "
               f"forward; use --lora or --xgblora")
    if args.zo_pair_batched and args.zo_perturb != "in_place":
        yield "--zo_pair_batched with --zo_perturb out_of_place: choose one"


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


class TwoPointEstimator:
    """``zo.estimate``: per seed the losses at +eps z and -eps z, g = (L+ - L-) / (2 eps). ``pair_batched``: both
    losses of a seed from one forward of two copies of the batch, where the step's forwards can batch adapter
    values (``StepLosses.batched``); the parameters are then never written (z is drawn once per seed)."""

    def __init__(self, pair_batched: bool = False):
        self.pair_batched = pair_batched

    def batches(self, loss_fn) -> bool:
        """Whether a step with these forwards runs its pairs batched."""
        return self.pair_batched and getattr(loss_fn, "batched", None) is not None

    def forwards(self, num_directions: int) -> int:
        """Forward passes of a step with ``num_directions`` directions."""
        return 2 * num_directions

    def estimate(self, params: Sequence[torch.Tensor], loss_fn: Callable[[], float], seeds: Sequence[int],
                 eps: float, cache: bool, sampler: zo.DirectionSampler) -> tuple[float, list[tuple[int, float]]]:
        """The (seed, projected gradient) pairs and the mean loss at +eps over the directions (one: that loss)."""
        if self.batches(loss_fn):
            return self._batched(params, loss_fn, seeds, eps, sampler)
        losses: list[float] = []

        def recorded() -> float:
            losses.append(loss_fn())
            return losses[-1]

        pairs = zo.estimate(params, recorded, seeds, eps, cache, sampler)
        at_plus = losses[0::2]  # zo.estimate calls loss_fn at +eps, then at -eps, seed after seed
        return sum(at_plus) / len(at_plus), pairs


    @staticmethod
    def _batched(params, loss_fn, seeds: Sequence[int], eps: float,
                 sampler: zo.DirectionSampler) -> tuple[float, list[tuple[int, float]]]:
        local: list[float] = []
        for seed in seeds:
            z = zo.draw_z(params, seed, sampler)
            local += loss_fn.batched(params, [[t * eps for t in z], [t * -eps for t in z]])
        means = loss_fn.mean_over_ranks(local)  # under torchrun one all-reduce for the whole step
        pairs = [(int(seed), zo.projected_grad(means[2 * i], means[2 * i + 1], eps)) for i, seed in enumerate(seeds)]
        return sum(means[0::2]) / len(seeds), pairs


TWO_POINT = TwoPointEstimator()
PAIR_BATCHED = TwoPointEstimator(pair_batched=True)
