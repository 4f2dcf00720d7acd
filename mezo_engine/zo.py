"""The MeZO zeroth-order step as pure tensor functions (no transformers imports).

One step with perturbation scale ``eps`` and a fresh seed:

    theta + eps*z      -> loss_pos
    theta - eps*z      -> loss_neg
    g = (loss_pos - loss_neg) / (2*eps)            projected gradient (SPSA estimate along z)
    theta <- theta - lr * (g*z + wd*theta)         each parameter with its own (lr, wd) rates

``z ~ N(0, I)`` is drawn from a ``torch.Generator`` seeded with the step's seed, so it can be regenerated at will
without storing it and without touching the global RNG (dropout, sampling, data order stay undisturbed). For a
list of parameters, z is drawn parameter by parameter in list order from one generator per device: the same seed
and the same list always give the same z.

Two ways to use it:

* ``estimate``: the SPSA estimate alone, for one or several seeds (n-SPSA); returns ``(seed, projected_grad)``
  pairs and leaves the parameters as they were. ZO optimizers (``zo_methods``) regenerate z from the seeds and
  update with their own rule.
* ``fused_sgd_step`` / ``zo_step``: one whole ZO-SGD step in the fewest passes over the parameters, the default.

Both come in two variants, chosen by the caller:

* ``cache=False`` (full-parameter training): z is regenerated per parameter, three times per seed (+eps, -2eps,
  then the restore, fused with the update in ``fused_sgd_step``). No parameter-sized buffer is allocated besides
  the one z tensor of the parameter being visited. Restoring by arithmetic leaves a rounding drift of a few ulps.
* ``cache=True`` (small trainable sets: LoRA, XGBLoRA boosters): z is drawn once per seed and the original values
  are kept, so the parameters are restored bit-for-bit after the forwards in any dtype.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

Rates = Sequence[tuple[float, float]]  # (learning rate, weight decay) of each parameter


@dataclass(frozen=True)
class StepResult:
    """What one zo step produced: the loss at theta + eps*z, and the projected gradient."""

    loss: float
    projected_grad: float
    seed: int


def make_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``; the engine's only source of randomness."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def next_z(param: torch.Tensor, gens: dict) -> torch.Tensor:
    """The next z for ``param`` from the generator of its device, in the parameter's dtype."""
    return torch.randn(param.shape, generator=gens[param.device], device=param.device, dtype=param.dtype)


def generators(params: Sequence[torch.Tensor], seed: int) -> dict:
    """One fresh generator per device of ``params``, all seeded with ``seed``: feed them to ``next_z`` in order."""
    return {p.device: make_generator(p.device, seed) for p in params}


class DirectionSampler(Protocol):
    """Where z comes from: ``generators(params, seed)`` once per direction, then ``next_z(p, gens)`` for each
    parameter in list order; the same seed and list give the same z every time (nothing is stored). A new
    distribution (Rademacher, low-rank ``U V^T``, a masked one) is one class with these two methods."""

    def generators(self, params: Sequence[torch.Tensor], seed: int) -> dict: ...

    def next_z(self, param: torch.Tensor, gens: dict) -> torch.Tensor: ...


class GaussianSampler:
    """z ~ N(0, I), one generator per device (MeZO's directions; ``generators`` and ``next_z`` above)."""

    generators = staticmethod(generators)
    next_z = staticmethod(next_z)


GAUSSIAN = GaussianSampler()


class RademacherSampler:
    """z with independent entries -1 or +1, each with probability 1/2 (FZOO's directions): the Gaussian sampler's
    generators (one per device), a fair coin per entry instead of a normal draw. ``E[z z^T] = I``, as for the
    Gaussian, and ``|z_j| = 1`` exactly, so ``theta + eps z`` moves every entry by exactly ``eps``."""

    generators = staticmethod(generators)

    @staticmethod
    def next_z(param: torch.Tensor, gens: dict) -> torch.Tensor:
        """The next +-1 tensor for ``param``, in its dtype (exact in every floating dtype)."""
        coins = torch.randint(0, 2, param.shape, generator=gens[param.device], device=param.device,
                              dtype=param.dtype)
        return coins.mul_(2).sub_(1)


