"""The methods by name and what the shell drivers need of them: imports neither torch nor transformers.

Two tables, one entry per method: ``ADAPTERS`` (the training modes: how a method attaches to the model) and
``ZO_METHODS`` (the ``--zo_optimizer`` choices). Both are read from the method files themselves: every module
``mezo_engine/methods/<name>.py`` or ``mezo_engine/zo_methods/<name>.py`` that assigns a literal ``DRIVER = {...}``
is the method ``<name>``, and that literal is its entry (read with ``ast.literal_eval``, so nothing is imported).
An entry holds only data: the flag that selects the method, the flags a driver passes from its environment, the
tag part, and the default LR / EPS of each driver. The torch side imports the same files in the same order
(``methods.METHODS``, ``zo_methods.ZO_METHODS``), so adding a method is adding its file.

This module is also the drivers' command (run by path, so it needs no installed package):

    python3 mezo_engine/registry.py modes                      # ft lora xgblora prefix head
    python3 mezo_engine/registry.py defaults MODE DRIVER [ZO]  # LR=1e-5 EPS=1e-3
    python3 mezo_engine/registry.py driver MODE DRIVER [ZO]    # shell assignments: MODE_ARGS, MODE_TAG, ZO_ARGS,
                                                               # DEFAULT_*

``DRIVER`` is one of ``DRIVERS``; ``driver`` reads the method's environment variables (``LORA_R``, ...); ``ZO``
(the drivers' variable of that name, for the MeZO drivers only) is the ZO method.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

DRIVERS = ("mezo", "finetune", "medium-mezo", "medium-finetune")
ZO_DRIVERS = ("mezo", "medium-mezo")  # the drivers that train with --trainer zo
BASE = "ft"  # full-parameter training: the mode of a run that selects none
ZO_BASE = "sgd"  # MeZO's ZO-SGD: the --zo_optimizer of a run that names none
HERE = Path(__file__).resolve().parent
_ENV = re.compile(r"\{(\w+):([^}]*)\}")  # {VARIABLE:default} in a driver flag or tag


class RegistryError(ValueError):
    """An unknown method or driver; the message names it and lists the known ones."""


@dataclass(frozen=True)
class Defaults:
    """A driver's default learning rate and MeZO eps for a method, as the driver writes them into the tag."""

    lr: str
    eps: str = "1e-3"


@dataclass(frozen=True)
class AdapterSpec:
    """A training mode as the arguments and the drivers see it."""

    name: str
    flag: str | None  # the boolean flag that selects it (MeZO's names); None: selected with --method <name>
    defaults: dict[str, Defaults]  # per driver (DRIVERS)
    driver_args: tuple[str, ...] = ()  # run.py flags after the selecting one; {VAR:default} reads the environment
    tag: str = ""  # the driver tag's mode part ({VAR:default} as above); default: the name
    untrained: str = "nothing would train it"  # why --trainer none refuses it

    def selection(self) -> tuple[str, ...]:
        """The run.py flags that select this mode (none for the base mode)."""
        if self.name == BASE:
            return ()
        return (f"--{self.flag}",) if self.flag else ("--method", self.name)


@dataclass(frozen=True)
class ZoSpec:
    """A ZO method (``--zo_optimizer``): its defaults, where they differ from the mode's (none: the mode's)."""

    name: str
    defaults: dict[str, Defaults] = field(default_factory=dict)


def _defaults(mezo: Defaults, finetune: str, medium_mezo: Defaults, medium_finetune: str) -> dict[str, Defaults]:
    return {"mezo": mezo, "finetune": Defaults(finetune, mezo.eps), "medium-mezo": medium_mezo,
            "medium-finetune": Defaults(medium_finetune, medium_mezo.eps)}


# Default sets a method's DRIVER names with ``"defaults": "<preset>"``. MeZO's advice: prefix tuning LR 1e-3 (zo,
# EPS 1e-1) or 1e-2 (regular). Upstream's medium-model README: MeZO full-parameter 1e-6, MeZO + LoRA 1e-4, Adam
# 1e-5, Adam + LoRA 1e-4; XGBLoRA's boosters take LoRA's. Prefix tuning is not built for masked LMs
# (medium_models/run.py says so); its medium defaults are the large ones.
PRESETS: dict[str, dict[str, Defaults]] = {
    "full": _defaults(Defaults("1e-5"), "1e-5", Defaults("1e-6"), "1e-5"),
    "adapter": _defaults(Defaults("1e-5"), "1e-5", Defaults("1e-4"), "1e-4"),
    "prefix": _defaults(Defaults("1e-3", "1e-1"), "1e-2", Defaults("1e-3", "1e-1"), "1e-2"),
}


def declared(folder: Path) -> dict[str, dict]:
    """``{name: DRIVER literal}`` of the modules in ``folder`` that assign one, by file name."""
    found = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DRIVER" for t in node.targets):
                found[path.stem] = _literal(node.value, path)
    return found


def _literal(node: ast.expr, path: Path) -> dict:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise RegistryError(f"{path.parent.name}/{path.name}:{node.lineno}: DRIVER must be a dict literal (no names, "
                            f"calls or comprehensions): the drivers read it without importing the file")
    return value


def _base_first(table: dict, base: str) -> dict:
    """``table`` with ``base`` first, the others by name (the order of error messages and ``--help``)."""
    return {base: table[base], **{k: v for k, v in sorted(table.items()) if k != base}}


