"""LOZO-M (``--zo_optimizer lozo_m``): LOZO (``lozo.py``) with momentum kept in factored form, as in Chen et al.
2024 (optsuite/LOZO). With V fixed between refreshes, the momentum of a matrix is a left factor N (m x r):

    N <- beta N + (1 - beta) (1/n) sum_i c_i U_i;        W <- W - lr (N V^T / r + wd W)

and when V is redrawn, N first moves to the new subspace: N <- N V_old^T V_new / n_cols (the paper's projection).
Other tensors keep a dense buffer of their own size: b <- beta b + (1 - beta) g_hat. The buffers start at zero
(upstream's code starts them at the first estimate, without the 1 - beta).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from mezo_engine.zo_methods import subspace
from mezo_engine.zo_methods.base import check_ranges
from mezo_engine.zo_methods.lozo import LOZO, LozoFlags

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
DRIVER = {}


@dataclass
class LozoMFlags(LozoFlags):
    lozo_momentum: float = field(default=0.9, metadata={
        "help": "LOZO-M: momentum beta of the factored buffer N <- beta N + (1 - beta) c U (default 0.9: BETA1 of "
                "the LOZO code's medium_models/lozo.sh)."})


class LOZOM(LOZO):
    """LOZO with momentum in factored form. ``state[p]``: LOZO's ``step`` and ``subspace_seed``, and ``momentum``
    (m x r for a matrix, p's shape for other tensors; zero after a reset, when the momentum starts afresh)."""

    name = "lozo_m"
    flags = LozoMFlags

    def __init__(self, params: Iterable, lr: float = 1e-3, rank: int = 2, interval: int = 50,
                 momentum: float = 0.9, weight_decay: float = 0.0):
        check_ranges(momentum=(momentum, 0.0, 1.0, True))
        super().__init__(params, lr=lr, rank=rank, interval=interval, weight_decay=weight_decay, momentum=momentum)

    @classmethod
    def from_args(cls, args, groups):
        return cls(groups, lr=args.learning_rate, rank=args.lozo_rank, interval=args.lozo_interval,
                   momentum=args.lozo_momentum)

    @classmethod
    def problems(cls, args):
        """Its own flag only: LOZO checks the rank and interval both methods read."""
        if not 0 <= args.lozo_momentum < 1:
            yield f"--lozo_momentum {args.lozo_momentum}: must be in [0, 1)"

    def _on_refresh(self, p: torch.Tensor, state: dict, old_seed: int, new_seed: int) -> None:
        """The momentum of matrix ``p`` moves from the old V to the new one."""
        if "momentum" in state:
            old, new = self._right(p, old_seed), self._right(p, new_seed)
            state["momentum"].copy_(subspace.project_factor(state["momentum"], old, new))

    def _apply(self, active, streams) -> None:
        for group, p in active:
            summed = self._dense_grad(p, streams)
            state = self.state[p]
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(summed)
            buf = state["momentum"].mul_(group["momentum"]).add_(summed, alpha=1.0 - group["momentum"])
            if group["weight_decay"]:
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
            p.sub_(self._step_of(p, buf), alpha=group["lr"])


OPTIMIZER = LOZOM
