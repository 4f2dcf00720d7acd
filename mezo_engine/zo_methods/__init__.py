"""The ZO methods by name (``--zo_optimizer``): one file each, found by the registry.

| name       | file           | update                                      | state (``state_dict()``)            |
|------------|----------------|---------------------------------------------|-------------------------------------|
| ``sgd``    | ``sgd.py``     | MeZO's ZO-SGD (fused step for one direction) | none                               |
| ``momentum`` | ``momentum.py`` | heavy-ball momentum (``--zo_momentum``)  | ``momentum_buffer``                 |
| ``adam``   | ``adam.py``    | MeZO-Adam (the Trainer's Adam betas, eps)   | ``exp_avg``, ``exp_avg_sq``, ``step`` |
| ``lozo``   | ``lozo.py``    | LOZO: low-rank U V^T directions, lazy V     | ``step``, ``subspace_seed`` (matrices) |
| ``lozo_m`` | ``lozo_m.py``  | LOZO-M: LOZO with factored momentum         | the same and ``momentum`` (m x r)   |
| ``subzero`` | ``subzero.py`` | SubZero: U S V^T, lazy orthonormal U, V   | ``step``, ``subspace_seed`` (matrices) |
| ``fzoo``   | ``fzoo.py``    | FZOO: N one-sided Rademacher queries, the step normalised by their std | none |
| ``hizoo``  | ``hizoo.py``   | HiZOO: 3 forwards, diagonal-Hessian preconditioned SPSA | ``hessian_minus_one`` |
| ``sparse_mezo`` | ``sparse_mezo.py`` | MeZO on the small-magnitude weights | ``threshold`` (one per tensor) |

(``subspace.py``: the lazily refreshed subspaces LOZO and SubZero share; ``docs/zo-methods.md``.)

A method is one file, ``<name>.py``, that declares ``OPTIMIZER``, a ``base.ZOOptimizer`` subclass named ``<name>``
(its flag dataclass ``flags``, inherited by EngineArguments; its checks ``problems(args)``; ``from_args``; its
update rule and state; the forwards a step costs), and ``DRIVER``, a literal the torch-free registry reads
(``mezo_engine/registry.py``: the drivers' default LR/EPS where they differ from the mode's; ``{}`` for none). It
samples with ``sampler`` (Gaussian) and estimates with ``estimator`` (``spsa.TWO_POINT``: two forwards per
direction, n directions by ``--zo_num_samples``), or overrides ``zo_step`` for a step of its own (its
``loss_fn`` is a ``batched_queries.StepLosses``: per-rank losses, one all-reduce, batched adapter queries). Nothing
else names it: this package imports every file the registry lists, in its order.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator

from mezo_engine import registry
from mezo_engine.zo_methods.base import ZOOptimizer
from mezo_engine.zo_methods.spsa import PAIR_BATCHED, SpsaFlags

__all__ = ["FLAGS", "ZO_METHODS", "ZOOptimizer", "flag_users", "make_zo_optimizer", "method_flags",
           "method_problems", "optimizer_class", "register"]


def _declared(name: str) -> type[ZOOptimizer]:
    """The ``OPTIMIZER`` of ``zo_methods/<name>.py``, checked against its name."""
    cls = importlib.import_module(f"{__name__}.{name}").OPTIMIZER
    if cls.name != name:
        raise ValueError(f"zo_methods/{name}.py: its optimizer {cls.__name__} is named {cls.name!r}")
    return cls


def _most_derived(classes: list[type]) -> tuple[type, ...]:
    """``classes`` without repeats and without those another one extends (a method whose flags extend another's,
    as LOZO-M's extend LOZO's, shares them: EngineArguments inherits each field once)."""
    unique = list(dict.fromkeys(classes))
    return tuple(c for c in unique if not any(o is not c and issubclass(o, c) for o in unique))


ZO_METHODS: dict[str, type[ZOOptimizer]] = {name: _declared(name) for name in registry.ZO_METHODS}
# The estimator's and the methods' flag dataclasses, inherited by EngineArguments.
FLAGS: tuple[type, ...] = _most_derived([SpsaFlags, *(cls.flags for cls in ZO_METHODS.values() if cls.flags)])


def register(cls: type[ZOOptimizer], spec: registry.ZoSpec | None = None) -> None:
    """Add a ZO method under ``cls.name`` (its data in ``registry.ZO_METHODS``: ``spec``, default: no defaults)."""
    ZO_METHODS[cls.name] = cls
    registry.register_zo(spec or registry.ZoSpec(cls.name))


def optimizer_class(name: str) -> type[ZOOptimizer]:
    if name not in ZO_METHODS:
        raise ValueError(f"--zo_optimizer {name}: unknown; known: {', '.join(ZO_METHODS)}")
    return ZO_METHODS[name]


def make_zo_optimizer(args, groups: list[dict]) -> ZOOptimizer:
    """The ZO optimizer of ``--zo_optimizer`` over ``groups``, built from the run's arguments."""
    optimizer = optimizer_class(args.zo_optimizer).from_args(args, groups)
    if args.zo_pair_batched:  # checked: a method that takes its steps with the two-point estimator
        optimizer.estimator = PAIR_BATCHED
    return optimizer


def method_flags() -> dict[str, tuple[str, ...]]:
    """Each method's own flag names (those of its ``flags`` dataclass, the fields it extends included)."""
    return {name: tuple(cls.flags.__dataclass_fields__) if cls.flags else () for name, cls in ZO_METHODS.items()}


def flag_users() -> dict[str, list[str]]:
    """Each method flag and the methods that read it, in the registry's order."""
    users: dict[str, list[str]] = {}
    for name, flags in method_flags().items():
        for flag in flags:
            users.setdefault(flag, []).append(name)
    return users


def method_problems(args) -> Iterator[str]:
    """Every registered method's checks."""
    for cls in ZO_METHODS.values():
        yield from cls.problems(args)
