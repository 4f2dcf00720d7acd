"""The training modes (adapter schemes) by name: one file each, registered here.

| mode      | flag         | file          | trains                                                      |
|-----------|--------------|---------------|-------------------------------------------------------------|
| ``ft``    | (none)       | ``ft.py``     | every parameter (the base class the others override)        |
| ``lora``  | ``--lora``   | ``lora.py``   | LoRA A/B (PEFT); LoRA-GA init, partial merges               |
| ``xgblora`` | ``--xgblora`` | ``xgblora.py`` | rank-``--xgblora_rank`` boosters, merged every kappa steps |
| ``prefix`` | ``--prefix_tuning`` | ``prefix.py`` | prefix keys/values of every attention layer          |
| ``head``  | ``--head_tuning`` | ``head.py`` | the LM head (the tied embedding weight unless ``--untie_emb``) |

A method's file holds its flags (a dataclass ``EngineArguments`` inherits), its checks (``problems(args)``, called
from the arguments' validation, which collects every problem into one error), its ``Mode`` subclass and callbacks.
Its name, selecting flag and the drivers' defaults are its entry in ``registry.ADAPTERS`` (torch-free, read by the
shell drivers). A mode without a flag of its own is selected with ``--method <name>`` (and ``MODE=<name>``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mezo_engine import registry
from mezo_engine.methods import head, lora, prefix, xgblora
from mezo_engine.methods.ft import CACHE_FRACTION, Mode, ModeError

__all__ = ["CACHE_FRACTION", "FLAGS", "METHODS", "Method", "Mode", "ModeError", "mode_class", "mode_for",
           "model_problems", "problems", "register", "resolve"]


@dataclass(frozen=True)
class Method:
    """A mode's code: its class, checks and derived settings (``resolve(args)``: set once after validation)."""

    mode: type[Mode]
    problems: Callable[[object], Iterator[str]] | None = None
    resolve: Callable[[object], None] | None = None
    model_problems: Callable[[object, object], Iterator[str]] | None = None  # (args, config), before it loads


METHODS: dict[str, Method] = {
    "ft": Method(Mode),
    "lora": Method(lora.LoraMode, lora.problems),
    "xgblora": Method(xgblora.XGBLoraMode, xgblora.problems, xgblora.resolve, xgblora.model_problems),
    "prefix": Method(prefix.PrefixMode, prefix.problems, model_problems=prefix.model_problems),
    "head": Method(head.HeadMode, head.problems),
}
# The methods' flag dataclasses, inherited by EngineArguments (one flat flag namespace, MeZO's names).
FLAGS: tuple[type, ...] = (lora.LoraFlags, xgblora.XGBLoraFlags, prefix.PrefixFlags, head.HeadFlags)


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
