"""The step and the evaluation forward as upstream MeZO wrote them, the baselines of rows c. and f.: the global RNG
reseeded and z drawn per parameter four times (+1, -2, +1, update), out-of-place ``param.data = ...`` updates, and
full-vocabulary log-softmax at every position."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mezo_engine.scoring import classification_loss, position_ids


def naive_loss_fn_for(model, batch: dict) -> Callable[[], float]:
    """Upstream's loss: full logits, full-vocabulary log-softmax at every position, then gather the answers."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    width = ids.shape[1]
    option = torch.arange(width - 1, device=ids.device)[None, :] >= (width - 1 - batch["option_len"])[:, None]

    def loss() -> float:
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits
            shift_logits = logits[..., :-1, :].contiguous()
            log_probs = F.log_softmax(shift_logits, dim=-1)  # in the model's dtype, as upstream
            picked = torch.gather(log_probs, -1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            scores = (picked * option).sum(-1) / option.sum(-1)
            return classification_loss(scores, batch["group"], batch["gold_row"]).item()

    return loss


@torch.no_grad()
def naive_perturb(params: list[torch.nn.Parameter], seed: int, scaling_factor: float, eps: float) -> None:
    """Upstream ``zo_perturb_parameters``: reseed the global RNG, draw z per parameter, add out of place."""
    torch.manual_seed(seed)
    for param in params:
        z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
        param.data = param.data + scaling_factor * z * eps


@torch.no_grad()
def naive_update(named: list[tuple[str, torch.nn.Parameter]], seed: int, grad: float, lr: float, wd: float) -> None:
    """Upstream ``zo_update``: z drawn a fourth time, out-of-place SGD with weight decay except biases / norms."""
    torch.manual_seed(seed)
    for name, param in named:
        z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
        if "bias" not in name and "layer_norm" not in name and "layernorm" not in name:
            param.data = param.data - lr * (grad * z + wd * param.data)
        else:
            param.data = param.data - lr * (grad * z)


def naive_step(named: list[tuple[str, torch.nn.Parameter]], loss_fn: Callable[[], float], seed: int, eps: float,
               lr: float, wd: float) -> float:
    """Upstream ``zo_step`` + ``zo_update``: +eps, forward, -2eps, forward, +eps, update; returns the first loss."""
    params = [p for _, p in named]
    naive_perturb(params, seed, 1.0, eps)
    loss1 = loss_fn()
    naive_perturb(params, seed, -2.0, eps)
    loss2 = loss_fn()
    grad = (loss1 - loss2) / (2 * eps)
    naive_perturb(params, seed, 1.0, eps)
    naive_update(named, seed, grad, lr, wd)
    return loss1


@torch.inference_mode()
def upstream_row_scores(model, rows: list, option_lens: list, device: torch.device) -> list[float]:
    """Upstream MeZO's evaluation forward, one row per call: full logits, log-softmax over the vocabulary at
    every position (in the model's dtype), the answer tokens' entries picked out and averaged."""
    scores = []
    for row, n in zip(rows, option_lens):
        ids = torch.tensor([row], device=device)
        log_probs = F.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
        picked = log_probs[torch.arange(ids.shape[1] - 1, device=device), ids[0, 1:]]
        scores.append(picked[-n:].mean().item())
    return scores
