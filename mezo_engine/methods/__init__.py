"""The training modes (adapter schemes) by name: one file each, found by the registry.

| mode      | flag         | file          | trains                                                      |
|-----------|--------------|---------------|-------------------------------------------------------------|
| ``ft``    | (none)       | ``ft.py``     | every parameter (the base class the others override)        |
| ``lora``  | ``--lora``   | ``lora.py``   | LoRA A/B (PEFT); LoRA-GA init, partial merges               |
| ``xgblora`` | ``--xgblora`` | ``xgblora.py`` | rank-``--xgblora_rank`` boosters, merged every kappa steps |
| ``prefix`` | ``--prefix_tuning`` | ``prefix.py`` | prefix keys/values of every attention layer          |
| ``head``  | ``--head_tuning`` | ``head.py`` | the LM head (the tied embedding weight unless ``--untie_emb``) |

A method is one file, ``<name>.py``, that declares two things: ``DRIVER``, a literal the torch-free registry reads
for the shell drivers (its selecting flag, default LR/EPS, driver variables; ``mezo_engine/registry.py``), and
``METHOD``, a ``Method`` holding its ``Mode`` subclass, its checks (``problems(args)``, called from the arguments'
validation, which collects every problem into one error), its derived settings and its flag dataclass (which
``EngineArguments`` inherits). Nothing else names it: this package imports every file the registry lists, in its
order. A mode without a flag of its own is selected with ``--method <name>`` (and ``MODE=<name>``).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator

from mezo_engine import registry
from mezo_engine.methods.ft import CACHE_FRACTION, Method, Mode, ModeError

__all__ = ["CACHE_FRACTION", "FLAGS", "METHODS", "Method", "Mode", "ModeError", "mode_class", "mode_for",
           "model_problems", "problems", "register", "resolve"]


def _declared(name: str) -> Method:
    """The ``METHOD`` of ``methods/<name>.py``, checked against its name."""
    method = importlib.import_module(f"{__name__}.{name}").METHOD
    if method.mode.name != name:
        raise ValueError(f"methods/{name}.py: its mode class {method.mode.__name__} is named {method.mode.name!r}")
    return method


METHODS: dict[str, Method] = {name: _declared(name) for name in registry.ADAPTERS}
# The methods' flag dataclasses, inherited by EngineArguments (one flat flag namespace, MeZO's names).
FLAGS: tuple[type, ...] = tuple(m.flags for m in METHODS.values() if m.flags is not None)


def register(method: Method, spec: registry.AdapterSpec) -> None:
    """Add a mode under ``spec.name``: its code here, its data in ``registry.ADAPTERS`` (names must agree)."""
    if method.mode.name != spec.name:
        raise ValueError(f"mode class {method.mode.__name__} is named {method.mode.name!r}, its spec {spec.name!r}")
    METHODS[spec.name] = method
    registry.register_adapter(spec)


def mode_class(name: str) -> type[Mode]:
    """The class of mode ``name``, or a ModeError naming the known ones."""
    if name not in METHODS:
        raise ModeError(f"mode {name!r} unknown; known: {', '.join(METHODS)}")
    return METHODS[name].mode


def mode_for(args) -> Mode:
    """The home of ``args.mode``; a run that starts from a linear probe (``lp-<mode>``) trains as ``<mode>``, and
    the probe alone (``lp``, ``--trainer none``) trains nothing after it."""
    name = args.mode
    return mode_class("ft" if name == "lp" else name.removeprefix("lp-"))(args)


def problems(args) -> Iterator[str]:
    """Every registered mode's checks, in registration order."""
    for method in METHODS.values():
        if method.problems is not None:
            yield from method.problems(args)


def model_problems(args, config) -> Iterator[str]:
    """Every registered mode's checks of its flags against the model's config (read before the model loads)."""
    for method in METHODS.values():
        if method.model_problems is not None:
            yield from method.model_problems(args, config)


def resolve(args) -> None:
    """Every registered mode's derived settings."""
    for method in METHODS.values():
        if method.resolve is not None:
            method.resolve(args)
