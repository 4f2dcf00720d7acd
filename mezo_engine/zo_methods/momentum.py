"""ZO-SGD with heavy-ball momentum (``--zo_optimizer momentum``, ``--zo_momentum``): one buffer the size of the
trainable parameters."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from mezo_engine.zo_methods.base import NON_NEGATIVE, ZOOptimizer, check_ranges

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
DRIVER = {}


@dataclass
class MomentumFlags:
    zo_momentum: float = field(default=0.9, metadata={
        "help": "Momentum of --zo_optimizer momentum (upstream medium_models' README: --momentum, not in its code)."})


class ZOSGDMomentum(ZOOptimizer):
    """SGD with heavy-ball momentum on the ZO estimate, as ``torch.optim.SGD`` (no dampening, coupled decay):

        buf <- momentum * buf + g_hat + wd * theta;    theta <- theta - lr * buf

    ``state[p]["momentum_buffer"]``: one buffer per trainable parameter (zero at the start and after a reset, when
    the first update is then g_hat + wd * theta, as torch's first step).
    """

    name = "momentum"
    flags = MomentumFlags

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0):
        check_ranges(lr=(lr, *NON_NEGATIVE), momentum=(momentum, 0.0, 1.0, True),
                     weight_decay=(weight_decay, *NON_NEGATIVE))
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @classmethod
    def from_args(cls, args, groups):
        return cls(groups, lr=args.learning_rate, momentum=args.zo_momentum)

    @classmethod
    def problems(cls, args):
        if not 0 <= args.zo_momentum < 1:
            yield f"--zo_momentum {args.zo_momentum}: must be in [0, 1)"

    def _apply(self, active, streams) -> None:
        for group, p in active:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"].mul_(group["momentum"])
            for gens, coeff in streams:
                buf.add_(self._z(p, gens), alpha=coeff)
            if group["weight_decay"]:
                buf.add_(p, alpha=group["weight_decay"])
            p.add_(buf, alpha=-group["lr"])


OPTIMIZER = ZOSGDMomentum