RADEMACHER = RademacherSampler()


def draw_z(params: Sequence[torch.Tensor], seed: int, sampler: DirectionSampler = GAUSSIAN) -> list[torch.Tensor]:
    """The perturbation direction for ``params`` under ``seed``: one tensor per parameter (standard normal)."""
    gens = sampler.generators(params, seed)
    return [sampler.next_z(p, gens) for p in params]


@torch.no_grad()
def perturb_(params: Sequence[torch.Tensor], seed: int, scale: float, sampler: DirectionSampler = GAUSSIAN) -> None:
    """In place: theta += scale * z(seed). z is regenerated, never stored."""
    gens = sampler.generators(params, seed)
    for p in params:
        p.add_(sampler.next_z(p, gens), alpha=scale)


def projected_grad(loss_pos: float, loss_neg: float, eps: float) -> float:
    """The SPSA estimate of the directional derivative along z."""
    return (float(loss_pos) - float(loss_neg)) / (2.0 * eps)


def rates_for(num: int, lr: float, weight_decay: float = 0.0, decay: Sequence[bool] | None = None) -> list:
    """Per-parameter (lr, wd): one learning rate, weight decay only where ``decay`` is True (default: all)."""
    decay = [True] * num if decay is None else list(decay)
    return [(lr, weight_decay if d else 0.0) for d in decay]


@torch.no_grad()
def sgd_update_(param: torch.Tensor, z: torch.Tensor, grad: float, lr: float, weight_decay: float) -> None:
    """In place: theta <- theta - lr * (grad * z + wd * theta), for one parameter."""
    if weight_decay:
        param.mul_(1.0 - lr * weight_decay)
    param.add_(z, alpha=-lr * grad)


@torch.no_grad()
def restore_and_update_(params: Sequence[torch.Tensor], seed: int, eps: float, grad: float, rates: Rates,
                        sampler: DirectionSampler = GAUSSIAN) -> None:
    """From theta - eps*z: restore to theta and apply the update, regenerating z once per parameter."""
    gens = sampler.generators(params, seed)
    for p, (lr, wd) in zip(params, rates):
        z = sampler.next_z(p, gens)
        p.add_(z, alpha=eps)
        sgd_update_(p, z, grad, lr, wd)


@torch.no_grad()
def _two_sided(params, original, z, eps: float, loss_fn: Callable[[], float]) -> tuple[float, float]:
    """The losses at original + eps*z and original - eps*z, each set from the kept originals (exact)."""
    losses = []
    for scale in (eps, -eps):
        for p, p0, zi in zip(params, original, z):
            p.copy_(p0).add_(zi, alpha=scale)
        losses.append(loss_fn())
    return losses[0], losses[1]


def estimate(params: Sequence[torch.Tensor], loss_fn: Callable[[], float], seeds: Sequence[int], eps: float,
             cache: bool = False, sampler: DirectionSampler = GAUSSIAN) -> list[tuple[int, float]]:
    """The SPSA estimate along z(seed) for each seed: ``[(seed, projected_grad), ...]``; ``params`` end as they began
    (bit for bit with ``cache``, within a few ulps per seed without). ``loss_fn`` runs a forward pass and returns
    the loss; it is called twice per seed, at +eps then at -eps, seed after seed."""
    if cache:
        return _estimate_cached(params, loss_fn, seeds, eps, sampler)
    out = []
    for seed in seeds:
        perturb_(params, seed, eps, sampler)
        loss_pos = loss_fn()
        perturb_(params, seed, -2.0 * eps, sampler)
        loss_neg = loss_fn()
        perturb_(params, seed, eps, sampler)
        out.append((int(seed), projected_grad(loss_pos, loss_neg, eps)))
    return out


@torch.no_grad()
def _estimate_cached(params, loss_fn, seeds, eps, sampler: DirectionSampler) -> list[tuple[int, float]]:
    original = [p.detach().clone() for p in params]
    out = []
    for seed in seeds:
        loss_pos, loss_neg = _two_sided(params, original, draw_z(params, seed, sampler), eps, loss_fn)
        out.append((int(seed), projected_grad(loss_pos, loss_neg, eps)))
    for p, p0 in zip(params, original):
        p.copy_(p0)
    return out


