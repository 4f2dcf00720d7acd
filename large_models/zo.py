"""The MeZO zeroth-order step as pure tensor functions (no transformers imports).

One step with perturbation scale ``eps`` and a fresh seed:

    theta + eps*z      -> loss_pos
    theta - eps*z      -> loss_neg
    g = (loss_pos - loss_neg) / (2*eps)            projected gradient (SPSA estimate along z)
    theta <- theta - lr * (g*z + wd*theta)         weight decay only where ``decay`` is True

``z ~ N(0, I)`` is drawn from a ``torch.Generator`` seeded with the step's seed, so it can be regenerated at will
without storing it and without touching the global RNG (dropout, sampling, data order stay undisturbed).

Two ways to run a step, chosen by the caller:

* ``zo_step`` with ``cache=False`` (full-parameter training): z is regenerated per parameter, three times per step
  (+eps, -2eps, then restore and update fused in one pass). No parameter-sized buffer is ever allocated besides the
  one z tensor of the parameter being visited. Restoring by arithmetic leaves a rounding drift of a few ulps.
* ``zo_step`` with ``cache=True`` (small trainable sets: LoRA, XGBLoRA boosters): z is drawn once per step and the
  original values are kept, so the parameters are restored bit-for-bit after the two forwards in any dtype.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


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


def _draw(param: torch.Tensor, gens: dict) -> torch.Tensor:
    """The next z for ``param`` from the generator of its device, in the parameter's dtype."""
    return torch.randn(param.shape, generator=gens[param.device], device=param.device, dtype=param.dtype)


def _generators(params: Sequence[torch.Tensor], seed: int) -> dict:
    return {p.device: make_generator(p.device, seed) for p in params}


def draw_z(params: Sequence[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """The perturbation direction for ``params`` under ``seed``: one standard-normal tensor per parameter."""
    gens = _generators(params, seed)
    return [_draw(p, gens) for p in params]


@torch.no_grad()
def perturb_(params: Sequence[torch.Tensor], seed: int, scale: float) -> None:
    """In place: theta += scale * z(seed). z is regenerated, never stored."""
    gens = _generators(params, seed)
    for p in params:
        p.add_(_draw(p, gens), alpha=scale)


def projected_grad(loss_pos: float, loss_neg: float, eps: float) -> float:
    """The SPSA estimate of the directional derivative along z."""
    return (float(loss_pos) - float(loss_neg)) / (2.0 * eps)


@torch.no_grad()
def update_(params: Sequence[torch.Tensor], z: Sequence[torch.Tensor], grad: float, lr: float,
            weight_decay: float, decay: Sequence[bool]) -> None:
    """In place: theta <- theta - lr * (grad * z + wd * theta), weight decay only where ``decay`` is True."""
    for p, zi, d in zip(params, z, decay):
        if d and weight_decay:
            p.mul_(1.0 - lr * weight_decay)
        p.add_(zi, alpha=-lr * grad)


@torch.no_grad()
def restore_and_update_(params: Sequence[torch.Tensor], seed: int, eps: float, grad: float, lr: float,
                        weight_decay: float, decay: Sequence[bool]) -> None:
    """From theta - eps*z: restore to theta and apply the update, regenerating z once per parameter."""
    gens = _generators(params, seed)
    for p, d in zip(params, decay):
        z = _draw(p, gens)
        p.add_(z, alpha=eps)
        if d and weight_decay:
            p.mul_(1.0 - lr * weight_decay)
        p.add_(z, alpha=-lr * grad)


def zo_step(params: Sequence[torch.Tensor], loss_fn: Callable[[], float], seed: int, eps: float, lr: float,
            weight_decay: float = 0.0, decay: Sequence[bool] | None = None, cache: bool = False) -> StepResult:
    """One full MeZO step on ``params`` (modified in place). ``loss_fn`` runs a forward pass and returns the loss."""
    decay = [True] * len(params) if decay is None else list(decay)
    if cache:
        return _zo_step_cached(params, loss_fn, seed, eps, lr, weight_decay, decay)
    perturb_(params, seed, eps)
    loss_pos = loss_fn()
    perturb_(params, seed, -2.0 * eps)
    loss_neg = loss_fn()
    grad = projected_grad(loss_pos, loss_neg, eps)
    restore_and_update_(params, seed, eps, grad, lr, weight_decay, decay)
    return StepResult(float(loss_pos), grad, seed)


@torch.no_grad()
def _zo_step_cached(params, loss_fn, seed, eps, lr, weight_decay, decay) -> StepResult:
    """The same step with z drawn once and the original values kept: an exact restore in any dtype."""
    z = draw_z(params, seed)
    original = [p.detach().clone() for p in params]
    for p, zi in zip(params, z):
        p.add_(zi, alpha=eps)
    loss_pos = loss_fn()
    for p, p0, zi in zip(params, original, z):
        p.copy_(p0).add_(zi, alpha=-eps)
    loss_neg = loss_fn()
    for p, p0 in zip(params, original):
        p.copy_(p0)
    grad = projected_grad(loss_pos, loss_neg, eps)
    update_(params, z, grad, lr, weight_decay, decay)
    return StepResult(float(loss_pos), grad, seed)


def step_seed(run_seed: int, step: int) -> int:
    """The seed of step ``step``: a fixed function of the run seed, identical on every rank."""
    return (int(run_seed) * 1_000_003 + int(step) * 7_919 + 1) % (2**63 - 1)
