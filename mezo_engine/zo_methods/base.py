"""What every ZO method shares: ``ZOOptimizer``, a ``torch.optim.Optimizer`` whose gradient is a list of seeds, and
the seams a new method fills (no transformers).

A ZO method is three parts, each replaceable on its own:

* the direction sampler (``zo.DirectionSampler``; ``sampler``): where z comes from, regenerated from a seed;
* the estimator (``Estimator``; ``estimator``): which forwards a step runs and the (seed, projected gradient)
  pairs it returns; two-point n-SPSA (``spsa.TWO_POINT``) today;
* the update rule (``_apply``): how the pending pairs move the parameters, and the state it keeps in ``state``
  (so ``state_dict()`` / ``load_state_dict()`` carry it through the Trainer's checkpoint).

The estimate plays the role of ``.grad``: ``zo_step`` (or a caller of the estimator) hands its pairs to
``add_estimate``; ``step()`` then consumes them (none pending: it does nothing), as after a backward. The gradient
estimate of n pairs is their mean,

    g_hat = (1/n) * sum_i projected_grad_i * z(seed_i)            (n-SPSA, scaled by 1/n as upstream MeZO)

and it is never stored: each parameter regenerates its share of every z(seed_i) in turn, in the order of
``zo_params()`` (groups in order, parameters in order, only those that require grad), the list the estimate
perturbed. Learning rate and weight decay come from ``param_groups`` (so an LR scheduler drives them).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import torch

from mezo_engine import zo
from mezo_engine.zo_methods.spsa import TWO_POINT


class Estimator(Protocol):
    """Runs the forwards of one step and returns the mean loss of its first queries and the (seed, g) pairs."""

    def forwards(self, num_directions: int) -> int: ...

    def estimate(self, params: Sequence[torch.Tensor], loss_fn: Callable[[], float], seeds: Sequence[int],
                 eps: float, cache: bool, sampler: zo.DirectionSampler) -> tuple[float, list[tuple[int, float]]]: ...


def check_ranges(**values: tuple[float, float, float, bool]) -> None:
    """Raise a ValueError naming each hyperparameter outside its range: name=(value, low, high, high is open)."""
    for name, (value, low, high, open_high) in values.items():
        if not (low <= value and (value < high if open_high else value <= high)):
            bound = f"[{low}, {high})" if open_high else f"[{low}, {high}]"
            raise ValueError(f"{name} {value}: must be in {bound}")


NON_NEGATIVE = (0.0, math.inf, True)  # check_ranges' bound of a learning rate or weight decay


class ZOOptimizer(torch.optim.Optimizer):
    """What the ZO optimizers share: pending estimates, the parameter order z follows, the step, and what the
    registry asks a method: its name, flags, checks and how to build it from the arguments."""

    name = ""
    flags: type | None = None  # the method's flag dataclass, inherited by EngineArguments
    sampler: zo.DirectionSampler = zo.GAUSSIAN
    estimator: Estimator = TWO_POINT
    out_of_place = False  # takes --zo_perturb out_of_place (the one-direction SGD step)

    def __init__(self, params: Iterable, defaults: dict):
        super().__init__(params, defaults)
        self._pending: list[tuple[int, float]] = []

    @classmethod
    def from_args(cls, args, groups: list[dict]) -> ZOOptimizer:
        """The optimizer of a run over ``groups`` (``--learning_rate`` and the method's own flags)."""
        return cls(groups, lr=args.learning_rate)

    @classmethod
    def problems(cls, args) -> Iterator[str]:
        """Yield one message per bad value of the method's flags (called for every method; none here)."""
        return iter(())

    def forwards_per_step(self, num_directions: int) -> int:
        """Forward passes a step with ``num_directions`` directions costs."""
        return self.estimator.forwards(num_directions)

    def zo_params(self) -> list[torch.Tensor]:
        """The parameters a ZO step perturbs now, in the order z is drawn: hand this list to ``zo.estimate``."""
        return [p for _, p in self._active()]

    def _load_keeping_dtype(self, state_dict: dict, keys: Sequence[str]) -> None:
        """``load_state_dict``, with the state under ``keys`` in the dtype it was saved in: torch casts floating
        state to its parameter's dtype, which would round a float32 state of a bf16 parameter to bf16."""
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            for key in keys:
                if key in saved:
                    self.state[params[index]][key] = saved[key].to(params[index].device, copy=True)

    def _active(self) -> list[tuple[dict, torch.Tensor]]:
        return [(group, p) for group in self.param_groups for p in group["params"] if p.requires_grad]

    def zo_step(self, loss_fn: Callable[[], float], seeds: Sequence[int], eps: float,
                cache: bool) -> tuple[float, list[tuple[int, float]]]:
        """Estimate along the ``seeds``' directions and queue the pairs for ``step()``; the loss and the pairs."""
        loss, pairs = self.estimator.estimate(self.zo_params(), loss_fn, seeds, eps, cache, self.sampler)
        self.add_estimate(pairs)
        return loss, pairs

    def add_estimate(self, pairs: Iterable[tuple[int, float]]) -> None:
        """Queue the ``(seed, projected_grad)`` pairs of an estimate over ``zo_params()`` for the next ``step``."""
        self._pending.extend((int(seed), float(grad)) for seed, grad in pairs)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Update with the mean of the pending estimates, and forget them; nothing pending: no change."""
        loss = closure() if closure is not None else None
        pairs, self._pending = self._pending, []
        if pairs:
            active = self._active()
            self._apply(active, self._streams([p for _, p in active], pairs))
        return loss

    def _streams(self, params: Sequence[torch.Tensor], pairs: Sequence[tuple[int, float]]) -> list[tuple[dict, float]]:
        """Per pending pair: fresh generators for its seed and its share projected_grad / n of the mean."""
        n = len(pairs)
        return [(self.sampler.generators(params, seed), grad / n) for seed, grad in pairs]

    def _z(self, p: torch.Tensor, gens: dict) -> torch.Tensor:
        return self.sampler.next_z(p, gens)

    def _dense_grad(self, p: torch.Tensor, streams: list[tuple[dict, float]]) -> torch.Tensor:
        """This parameter's part of the gradient estimate, sum_i c_i * z_i, in one new tensor."""
        (gens, coeff), *rest = streams
        grad = self._z(p, gens).mul_(coeff)
        for gens, coeff in rest:
            grad.add_(self._z(p, gens), alpha=coeff)
        return grad

    def _apply(self, active: list[tuple[dict, torch.Tensor]], streams: list[tuple[dict, float]]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define its update rule (_apply)")

