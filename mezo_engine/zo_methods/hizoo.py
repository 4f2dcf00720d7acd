"""HiZOO (``--zo_optimizer hizoo``; Zhao et al. 2024, "Second-Order Fine-Tuning without Pain for LLMs: A Hessian
Informed Zeroth-Order Optimizer"): SPSA along a direction preconditioned by a diagonal Hessian estimate that the
same forwards keep up to date. Three forwards a step; one state tensor the size of the trainable parameters."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from mezo_engine import zo
from mezo_engine.zo_methods.base import NON_NEGATIVE, ZOOptimizer, check_ranges

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
DRIVER = {}

HESSIAN_FORMS = ("unbiased", "released_code")
STATE = "hessian_minus_one"  # D - 1 per parameter: zeroed (an XGBLoRA merge), D is I again, HiZOO's start


@dataclass
class HizooFlags:
    hizoo_smooth: float = field(default=1e-8, metadata={
        "help": "HiZOO's smoothing alpha: D <- (1 - alpha) D + alpha |H_hat| per step (D: the diagonal Hessian "
                "estimate, Sigma = D^-1). Default 1e-8, the value of the reproduction command in the authors' "
                "README (HESSIAN_SMOOTH_TYPE=constant1e-8); 0 keeps D = I (MeZO with one more forward)."})
    hizoo_hessian: Literal["unbiased", "released_code"] = field(default="unbiased", metadata={
        "help": "The per-step diagonal Hessian sample H_hat, with c = (L+ + L- - 2 L0) / (2 eps^2): unbiased = "
                "c * D * (z^2 - 1), the diagonal of the paper's estimate c Sigma^-1/2 (z z^T - I) Sigma^-1/2, whose "
                "mean is the Hessian's diagonal; released_code = |c| * D * z^2 as the authors' code computes it (no "
                "- I; its mean is H_ii + D_i/2 * sum_j H_jj / D_j)."})


def curvature(loss0: float, loss_pos: float, loss_neg: float, eps: float) -> float:
    """c = (L(theta + eps v) + L(theta - eps v) - 2 L(theta)) / (2 eps^2): half the second difference along v."""
    return (float(loss_pos) + float(loss_neg) - 2.0 * float(loss0)) / (2.0 * eps * eps)


def hessian_sample(c: float, z: torch.Tensor, diag: torch.Tensor, form: str = "unbiased") -> torch.Tensor:
    """One draw of the diagonal Hessian estimate from the curvature ``c`` measured along v = z / sqrt(diag):
    ``unbiased`` c * diag * (z^2 - 1), ``released_code`` |c| * diag * z^2 (a new tensor)."""
    if form == "unbiased":
        return z.square().sub_(1.0).mul_(diag).mul_(c)
    if form == "released_code":
        return z.square().mul_(diag).mul_(abs(c))
    raise ValueError(f"hizoo Hessian form {form!r} unknown; known: {', '.join(HESSIAN_FORMS)}")


def smooth_(minus_one: torch.Tensor, sample: torch.Tensor, alpha: float) -> None:
    """In place, with D = 1 + ``minus_one``: D <- (1 - alpha) D + alpha |sample|, written as
    (D - 1) <- (1 - alpha)(D - 1) + alpha (|sample| - 1). ``sample`` is consumed."""
    minus_one.mul_(1.0 - alpha).add_(sample.abs_().sub_(1.0), alpha=alpha)


def preconditioned(z: torch.Tensor, minus_one: torch.Tensor) -> torch.Tensor:
    """Sigma^1/2 z = z / sqrt(D), D = 1 + ``minus_one``, in the state's dtype (written into ``z`` when it has
    that dtype already)."""
    return z.to(minus_one.dtype).div_(minus_one.add(1.0).sqrt_())


class Preconditioned:
    """The direction sampler of one HiZOO step: z / sqrt(D) with the state's D of each parameter (a
    ``zo.DirectionSampler``; the same z stream as MeZO's Gaussian one)."""

    generators = staticmethod(zo.generators)

    def __init__(self, params: Sequence[torch.Tensor], states: Sequence[torch.Tensor]):
        self.states = {id(p): s for p, s in zip(params, states)}

    def next_z(self, param: torch.Tensor, gens: dict) -> torch.Tensor:
        return preconditioned(zo.next_z(param, gens), self.states[id(param)])


