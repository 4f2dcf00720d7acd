"""Full-parameter training (``MODE=ft``), and the base every training mode overrides only where it differs.

A mode answers what the runner and the trainer ask of it: how it attaches to the model (``prepare``), which
parameters an optimizer covers and which training can change, its stateful callbacks, whether a zo step keeps
copies of its parameters, the context its forwards run in, an LR factor, how it saves and what it adds to the
result JSON. Its flags are a dataclass that ``EngineArguments`` inherits, its checks a ``problems(args)`` function;
``methods/__init__.py`` registers both with the class under the mode's name (``registry.ADAPTERS``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
DRIVER = {"flag": None, "defaults": "full"}

# Trainable sets up to this fraction of the model keep z and the original values for an exact restore.
CACHE_FRACTION = 0.1


class ModeError(ValueError):
    """The mode cannot be set up on this model (e.g. no module it can adapt); names the flag and the value."""


class Mode:
    """Full-parameter training (``MODE=ft``): every parameter trains, the whole model is saved."""

    name = "ft"
    adapter = False  # LoRA layers on the model (zo folds them; regular training covers frozen boosters too)

    def __init__(self, args):
        self.args = args
        self.also_trained: list[str] = []  # parameters the app trains beside the mode's own (``also_train``)

    def prepare(self, model, objective: Callable | None = None, batches: Callable | None = None):
        """``model`` ready to train in this mode (adapters attached, only the mode's parameters trainable).
        ``objective(model, batch)`` and ``batches()`` (a few collated batches) serve gradient-based initialisation."""
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def also_train(self, model, names: Sequence[str]) -> None:
        """Make the parameters ``names`` (the app's rule, e.g. an MLM head beside LoRA) trainable too; an optimizer
        covers them, a best-dev snapshot and a checkpoint keep them. Raises ModeError for a name the model lacks."""
        params = dict(model.named_parameters())
        if missing := [n for n in names if n not in params]:
            raise ModeError(f"{self.name} training: no parameter {', '.join(missing)} in this model")
        for name in names:
            params[name].requires_grad_(True)
        self.also_trained = list(names)

    def optimizer_parameters(self, model) -> list[torch.nn.Parameter]:
        """What the optimizer covers (the ZO one besides what requires grad now)."""
        return [p for p in model.parameters() if p.requires_grad]

    def mutable_parameters(self, model) -> dict[str, torch.nn.Parameter]:
        """Parameters training can change (the best-dev snapshot, the ranks' checksums): here the trainable ones."""
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def caches_perturbation(self, trainable: int, total: int) -> bool:
        """Whether a zo step keeps z and the original values of its ``trainable`` of ``total`` parameters (an exact
        restore in any dtype) rather than regenerating z (no copy of a large trainable set)."""
        return trainable <= CACHE_FRACTION * total

    def forward_context(self, model) -> contextlib.AbstractContextManager:
        """What a zo forward runs inside (adapters folded into their weights, for instance)."""
        return contextlib.nullcontext()

    def lr_factor(self) -> Callable[[int], float] | None:
        """A factor on the LR schedule by 0-based step (None: the schedule as it is)."""
        return None

    def callbacks(self, record: Callable) -> dict[str, TrainerCallback]:
        """The mode's stateful callbacks by name (checkpointed through their ``state_dict``); ``record`` is the
        checkpoint's merge log (``RunStateCallback.record``)."""
        return {}

    def stores_base(self) -> bool:
        """Whether a checkpoint must hold the adapted base weights themselves (they move outside merges)."""
        return False

    def merged_bases(self, model) -> set[str]:
        """Qualified names of the frozen layers whose weights training writes into (merges): an 8-bit base
        (``--load_int8`` on the CPU, ``int8.quantize_frozen_linears_``) keeps them float32. None here."""
        return set()

    def save(self, model, tokenizer, out: Path) -> None:
        """Write what this mode trained under ``out`` (``out/model``: a model ``--model_name`` can load)."""
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")

    def summary(self, callbacks: dict[str, TrainerCallback]) -> dict:
        """What the mode adds to the result JSON's ``train`` section."""
        return {}


@dataclass(frozen=True)
class Method:
    """A mode's code, as its file declares it in ``METHOD``: its class, checks (``problems(args)``, called from the
    arguments' validation), derived settings (``resolve(args)``: set once after validation) and flag dataclass
    (inherited by ``EngineArguments``), and its checks against the model's config before the model loads
    (``model_problems(args, config)``)."""

    mode: type[Mode]
    problems: Callable[[object], Iterator[str]] | None = None
    resolve: Callable[[object], None] | None = None
    flags: type | None = None
    model_problems: Callable[[object, object], Iterator[str]] | None = None


METHOD = Method(Mode)
