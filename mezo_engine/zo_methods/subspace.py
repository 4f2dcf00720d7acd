"""What the low-rank ZO methods share (LOZO, LOZO-M, SubZero; no transformers): each weight matrix is perturbed
inside a subspace of its own that is drawn from a seed and kept for ``interval`` steps (refreshed lazily), and the
tensor maths of those subspaces.

The subspace of a matrix is never stored: its optimizer state holds the seed it was drawn from
(``subspace_seed``, a Python int) and the number of steps begun with this matrix (``step``, an int64 CPU tensor).
Every use regenerates the factors from the seed on the matrix's device. A refresh is due when ``step`` is a multiple
of ``interval``; the new seed mixes the first direction seed of that step with the matrix's position among the
optimizer's parameters, so every matrix gets its own subspace, every rank of a torchrun job the same one, and a
resumed run the one it had (``state_dict()`` carries both entries). A reset that zeroes the state's tensors
(XGBLoRA's merge) sets ``step`` to 0, so the next step draws a fresh subspace.
"""
from __future__ import annotations

import math

import torch

from mezo_engine import zo

_MIX = 0xD1B5_4A32_D192_ED03  # odd constants that spread (seed, position) pairs over the seed range
_POSITION = 0x8CB9_2BA7_2F3D_8DD7


def subspace_seed(step_seed: int, position: int) -> int:
    """The seed of the subspace drawn at a step whose first direction seed is ``step_seed``, for the parameter at
    ``position`` in the optimizer's list (a different stream than the direction seeds themselves)."""
    return (int(step_seed) * _MIX + (int(position) + 1) * _POSITION) % (2**63 - 1)


def gaussian(shape: tuple[int, ...], seed: int, like: torch.Tensor) -> torch.Tensor:
    """A standard normal tensor of ``shape`` from a generator seeded with ``seed``, on ``like``'s device and dtype."""
    gen = zo.make_generator(like.device, seed)
    return torch.randn(shape, generator=gen, device=like.device, dtype=like.dtype)


def orthonormal_pair(rows: int, cols: int, rank: int, seed: int,
                     like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column-orthonormal U (rows x rank) and V (cols x rank): the Q factors of two Gaussian matrices drawn in that
    order from one generator seeded with ``seed`` (SubZero's subspace). The QR runs in float64 for a float64
    ``like`` and in float32 otherwise (half precisions have no QR kernel everywhere), then casts to its dtype."""
    work = torch.float64 if like.dtype == torch.float64 else torch.float32
    gen = zo.make_generator(like.device, seed)
    left = torch.randn((rows, rank), generator=gen, device=like.device, dtype=work)
    right = torch.randn((cols, rank), generator=gen, device=like.device, dtype=work)
    return torch.linalg.qr(left)[0].to(like.dtype), torch.linalg.qr(right)[0].to(like.dtype)


def near_square(numel: int) -> tuple[int, int]:
    """The factor pair ``a <= b`` of ``numel`` with ``a * b == numel`` closest to a square (SubZero's reshape of
    adapter tensors)."""
    a = math.isqrt(numel)
    while numel % a:
        a -= 1
    return a, numel // a


def project_factor(factor: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """LOZO-M's change of subspace: a left factor N (m x r) paired with V_old (n x r) re-expressed against V_new,
    N V_old^T V_new / n (V^T V is about n I for a Gaussian V, so an unchanged V leaves N about as it was)."""
    return factor @ (old.T @ new) / old.shape[0]


class LazySubspaces:
    """Mixin for a ``ZOOptimizer`` whose matrices are perturbed inside lazily refreshed subspaces.

    The subclass sets ``interval`` and calls ``begin_step(seeds[0])`` at the start of each ``zo_step`` (before any
    direction is drawn); ``_on_refresh`` is its hook for state tied to the old subspace (LOZO-M's momentum).
    """

    interval: int = 1

    def _is_matrix(self, p: torch.Tensor) -> bool:
        """Whether ``p`` gets a subspace: the 2-D tensors (weights, adapter factors); the others are perturbed with
        a plain Gaussian, as both papers do for biases and norms."""
        return p.dim() == 2

    def _positions(self) -> list[tuple[int, torch.Tensor]]:
        """(position in the optimizer's full list, parameter) of the matrices that train now."""
        every = [p for group in self.param_groups for p in group["params"]]
        return [(i, p) for i, p in enumerate(every) if p.requires_grad and self._is_matrix(p)]

    def begin_step(self, step_seed: int) -> None:
        """Start a step: draw a new subspace for each trainable matrix whose refresh is due, count the step."""
        for position, p in self._positions():
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.int64)
            if int(state["step"]) % self.interval == 0:
                new = subspace_seed(step_seed, position)
                if int(state["step"]) > 0:
                    self._on_refresh(p, state, state["subspace_seed"], new)
                state["subspace_seed"] = new
            state["step"] += 1

    def _on_refresh(self, p: torch.Tensor, state: dict, old_seed: int, new_seed: int) -> None:
        """Called when a matrix that already had a subspace gets a new one (nothing by default)."""

    def _seed_of(self, p: torch.Tensor) -> int:
        """The seed of ``p``'s current subspace."""
        state = self.state[p]
        if "subspace_seed" not in state or int(state["step"]) == 0:
            raise RuntimeError(f"--zo_optimizer {self.name}: a matrix has no subspace yet; a step starts with "
                               f"zo_step (or begin_step) before its directions are drawn")
        return state["subspace_seed"]
