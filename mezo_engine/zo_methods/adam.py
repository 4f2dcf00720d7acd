"""MeZO-Adam (``--zo_optimizer adam``): the ZO estimate fed to AdamW with the Trainer's ``--adam_beta1``,
``--adam_beta2``, ``--adam_epsilon``; two buffers the size of the trainable parameters."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from mezo_engine.zo_methods.base import NON_NEGATIVE, ZOOptimizer, check_ranges

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
DRIVER = {}


class ZOAdam(ZOOptimizer):
    """MeZO-Adam as upstream MeZO's medium_models ran it: the ZO estimate fed to AdamW (``transformers``' AdamW with
    bias correction, the optimizer that trainer created), decoupled weight decay applied after the Adam step:

        m <- b1 m + (1 - b1) g_hat;   v <- b2 v + (1 - b2) g_hat^2;   t <- t + 1
        theta <- theta - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps);   theta <- theta - lr * wd * theta

    ``state[p]``: ``exp_avg`` and ``exp_avg_sq`` (two buffers per trainable parameter) and ``step`` (a float32 CPU
    scalar tensor, so a reset that zeroes tensors also restarts the bias correction).
    """

    name = "adam"

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        check_ranges(lr=(lr, *NON_NEGATIVE), beta1=(betas[0], 0.0, 1.0, True), beta2=(betas[1], 0.0, 1.0, True),
                     eps=(eps, *NON_NEGATIVE), weight_decay=(weight_decay, *NON_NEGATIVE))
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @classmethod
    def from_args(cls, args, groups):
        return cls(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)

    @classmethod
    def problems(cls, args):
        """The Trainer's Adam flags, checked when a zo run takes this method."""
        if args.trainer != "zo" or args.zo_optimizer != cls.name:
            return
        for flag in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(args, flag) < 1:
                yield f"--{flag} {getattr(args, flag)}: must be in [0, 1) for --zo_optimizer adam"
        if not args.adam_epsilon >= 0:
            yield f"--adam_epsilon {args.adam_epsilon}: must be >= 0 for --zo_optimizer adam"

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
            grad = self._dense_grad(p, streams)
            state["step"] += 1
            t = float(state["step"])
            state["exp_avg"].mul_(beta1).add_(grad, alpha=1.0 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            denom = torch.sqrt(state["exp_avg_sq"], out=grad).add_(group["eps"])  # the gradient is no longer needed
            step_size = group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
            p.addcdiv_(state["exp_avg"], denom, value=-step_size)
            if group["weight_decay"]:
                p.add_(p, alpha=-group["lr"] * group["weight_decay"])


OPTIMIZER = ZOAdam
