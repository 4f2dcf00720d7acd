"""FZOO (``--zo_optimizer fzoo``; Dang et al., "FZOO: Fast Zeroth-Order Optimizer for Fine-Tuning Large Language
Models towards Adam-Scale Speed", arXiv 2506.09034, ICLR 2026): N one-sided Rademacher queries around one base
loss, the step normalised by the standard deviation of the query losses. N + 1 forwards a step; no state.

Per step, on one batch, with u_1..u_N in {-1, +1}^d drawn from the step's seeds:

    l_0 = L(theta),  l_i = L(theta + eps u_i),  d_i = (l_i - l_0) / eps          (one-sided differences)
    sigma = std(d_1..d_N)   (sample standard deviation, N - 1; = std(l_1..l_N) / eps)
    theta <- theta - lr * (1/N) sum_i (d_i / sigma) u_i   (- lr * wd * theta first, as ZO-SGD)

``(1/N) sum_i d_i u_i`` is the usual one-sided estimate of the gradient; dividing by sigma (about ``|grad|`` for
Rademacher u) makes the step a normalised-SGD step whose size is ``lr`` whatever the scale of the loss or of eps
(the 1/eps of the estimate and the eps in sigma cancel). A step whose N query losses are all equal (sigma = 0)
moves nothing. With LoRA or XGBLoRA adapters the N + 1 losses come from one forward of N + 1 copies of the batch
(``batched_queries``, ``--fzoo_batched``); otherwise one forward after another.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from mezo_engine import zo
from mezo_engine.batched_queries import StepLosses
from mezo_engine.zo_methods.sgd import ZOSGD

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
# FZOO's fzoo.sh defaults (LR 1e-5, EPS 1e-3) are the mode's own for the mezo driver: nothing to override.
DRIVER = {}


@dataclass
class FzooFlags:
    fzoo_num_queries: int = field(default=8, metadata={
        "help": "FZOO: N one-sided Rademacher queries per step around one base loss (N + 1 forwards); the "
                "paper's N = 8 (its fzoo.sh FORWARD_N). At least 2: the step divides by their standard deviation."})
    fzoo_batched: bool = field(default=True, metadata={
        "help": "FZOO with --lora or --xgblora: the base loss and the N queries as one forward of (N + 1) x batch "
                "rows, each copy with its own adapter values (peak activation memory grows N + 1 times); False: "
                "N + 1 forwards in turn. Other modes always query in turn."})


def one_sided(base: float, losses: Sequence[float], eps: float) -> list[float]:
    """The one-sided differences ``(l_i - l_0) / eps``: each the derivative along u_i, to O(eps)."""
    return [(float(loss) - float(base)) / eps for loss in losses]


def normalised(differences: Sequence[float]) -> list[float]:
    """``d_i / std(d)`` with the sample standard deviation (N - 1); all 0 when the d_i are all equal."""
    n = len(differences)
    if n < 2:
        raise ValueError(f"FZOO normalises by the standard deviation of its queries: needs 2 or more, got {n}")
    mean = sum(differences) / n
    sigma = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    return [d / sigma if sigma else 0.0 for d in differences]


class FZOO(ZOSGD):
    """FZOO's step (see the module docstring): Rademacher directions (``zo.RADEMACHER``), N one-sided queries,
    the pairs ``(seed_i, d_i / sigma)`` queued for ZO-SGD's update (``step()`` averages them over N). The query
    seeds are ``zo.spread_seeds`` of the step's seed, so every rank and a resumed run draw the same u_i."""

    name = "fzoo"
    flags = FzooFlags
    sampler = zo.RADEMACHER
    out_of_place = False

    def __init__(self, params: Iterable, lr: float = 1e-3, weight_decay: float = 0.0, num_queries: int = 8,
                 batched: bool = True):
        if num_queries < 2:
            raise ValueError(f"num_queries {num_queries}: FZOO needs 2 or more queries per step")
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        self.num_queries, self.batched = num_queries, batched

    @classmethod
    def from_args(cls, args, groups):
        return cls(groups, lr=args.learning_rate, num_queries=args.fzoo_num_queries, batched=args.fzoo_batched)

    @classmethod
    def problems(cls, args):
        if args.fzoo_num_queries < 2:
            yield f"--fzoo_num_queries {args.fzoo_num_queries}: must be >= 2 (the step divides by their std)"
        if args.trainer == "zo" and args.zo_optimizer == cls.name and args.zo_num_samples != 1:
            yield (f"--zo_num_samples {args.zo_num_samples} with --zo_optimizer fzoo: FZOO draws "
                   f"--fzoo_num_queries directions per step itself; leave --zo_num_samples at 1")

    def forwards_per_step(self, num_directions: int) -> int:
        """The base loss and N queries, whatever the step's seed count (one seed; the queries spread from it)."""
        return self.num_queries + 1

    def zo_step(self, loss_fn, seeds, eps, cache):
        """Query, normalise, queue the pairs for ``step()``; returns the base loss l_0 and the pairs."""
        losses, params = StepLosses.of(loss_fn), self.zo_params()
        query_seeds = zo.spread_seeds(seeds[0], self.num_queries)
        local = self._local_losses(losses, params, query_seeds, eps, cache)
        base, *at_queries = losses.mean_over_ranks(local)  # one all-reduce of N + 2 numbers under torchrun
        pairs = list(zip(query_seeds, normalised(one_sided(base, at_queries, eps))))
        self.add_estimate(pairs)
        return base, pairs

    def _local_losses(self, losses: StepLosses, params, seeds: Sequence[int], eps: float, cache: bool) -> list[float]:
        """This rank's [l_0, l_1, ..., l_N]: one batched forward (adapters), or N + 1 forwards in turn."""
        if self.batched and losses.batched is not None:
            moves = [[torch.zeros_like(p) for p in params]]
            moves += [[z.mul_(eps) for z in zo.draw_z(params, seed, self.sampler)] for seed in seeds]
            return losses.batched(params, moves)
        return [losses.local(), *zo.losses_at(params, losses.local, seeds, eps, cache, self.sampler)]


OPTIMIZER = FZOO
