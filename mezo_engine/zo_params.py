"""Which parameters a zo step perturbs, in which order, which of them take weight decay, and whether the step keeps
their originals: the trainer's choice, as functions that a script (``scripts/bench``) can ask as well.

``MezoTrainer.create_optimizer`` gives the ZO optimizer every parameter that may train in the run's mode, in model
order, grouped by ``trainer.zo_param_groups``; a step perturbs the optimizer's ``zo_params()`` (those that require
grad now) and keeps z and the original values (``cache``: an exact restore) when the mode says so
(``methods.Mode.caches_perturbation``: at most ``CACHE_FRACTION`` of the model). The functions below are built from those same pieces, so a benchmark
measures the step the trainer takes rather than a copy of its rules.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mezo_engine.methods import Mode
from mezo_engine.trainer import MezoTrainer, zo_named_parameters, zo_param_groups

__all__ = ["ZOParams", "caches", "decay_parameter_names", "zo_named_parameters", "zo_params"]
from mezo_engine.zo_methods.sgd import ZOSGD


def decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """The names weight decay applies to, by the Trainer's own rule (``Trainer.get_decay_parameter_names``: neither
    biases nor norm weights). The rule reads only the model, so it is asked without building a trainer."""
    return set(MezoTrainer.get_decay_parameter_names(None, model))


def caches(params: Sequence[torch.Tensor], model: torch.nn.Module, mode=None) -> bool:
    """Whether the zo step over ``params`` keeps z and the originals, by the mode's rule (``caches_perturbation``;
    the base mode's without one): small sets, e.g. adapters, are then restored bit for bit."""
    mode = mode if mode is not None else Mode(None)  # the base mode's rule reads no flag
    return mode.caches_perturbation(sum(p.numel() for p in params), sum(p.numel() for p in model.parameters()))


@dataclass(frozen=True)
class ZOParams:
    """A zo step's parameters as the trainer sets them up, in the order z is drawn over them."""

    names: list[str]
    params: list[torch.nn.Parameter]
    decay: list[bool]  # weight decay applies (``decay_parameter_names``)
    cache: bool  # z and the originals are kept (``caches``)


def zo_params(model: torch.nn.Module, mode=None) -> ZOParams:
    """The parameters a zo step of the trainer perturbs now (the ZO optimizer's ``zo_params()``), their weight-decay
    flags and the cache choice, for ``model`` as prepared for ``mode`` (None: as its ``requires_grad`` says)."""
    decay = decay_parameter_names(model)
    params = ZOSGD(zo_param_groups(zo_named_parameters(model, mode), decay, 0.0), lr=0.0).zo_params()
    names = {id(p): n for n, p in model.named_parameters()}
    ordered = [names[id(p)] for p in params]
    return ZOParams(ordered, params, [n in decay for n in ordered], caches(params, model, mode))
