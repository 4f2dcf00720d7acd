"""LOZO (``--zo_optimizer lozo``): low-rank ZO-SGD, Chen et al. 2024, "Enhancing Zeroth-order Fine-tuning for
Language Models with Low-rank Structures" (code: optsuite/LOZO).

Each trainable matrix W (m x n) is perturbed along U V^T, U (m x r) Gaussian, fresh per direction, V (n x r)
Gaussian, kept for ``--lozo_interval`` steps (``subspace.LazySubspaces``); other tensors along a Gaussian z. With
c = (L(W + eps U V^T) - L(W - eps U V^T)) / (2 eps) the estimate is the paper's

    g_hat = c U V^T / r   (matrices),   g_hat = c z   (other tensors),

unbiased as eps -> 0 (E[U V^T <G, U V^T>] = r G). Upstream's code leaves out the 1/r, which is its learning rate
times r. The update is ZO-SGD, theta <- theta - lr (g_hat + wd theta); n directions average their estimates.
LOZO-M (``lozo_m.py``) adds momentum kept in factored form.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from mezo_engine import zo
from mezo_engine.zo_methods import subspace
from mezo_engine.zo_methods.base import NON_NEGATIVE, ZOOptimizer, check_ranges

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
DRIVER = {}


@dataclass
class LozoFlags:
    lozo_rank: int = field(default=2, metadata={
        "help": "LOZO / LOZO-M: rank r of each matrix's perturbation U V^T (default 2: the value of the LOZO "
                "README's OPT command; its search range for OPT-13B is 1 or 2)."})
    lozo_interval: int = field(default=50, metadata={
        "help": "LOZO / LOZO-M: steps each V is kept, the paper's lazy interval nu (default 50: the LOZO README's "
                "OPT command; its search range is 50 or 100)."})


class LowRankSampler:
    """LOZO's directions: z = U V^T for a matrix (U from the direction's generator, V from ``right(p)``), a
    Gaussian z for any other tensor. ``factor`` draws what the generator gives (U, or z), so an update can sum
    c_i U_i over directions before one product with V^T."""

    def __init__(self, rank: int, is_matrix: Callable[[torch.Tensor], bool],
                 right: Callable[[torch.Tensor], torch.Tensor]):
        self.rank, self.is_matrix, self.right = rank, is_matrix, right

    generators = staticmethod(zo.generators)

    def factor(self, p: torch.Tensor, gens: dict) -> torch.Tensor:
        """The next draw for ``p``: U (m x r) for a matrix, z (p's shape) for any other tensor."""
        shape = (p.shape[0], self.rank) if self.is_matrix(p) else p.shape
        return torch.randn(shape, generator=gens[p.device], device=p.device, dtype=p.dtype)

    def next_z(self, p: torch.Tensor, gens: dict) -> torch.Tensor:
        draw = self.factor(p, gens)
        return draw @ self.right(p).T if self.is_matrix(p) else draw


class LOZO(subspace.LazySubspaces, ZOOptimizer):
    """LOZO's update: W <- W - lr ((1/n) sum_i c_i U_i V^T / r + wd W) per matrix, ZO-SGD elsewhere.

    ``state[p]`` of a matrix: ``step`` and ``subspace_seed`` (V is regenerated from the seed; no tensor the size of
    a parameter is kept).
    """

    name = "lozo"
    flags = LozoFlags

    def __init__(self, params: Iterable, lr: float = 1e-3, rank: int = 2, interval: int = 50,
                 weight_decay: float = 0.0, **extra):
        """``extra``: further hyperparameters of every group (LOZO-M's momentum)."""
        check_ranges(lr=(lr, *NON_NEGATIVE), weight_decay=(weight_decay, *NON_NEGATIVE), rank=(rank, 1, 2**31, True),
                     interval=(interval, 1, 2**31, True))
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, **extra})
        self.rank, self.interval = rank, interval
        self.sampler = LowRankSampler(rank, self._is_matrix, self.right_factor)

    @classmethod
    def from_args(cls, args, groups):
        return cls(groups, lr=args.learning_rate, rank=args.lozo_rank, interval=args.lozo_interval)

    @classmethod
    def problems(cls, args):
        for flag in ("lozo_rank", "lozo_interval"):
            if getattr(args, flag) < 1:
                yield f"--{flag} {getattr(args, flag)}: must be >= 1"

    def right_factor(self, p: torch.Tensor) -> torch.Tensor:
        """V (n x r) of matrix ``p``'s current subspace, regenerated from its seed."""
        return self._right(p, self._seed_of(p))

    def _right(self, p: torch.Tensor, seed: int) -> torch.Tensor:
        return subspace.gaussian((p.shape[1], self.rank), seed, p)

    def zo_step(self, loss_fn, seeds, eps, cache):
        """A refresh of the subspaces that are due, then the two-point estimate along each seed's directions."""
        self.begin_step(seeds[0])
        return super().zo_step(loss_fn, seeds, eps, cache)

    def _z(self, p: torch.Tensor, gens: dict) -> torch.Tensor:
        """What the update sums over directions: U for a matrix, z for other tensors (``_dense_grad``)."""
        return self.sampler.factor(p, gens)

    def _step_of(self, p: torch.Tensor, summed: torch.Tensor) -> torch.Tensor:
        """The step direction from sum_i c_i U_i (matrices: times V^T / r) or sum_i c_i z_i (others)."""
        return summed @ self.right_factor(p).T / self.rank if self._is_matrix(p) else summed

    def _apply(self, active, streams) -> None:
        for group, p in active:
            if group["weight_decay"]:
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
            p.sub_(self._step_of(p, self._dense_grad(p, streams)), alpha=group["lr"])


OPTIMIZER = LOZO
