"""ZO-SGD, MeZO's update (``--zo_optimizer sgd``, the default): theta <- theta - lr * (g_hat + wd * theta); no
state. One direction per step takes the fused step (estimate and update in the fewest passes), in place or with
``--zo_perturb out_of_place`` (``zo_out_of_place``); several directions take the estimate, then ``step()``."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from mezo_engine import zo, zo_out_of_place
from mezo_engine.zo_methods.base import NON_NEGATIVE, ZOOptimizer, check_ranges

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
DRIVER = {}


class ZOSGD(ZOOptimizer):
    """MeZO's update: theta <- theta - lr * (g_hat + wd * theta); no state.

    ``fused_step`` runs a whole one-seed step in the fewest passes (``zo.fused_sgd_step``) and leaves nothing
    pending; estimate + ``add_estimate`` + ``step`` give the same parameters bit for bit, and also take n seeds.
    """

    name = "sgd"
    out_of_place = True

    def __init__(self, params: Iterable, lr: float = 1e-3, weight_decay: float = 0.0):
        check_ranges(lr=(lr, *NON_NEGATIVE), weight_decay=(weight_decay, *NON_NEGATIVE))
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    def zo_step(self, loss_fn, seeds, eps, cache):
        """One direction: the fused step (the Trainer's ``optimizer.step()`` then finds nothing to do); several,
        or the +eps/-eps pair batched into one forward, the estimator's pairs for ``step()``."""
        if len(seeds) != 1 or self.estimator.batches(loss_fn):
            return super().zo_step(loss_fn, seeds, eps, cache)
        result = self.fused_step(loss_fn, seeds[0], eps, cache)
        return result.loss, [(result.seed, result.projected_grad)]

    def fused_step(self, loss_fn: Callable[[], float], seed: int, eps: float, cache: bool = False) -> zo.StepResult:
        """Estimate along z(seed) and update at once; the parameters' rates come from their groups."""
        if self._pending:
            raise RuntimeError("fused_step with estimates pending: call step() first, or do not add_estimate")
        return zo.fused_sgd_step(self.zo_params(), loss_fn, seed, eps, self.rates(), cache, self.sampler)

    def out_of_place_step(self, model: torch.nn.Module, loss_fn: Callable[[], float], seeds: Sequence[int],
                          eps: float) -> tuple[float, list[tuple[int, float]]]:
        """``--zo_perturb out_of_place``: the one-seed step with the weights written only in the update."""
        if len(seeds) != 1:
            raise ValueError(f"--zo_perturb out_of_place: one direction per step only (got {len(seeds)})")
        result = zo_out_of_place.fused_sgd_step(model, self.zo_params(), loss_fn, seeds[0], eps, self.rates())
        return result.loss, [(result.seed, result.projected_grad)]

    def rates(self) -> list[tuple[float, float]]:
        """(lr, weight decay) of each parameter of ``zo_params()``, from its group."""
        return [(group["lr"], group["weight_decay"]) for group, _ in self._active()]

    def _apply(self, active, streams) -> None:
        for group, p in active:
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                p.mul_(1.0 - lr * wd)
            for gens, coeff in streams:
                p.add_(self._z(p, gens), alpha=-lr * coeff)


OPTIMIZER = ZOSGD