def _driver_defaults(value, where: str) -> dict[str, Defaults]:
    """A DRIVER's ``defaults``: a preset's name, or ``{driver: [lr, eps]}``."""
    if isinstance(value, str):
        return PRESETS[value]
    unknown = set(value) - set(DRIVERS)
    if unknown:
        raise RegistryError(f"{where}: DRIVER defaults for unknown drivers {sorted(unknown)}; known: {DRIVERS}")
    return {driver: Defaults(*pair) for driver, pair in value.items()}


def _adapter(name: str, entry: dict) -> AdapterSpec:
    fields = {**entry, "defaults": _driver_defaults(entry["defaults"], f"methods/{name}.py")}
    fields["driver_args"] = tuple(fields.get("driver_args", ()))
    return AdapterSpec(name, **fields)


def _zo(name: str, entry: dict) -> ZoSpec:
    return ZoSpec(name, _driver_defaults(entry.get("defaults", {}), f"zo_methods/{name}.py"))


ADAPTERS: dict[str, AdapterSpec] = _base_first(
    {name: _adapter(name, entry) for name, entry in declared(HERE / "methods").items()}, BASE)
ZO_METHODS: dict[str, ZoSpec] = _base_first(
    {name: _zo(name, entry) for name, entry in declared(HERE / "zo_methods").items()}, ZO_BASE)


def register_adapter(spec: AdapterSpec) -> None:
    """Add (or replace) a training mode; its code registers under the same name (``methods.register``)."""
    ADAPTERS[spec.name] = spec


def register_zo(spec: ZoSpec) -> None:
    """Add (or replace) a ZO method; its optimizer registers under the same name (``zo_methods.register``)."""
    ZO_METHODS[spec.name] = spec


def _lookup(table: dict, name: str, what: str):
    if name not in table:
        raise RegistryError(f"{what}={name} unknown; known: {' '.join(table)}")
    return table[name]


def adapter(name: str) -> AdapterSpec:
    return _lookup(ADAPTERS, name, "MODE")


def defaults(mode: str, driver: str, zo: str = ZO_BASE) -> Defaults:
    """The default LR and EPS of ``driver`` for ``mode`` trained with ZO method ``zo`` (the ZO method's win)."""
    _lookup(dict.fromkeys(DRIVERS), driver, "driver")
    own = _lookup(ZO_METHODS, zo, "--zo_optimizer").defaults
    return own[driver] if driver in own else adapter(mode).defaults[driver]


def expand(text: str, env: dict[str, str]) -> str:
    """``text`` with each ``{VAR:default}`` replaced by ``env[VAR]`` (empty or unset: the default), as ``${VAR:-d}``."""
    return _ENV.sub(lambda m: env.get(m.group(1)) or m.group(2), text)


def driver_variables() -> set[str]:
    """The environment variables the modes' driver flags and tags read (``LORA_R``, ``XGBLORA_STEPS``, ...)."""
    texts = [t for spec in ADAPTERS.values() for t in (*spec.driver_args, spec.tag)]
    return {m.group(1) for t in texts for m in _ENV.finditer(t)}


def _driver_zo(driver: str, zo: str | None) -> str:
    """The ZO method a driver runs (``ZO``; unset: the default), refused for a driver that does not train with zo."""
    _lookup(dict.fromkeys(DRIVERS), driver, "driver")
    if zo is None:
        return ZO_BASE
    _lookup(ZO_METHODS, zo, "ZO")
    if driver not in ZO_DRIVERS:
        raise RegistryError(f"ZO={zo}: the {driver} driver trains with backprop; ZO is for the MeZO drivers "
                            f"({', '.join(ZO_DRIVERS)})")
    return zo


def _array(name: str, words: list[str]) -> str:
    return f"{name}=({' '.join(shlex.quote(w) for w in words)})"


def driver_assignments(mode: str, driver: str, env: dict[str, str], zo: str | None = None) -> str:
    """Shell assignments of ``MODE_ARGS`` (run.py flags), ``MODE_TAG``, ``ZO_ARGS`` (``--zo_optimizer zo`` when
    ``zo`` is given), ``DEFAULT_LR`` and ``DEFAULT_EPS`` (the ZO method's own, where it has them). A ZO method other
    than the default adds ``-<zo>`` to the tag; the default keeps the tag (and the run's name) it had unset."""
    spec, method = adapter(mode), _driver_zo(driver, zo)
    chosen = defaults(mode, driver, method)
    flags = [*spec.selection(), *(expand(a, env) for a in spec.driver_args)]
    tag = expand(spec.tag or spec.name, env) + ("" if method == ZO_BASE else f"-{method}")
    return "\n".join((_array("MODE_ARGS", flags), f"MODE_TAG={shlex.quote(tag)}",
                      _array("ZO_ARGS", ["--zo_optimizer", zo] if zo else []),
                      f"DEFAULT_LR={shlex.quote(chosen.lr)}", f"DEFAULT_EPS={shlex.quote(chosen.eps)}"))


def main(argv: list[str]) -> int:
    """The drivers' command (see the module docstring); an unknown name prints the error and returns 2."""
    commands = {"modes": lambda: " ".join(ADAPTERS),
                "defaults": lambda mode, driver, zo="sgd": "LR={0.lr} EPS={0.eps}".format(defaults(mode, driver, zo)),
                "driver": lambda mode, driver, zo=None: driver_assignments(mode, driver, dict(os.environ), zo)}
    if not argv or argv[0] not in commands:
        print(f"usage: registry.py {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    try:
        print(commands[argv[0]](*argv[1:]))
    except (RegistryError, TypeError) as err:
        print(err, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