@torch.no_grad()
def losses_at(params: Sequence[torch.Tensor], loss_fn: Callable[[], float], seeds: Sequence[int], scale: float,
              cache: bool = False, sampler: DirectionSampler = GAUSSIAN) -> list[float]:
    """The loss at ``theta + scale * z(seed)`` for each seed, one forward each in turn (one-sided queries). The
    parameters end as they began: bit for bit with ``cache`` (z drawn once per seed, the originals kept), within
    a few ulps per seed without (z regenerated to step back)."""
    if not cache:
        out = []
        for seed in seeds:
            perturb_(params, seed, scale, sampler)
            out.append(loss_fn())
            perturb_(params, seed, -scale, sampler)
        return out
    original, out = [p.detach().clone() for p in params], []
    for seed in seeds:
        for p, p0, zi in zip(params, original, draw_z(params, seed, sampler)):
            p.copy_(p0).add_(zi, alpha=scale)
        out.append(loss_fn())
    for p, p0 in zip(params, original):
        p.copy_(p0)
    return out


def fused_sgd_step(params: Sequence[torch.Tensor], loss_fn: Callable[[], float], seed: int, eps: float,
                   rates: Rates, cache: bool = False, sampler: DirectionSampler = GAUSSIAN) -> StepResult:
    """One whole ZO-SGD step on ``params`` (in place) with per-parameter ``rates``: the estimate and the update in
    the fewest passes (z drawn three times without ``cache``, once with it)."""
    if cache:
        return _fused_cached(params, loss_fn, seed, eps, rates, sampler)
    perturb_(params, seed, eps, sampler)
    loss_pos = loss_fn()
    perturb_(params, seed, -2.0 * eps, sampler)
    loss_neg = loss_fn()
    grad = projected_grad(loss_pos, loss_neg, eps)
    restore_and_update_(params, seed, eps, grad, rates, sampler)
    return StepResult(float(loss_pos), grad, seed)


@torch.no_grad()
def _fused_cached(params, loss_fn, seed, eps, rates, sampler: DirectionSampler) -> StepResult:
    """The same step with z drawn once and the original values kept: an exact restore in any dtype."""
    z = draw_z(params, seed, sampler)
    original = [p.detach().clone() for p in params]
    loss_pos, loss_neg = _two_sided(params, original, z, eps, loss_fn)
    for p, p0 in zip(params, original):
        p.copy_(p0)
    grad = projected_grad(loss_pos, loss_neg, eps)
    for p, zi, (lr, wd) in zip(params, z, rates):
        sgd_update_(p, zi, grad, lr, wd)
    return StepResult(float(loss_pos), grad, seed)


def zo_step(params: Sequence[torch.Tensor], loss_fn: Callable[[], float], seed: int, eps: float, lr: float,
            weight_decay: float = 0.0, decay: Sequence[bool] | None = None, cache: bool = False) -> StepResult:
    """One full MeZO step on ``params`` (modified in place) with one LR, weight decay only where ``decay`` is True.
    ``loss_fn`` runs a forward pass and returns the loss."""
    return fused_sgd_step(params, loss_fn, seed, eps, rates_for(len(params), lr, weight_decay, decay), cache)


def step_seed(run_seed: int, step: int) -> int:
    """The seed of step ``step``: a fixed function of the run seed, identical on every rank."""
    return (int(run_seed) * 1_000_003 + int(step) * 7_919 + 1) % (2**63 - 1)


def sample_seeds(run_seed: int, step: int, num: int) -> list[int]:
    """The seeds of the ``num`` directions of step ``step`` (n-SPSA): the first is ``step_seed``, so one sample is
    the one-seed step; the others are spread far from every step's first seed. The same on every rank."""
    return spread_seeds(step_seed(run_seed, step), num)


def spread_seeds(base: int, num: int) -> list[int]:
    """``num`` seeds from ``base``: ``base`` itself first, then steps of 2^64 / golden ratio (mod 2^63 - 1), far
    from every step's first seed. A method that draws several directions from its step's one seed uses these."""
    return [(int(base) + i * 0x9E37_79B9_7F4A_7C15) % (2**63 - 1) for i in range(num)]