class HiZOO(ZOOptimizer):
    """HiZOO, one direction per step, D the diagonal Hessian estimate (Sigma = D^-1, D = I at the start):

        L0 = L(theta);  L+- = L(theta +- eps Sigma^1/2 z);  g = (L+ - L-) / (2 eps)
        D <- (1 - alpha) D + alpha |H_hat(z, D, (L+ + L- - 2 L0) / (2 eps^2))|          (``hessian_sample``)
        theta <- theta - lr * (g * D^-1/2 z + wd * theta)          (D^-1/2 = Sigma^1/2 of the updated D)

    The update is done in ``zo_step`` itself (its Hessian needs L0, which a queued estimate does not carry), so the
    Trainer's ``optimizer.step()`` finds nothing pending. ``state[p]["hessian_minus_one"]``: D - 1, in float32 or
    wider (so that alpha = 1e-8 steps are not lost below D's rounding), zero at the start and after a reset.
    The reported loss is L0.
    """

    name = "hizoo"
    flags = HizooFlags

    def __init__(self, params: Iterable, lr: float = 1e-3, smooth: float = 1e-8, hessian: str = "unbiased",
                 weight_decay: float = 0.0):
        check_ranges(lr=(lr, *NON_NEGATIVE), smooth=(smooth, 0.0, 1.0, False),
                     weight_decay=(weight_decay, *NON_NEGATIVE))
        if hessian not in HESSIAN_FORMS:
            raise ValueError(f"hessian {hessian!r}: unknown; known: {', '.join(HESSIAN_FORMS)}")
        super().__init__(params, {"lr": lr, "smooth": smooth, "hessian": hessian, "weight_decay": weight_decay})

    @classmethod
    def from_args(cls, args, groups):
        return cls(groups, lr=args.learning_rate, smooth=args.hizoo_smooth, hessian=args.hizoo_hessian)

    @classmethod
    def problems(cls, args):
        if not 0 <= args.hizoo_smooth <= 1:
            yield f"--hizoo_smooth {args.hizoo_smooth}: must be in [0, 1]"
        if args.trainer == "zo" and args.zo_optimizer == cls.name and args.zo_num_samples != 1:
            yield (f"--zo_num_samples {args.zo_num_samples} with --zo_optimizer hizoo: one direction per step "
                   f"(its three forwards share L0 and update the Hessian from one direction)")

    def forwards_per_step(self, num_directions: int) -> int:
        """L(theta) once, then the two-point pair: 3 for HiZOO's one direction."""
        return 1 + 2 * num_directions

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, with D - 1 kept in its own dtype (float32 for a bf16 parameter)."""
        self._load_keeping_dtype(state_dict, (STATE,))

    def add_estimate(self, pairs) -> None:
        raise TypeError("hizoo updates inside zo_step (its Hessian needs the loss at theta, which a (seed, "
                        "projected gradient) pair does not carry); call zo_step")

    def zo_step(self, loss_fn: Callable[[], float], seeds: Sequence[int], eps: float,
                cache: bool) -> tuple[float, list[tuple[int, float]]]:
        """L0, the pair along Sigma^1/2 z(seed), the Hessian and parameter updates; returns L0 and the pair."""
        if len(seeds) != 1:
            raise ValueError(f"hizoo takes one direction per step, got {len(seeds)} seeds")
        params = self.zo_params()
        sampler = Preconditioned(params, [self._minus_one(p) for p in params])
        loss0 = loss_fn()
        pair: list[float] = []

        def recorded() -> float:
            pair.append(loss_fn())
            return pair[-1]

        estimate = zo.estimate(params, recorded, seeds, eps, cache, sampler)
        self._update(estimate[0], curvature(loss0, pair[0], pair[1], eps))
        return loss0, estimate

    def _minus_one(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if STATE not in state:
            state[STATE] = torch.zeros(p.shape, dtype=torch.promote_types(p.dtype, torch.float32), device=p.device)
        return state[STATE]

    @torch.no_grad()
    def _update(self, pair: tuple[int, float], c: float) -> None:
        """Regenerate z parameter by parameter: the Hessian EMA, then the step along the updated Sigma^1/2 z."""
        seed, grad = pair
        active = self._active()
        gens = zo.generators([p for _, p in active], seed)
        for group, p in active:
            z, minus_one = zo.next_z(p, gens), self._minus_one(p)
            old = minus_one.add(1.0)
            smooth_(minus_one, hessian_sample(c, z.to(old.dtype), old, group["hessian"]), group["smooth"])
            if group["weight_decay"]:
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
            p.add_(preconditioned(z, minus_one), alpha=-group["lr"] * grad)


OPTIMIZER = HiZOO
