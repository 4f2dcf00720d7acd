"""Do merged boosters point downhill? For each XGBLoRA merge a run recorded, compare the update it wrote into the
base weights with the backprop gradient at those weights.

Merge k added ``dW_k`` (one matrix per LoRA module) to the base weights ``W_k`` that merges 1..k-1 had left. With
the adapters at zero (a fresh booster has B = 0) the model computes with ``W_k``, and over a fixed set of training
batches this module measures, for every merge in order:

* ``cosine``: of ``dW_k`` with ``-G``, ``G`` the mean loss gradient at ``W_k``, over the modules the merge touched;
* ``best_cosine``: the largest cosine any update of the booster's rank r can reach, module by module the top r
  singular directions of ``G`` weighted by their singular values: ``sqrt(sum_m sum_{i<=r} s_i(G_m)^2) / |G|``;
* ``random_cosine``: the typical |cosine| of a direction drawn at random, ``1 / sqrt(D)`` (D entries);
* ``loss_before`` / ``loss_after``: the mean loss on those batches at ``W_k`` and ``W_k + dW_k``, and
  ``predicted_change`` = ``<G, dW_k>``, the first-order change. A change far above the prediction means the
  update's curvature term (its off-gradient part) costs more than its gradient part gains.

A backprop booster's update should sit well above ``random_cosine``; a zeroth-order booster's is a sum of steps
along random directions, each scaled by one projected gradient, so how far above it sits is the question.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from mezo_engine import lora


@dataclass
class MergeAlignment:
    """One merge, measured (see the module docstring)."""

    merge: int
    modules: int
    rank: int
    delta_norm: float
    grad_norm: float
    cosine: float
    best_cosine: float
    random_cosine: float
    loss_before: float
    loss_after: float
    predicted_change: float

    def to_dict(self) -> dict:
        return asdict(self)


def group_merges(factors: Iterable[lora.MergeFactor]) -> list[list[lora.MergeFactor]]:
    """Split a run's recorded factors (``RunStateCallback.merges``, in merge order) into merges: a merge touches
    each module at most once, so a module seen again starts the next merge."""
    groups: list[list[lora.MergeFactor]] = []
    seen: set[str] = set()
    for factor in factors:
        if not groups or factor.module in seen:
            groups.append([])
            seen = set()
        groups[-1].append(factor)
        seen.add(factor.module)
    return groups


def merge_deltas(group: list[lora.MergeFactor]) -> dict[str, torch.Tensor]:
    """What one merge added to each module's base weight (the same formula ``lora.replay_merges`` applies)."""
    return {f.module: f.coeff * lora.factor_delta(f.A, f.B, f.scaling, f.fan_in_fan_out) for f in group}


def _dot(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float((a[n].double() * b[n].double()).sum()) for n in a)


def _norm(a: dict[str, torch.Tensor]) -> float:
    return math.sqrt(_dot(a, a))


def cosine(deltas: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> float:
    """Cosine of the update ``deltas`` with the descent direction ``-grads``, over the modules of ``deltas``."""
    g = {n: grads[n] for n in deltas}
    return -_dot(deltas, g) / (_norm(deltas) * _norm(g))


def best_rank_cosine(grads: dict[str, torch.Tensor], rank: int) -> float:
    """The largest cosine with ``-grads`` of an update whose every module has rank <= ``rank``."""
    top = sum(float((torch.linalg.svdvals(g.double())[:rank] ** 2).sum()) for g in grads.values())
    return math.sqrt(top) / _norm(grads)


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list, loss_fn: Callable[[nn.Module, Any], torch.Tensor]) -> float:
    return sum(float(loss_fn(model, b)) for b in batches) / len(batches)


def merge_alignment(model: nn.Module, groups: list[list[lora.MergeFactor]], batches: Iterable[Any],
                    loss_fn: Callable[[nn.Module, Any], torch.Tensor], progress=None) -> list[MergeAlignment]:
    """Replay ``groups`` (merges, in order) on ``model``'s base weights, measuring each before it is added.

    ``model`` must hold the base weights the first merge was added to, with adapters that change nothing (B = 0).
    Its weights end with every merge applied. ``progress``: optional callable run after each merge (a tqdm
    ``update``).
    """
    batches = list(batches)
    was_training = model.training
    model.eval()  # no dropout: the same batches give the same losses
    out = []
    try:
        before = mean_loss(model, batches, loss_fn)
        for k, group in enumerate(groups, 1):
            deltas = merge_deltas(group)
            grads = lora.estimate_lora_ga_grads_backprop(model, batches, loss_fn, layers=list(deltas))
            lora.replay_merges(model, group)
            after = mean_loss(model, batches, loss_fn)
            entries = sum(d.numel() for d in deltas.values())
            out.append(MergeAlignment(
                merge=k, modules=len(group), rank=int(group[0].A.shape[0]), delta_norm=_norm(deltas),
                grad_norm=_norm(grads), cosine=cosine(deltas, grads),
                best_cosine=best_rank_cosine(grads, int(group[0].A.shape[0])),
                random_cosine=1 / math.sqrt(entries), loss_before=before, loss_after=after,
                predicted_change=_dot(grads, deltas)))
            before = after
            if progress is not None:
                progress()
    finally:
        model.train(was_training)
    return out
