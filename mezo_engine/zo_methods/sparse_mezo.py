"""Sparse MeZO (``--zo_optimizer sparse_mezo``; Liu et al. 2024, "Sparse MeZO: Less Parameters for Better
Performance in Zeroth-Order LLM Fine-Tuning"): MeZO that perturbs and updates only the small-magnitude weights of
each tensor. Full-parameter or head training only (see ``problems``)."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from mezo_engine import zo
from mezo_engine.zo_methods.base import NON_NEGATIVE, ZOOptimizer, check_ranges

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
DRIVER = {}

PRETRAINED_MODES = ("ft", "head", "lp-ft", "lp-head")  # the modes whose trainable weights are pretrained ones


@dataclass
class SparseMezoFlags:
    sparse_mezo_sparsity: float = field(default=0.75, metadata={
        "help": "Sparse MeZO: the fraction of each weight tensor left out, its largest magnitudes; the smallest "
                "ceil((1 - s) n) entries of the pretrained tensor set its threshold h, and a step perturbs and "
                "updates the entries with |w| <= h (0: every entry, MeZO itself). Default 0.75, within the "
                "paper's sparsity ablation (docs/zo-methods.md)."})


def magnitude_threshold(param: torch.Tensor, sparsity: float) -> torch.Tensor:
    """h: the ceil((1 - sparsity) * n)-th smallest |entry| of ``param`` (a 0-d tensor, float32 or wider; one of
    the magnitudes, so exact in the parameter's dtype too), so that |w| <= h keeps that many entries (more only
    on ties); sparsity 0: inf, every entry now and later (the largest entry as h would leave out the weights
    that later grow past it)."""
    dtype = torch.promote_types(param.dtype, torch.float32)
    if sparsity == 0:
        return torch.tensor(math.inf, dtype=dtype, device=param.device)
    magnitudes = param.detach().abs().flatten().to(dtype)
    k = max(1, math.ceil((1.0 - sparsity) * magnitudes.numel()))
    return torch.kthvalue(magnitudes, k).values


class Masked:
    """The direction sampler of one Sparse MeZO step: m * z with each parameter's mask m fixed for the step (a
    ``zo.DirectionSampler``; the same z stream as MeZO's Gaussian one, zeroed outside the mask)."""

    generators = staticmethod(zo.generators)

    def __init__(self, params: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]):
        self.masks = {id(p): m for p, m in zip(params, masks)}

    def next_z(self, param: torch.Tensor, gens: dict) -> torch.Tensor:
        return zo.next_z(param, gens).mul_(self.masks[id(param)])


class SparseMeZO(ZOOptimizer):
    """Sparse MeZO: ZO-SGD along m * z, m = (|theta| <= h) per entry, h per tensor from the pretrained weights:

        m = |theta_t| <= h;   g_i = (L(theta + eps m z_i) - L(theta - eps m z_i)) / (2 eps)   (n-SPSA: i = 1..n)
        theta <- theta - lr * ((1/n) sum_i g_i m z_i + wd * m theta)

    The mask is computed from the weights at the start of each step (before any perturbation moves a weight across
    h) and kept, as one bool per entry, for that step only: the same mask serves +eps, -eps, the restore and the
    update, so an entry outside it is never written. ``state[p]["threshold"]``: h, set at the first step from the
    weights then (the pretrained ones), so a resumed run keeps it. The update runs in ``zo_step``; the Trainer's
    ``optimizer.step()`` finds nothing pending.
    """

    name = "sparse_mezo"
    flags = SparseMezoFlags

    def __init__(self, params: Iterable, lr: float = 1e-3, sparsity: float = 0.75, weight_decay: float = 0.0):
        check_ranges(lr=(lr, *NON_NEGATIVE), sparsity=(sparsity, 0.0, 1.0, True),
                     weight_decay=(weight_decay, *NON_NEGATIVE))
        super().__init__(params, {"lr": lr, "sparsity": sparsity, "weight_decay": weight_decay})

    @classmethod
    def from_args(cls, args, groups):
        return cls(groups, lr=args.learning_rate, sparsity=args.sparse_mezo_sparsity)

    @classmethod
    def problems(cls, args):
        if not 0 <= args.sparse_mezo_sparsity < 1:
            yield f"--sparse_mezo_sparsity {args.sparse_mezo_sparsity}: must be in [0, 1)"
        if args.trainer == "zo" and args.zo_optimizer == cls.name and args.mode not in PRETRAINED_MODES:
            yield (f"--zo_optimizer sparse_mezo with {args.mode} training: full-parameter or head training only "
                   f"(its mask ranks pretrained weights by magnitude; adapter and prefix parameters start from an "
                   f"initialisation, LoRA's B at 0, so the ranking says nothing, and B's threshold of 0 would "
                   f"freeze each of its entries after its first move)")

    def add_estimate(self, pairs) -> None:
        raise TypeError("sparse_mezo updates inside zo_step (its mask holds for one step only); call zo_step")

    def zo_step(self, loss_fn: Callable[[], float], seeds: Sequence[int], eps: float,
                cache: bool) -> tuple[float, list[tuple[int, float]]]:
        """The masks from the unperturbed weights, the estimate along m * z(seed) per seed, the update."""
        params = self.zo_params()
        sampler = Masked(params, [self._mask(p) for p in params])
        loss, pairs = self.estimator.estimate(params, loss_fn, seeds, eps, cache, sampler)
        self._update(params, pairs, sampler)
        return loss, pairs

    def _mask(self, p: torch.Tensor) -> torch.Tensor:
        """m = |p| <= h for the parameter as it is now; h computed once, at its first step."""
        state = self.state[p]
        if "threshold" not in state:
            state["threshold"] = magnitude_threshold(p, self._group(p)["sparsity"])
        return p.detach().abs() <= state["threshold"]

    def _group(self, p: torch.Tensor) -> dict:
        return next(group for group in self.param_groups if any(q is p for q in group["params"]))

    @torch.no_grad()
    def _update(self, params: Sequence[torch.Tensor], pairs: Sequence[tuple[int, float]], sampler: Masked) -> None:
        """theta <- theta - lr * (mean_i g_i m z_i + wd * m theta): entries outside m get +-0, bits unchanged."""
        n = len(pairs)
        streams = [(sampler.generators(params, seed), grad / n) for seed, grad in pairs]
        for group, p in self._active():
            lr, wd = group["lr"], group["weight_decay"]
            if wd:  # a factor of exactly 1 outside the mask
                p.mul_(sampler.masks[id(p)].to(p.dtype).mul_(-lr * wd).add_(1.0))
            for gens, coeff in streams:
                p.add_(sampler.next_z(p, gens), alpha=-lr * coeff)


OPTIMIZER = SparseMeZO
