"""Zeroth-order optimizers: ``torch.optim.Optimizer`` subclasses whose gradient is a list of seeds (no transformers).

The SPSA estimate (``zo.estimate``) plays the role of ``.grad``: the caller hands its ``(seed, projected_grad)``
pairs to ``add_estimate`` and then calls ``step()``, just as backprop fills ``.grad`` before ``step()``; ``step()``
consumes the pending pairs (none pending: it does nothing). The gradient estimate of n pairs is their mean,

    g_hat = (1/n) * sum_i projected_grad_i * z(seed_i)            (n-SPSA, scaled by 1/n as upstream MeZO)

and it is never stored: each parameter regenerates its share of every z(seed_i) in turn, in the order of
``zo_params()`` (groups in order, parameters in order, only those that require grad), the list the estimate
perturbed. Learning rate and weight decay come from ``param_groups`` (so an LR scheduler drives them), and every
buffer lives in ``state``, so ``state_dict()`` / ``load_state_dict()`` carry it through a checkpoint.

Memory besides the model: ``ZOSGD`` none; ``ZOSGDMomentum`` one buffer the size of the trainable parameters;
``ZOAdam`` two. While stepping, one z tensor (Adam: and one gradient tensor) of the parameter being visited.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

from mezo_engine import zo


def _check(**values: tuple[float, float, float, bool]) -> None:
    """Raise a ValueError naming each hyperparameter outside its range: name=(value, low, high, high is open)."""
    for name, (value, low, high, open_high) in values.items():
        if not (low <= value and (value < high if open_high else value <= high)):
            bound = f"[{low}, {high})" if open_high else f"[{low}, {high}]"
            raise ValueError(f"{name} {value}: must be in {bound}")


class ZOOptimizer(torch.optim.Optimizer):
    """What the ZO optimizers share: pending estimates, the parameter order z follows, and ``step``."""

    def __init__(self, params: Iterable, defaults: dict):
        super().__init__(params, defaults)
        self._pending: list[tuple[int, float]] = []

    def zo_params(self) -> list[torch.Tensor]:
        """The parameters a ZO step perturbs now, in the order z is drawn: hand this list to ``zo.estimate``."""
        return [p for _, p in self._active()]

    def _active(self) -> list[tuple[dict, torch.Tensor]]:
        return [(group, p) for group in self.param_groups for p in group["params"] if p.requires_grad]

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
            self._apply(active, _streams([p for _, p in active], pairs))
        return loss

    def _apply(self, active: list[tuple[dict, torch.Tensor]], streams: list[tuple[dict, float]]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define its update rule (_apply)")


def _streams(params: Sequence[torch.Tensor], pairs: Sequence[tuple[int, float]]) -> list[tuple[dict, float]]:
    """Per pending pair: fresh generators for its seed and its share projected_grad / n of the mean."""
    n = len(pairs)
    return [(zo.generators(params, seed), grad / n) for seed, grad in pairs]


def _dense_grad(p: torch.Tensor, streams: list[tuple[dict, float]]) -> torch.Tensor:
    """This parameter's part of the gradient estimate, sum_i c_i * z_i, in one new tensor."""
    (gens, coeff), *rest = streams
    grad = zo.next_z(p, gens).mul_(coeff)
    for gens, coeff in rest:
        grad.add_(zo.next_z(p, gens), alpha=coeff)
    return grad


class ZOSGD(ZOOptimizer):
    """MeZO's update: theta <- theta - lr * (g_hat + wd * theta); no state.

    ``fused_step`` runs a whole one-seed step in the fewest passes (``zo.fused_sgd_step``) and leaves nothing
    pending; estimate + ``add_estimate`` + ``step`` give the same parameters bit for bit, and also take n seeds.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, weight_decay: float = 0.0):
        _check(lr=(lr, 0.0, math.inf, True), weight_decay=(weight_decay, 0.0, math.inf, True))
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    def fused_step(self, loss_fn: Callable[[], float], seed: int, eps: float, cache: bool = False) -> zo.StepResult:
        """Estimate along z(seed) and update at once; the parameters' rates come from their groups."""
        if self._pending:
            raise RuntimeError("fused_step with estimates pending: call step() first, or do not add_estimate")
        return zo.fused_sgd_step(self.zo_params(), loss_fn, seed, eps, self.rates(), cache)

    def rates(self) -> list[tuple[float, float]]:
        """(lr, weight decay) of each parameter of ``zo_params()``, from its group."""
        return [(group["lr"], group["weight_decay"]) for group, _ in self._active()]

    def _apply(self, active, streams) -> None:
        for group, p in active:
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                p.mul_(1.0 - lr * wd)
            for gens, coeff in streams:
                p.add_(zo.next_z(p, gens), alpha=-lr * coeff)


class ZOSGDMomentum(ZOOptimizer):
    """SGD with heavy-ball momentum on the ZO estimate, as ``torch.optim.SGD`` (no dampening, coupled decay):

        buf <- momentum * buf + g_hat + wd * theta;    theta <- theta - lr * buf

    ``state[p]["momentum_buffer"]``: one buffer per trainable parameter (zero at the start and after a reset, when
    the first update is then g_hat + wd * theta, as torch's first step).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0):
        _check(lr=(lr, 0.0, math.inf, True), momentum=(momentum, 0.0, 1.0, True),
               weight_decay=(weight_decay, 0.0, math.inf, True))
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def _apply(self, active, streams) -> None:
        for group, p in active:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"].mul_(group["momentum"])
            for gens, coeff in streams:
                buf.add_(zo.next_z(p, gens), alpha=coeff)
            if group["weight_decay"]:
                buf.add_(p, alpha=group["weight_decay"])
            p.add_(buf, alpha=-group["lr"])


class ZOAdam(ZOOptimizer):
    """MeZO-Adam as upstream MeZO's medium_models ran it: the ZO estimate fed to AdamW (``transformers``' AdamW with
    bias correction, the optimizer that trainer created), decoupled weight decay applied after the Adam step:

        m <- b1 m + (1 - b1) g_hat;   v <- b2 v + (1 - b2) g_hat^2;   t <- t + 1
        theta <- theta - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps);   theta <- theta - lr * wd * theta

    ``state[p]``: ``exp_avg`` and ``exp_avg_sq`` (two buffers per trainable parameter) and ``step`` (a float32 CPU
    scalar tensor, so a reset that zeroes tensors also restarts the bias correction).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        _check(lr=(lr, 0.0, math.inf, True), beta1=(betas[0], 0.0, 1.0, True), beta2=(betas[1], 0.0, 1.0, True),
               eps=(eps, 0.0, math.inf, True), weight_decay=(weight_decay, 0.0, math.inf, True))
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, with each ``step`` kept on the CPU (a checkpoint mapped to a GPU would sync per parameter)."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if "step" in state:
                state["step"] = state["step"].to("cpu", torch.float32)

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if "exp_avg" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _apply(self, active, streams) -> None:
        for group, p in active:
            state, (beta1, beta2) = self._state(p), group["betas"]
            grad = _dense_grad(p, streams)
            state["step"] += 1
            t = float(state["step"])
            state["exp_avg"].mul_(beta1).add_(grad, alpha=1.0 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            denom = torch.sqrt(state["exp_avg_sq"], out=grad).add_(group["eps"])  # the gradient is no longer needed
            step_size = group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
            p.addcdiv_(state["exp_avg"], denom, value=-step_size)
            if group["weight_decay"]:
                p.add_(p, alpha=-group["lr"] * group["weight_decay"])
