"""The methods by name and what the shell drivers need of them: imports neither torch nor transformers.

Two tables, one entry per method: ``ADAPTERS`` (the training modes: how a method attaches to the model; their code
is ``mezo_engine/methods/<name>.py``) and ``ZO_METHODS`` (the ``--zo_optimizer`` choices; their code is
``mezo_engine/zo_methods/<name>.py``). An entry holds only data: the flag that selects the method, the flags a
driver passes from its environment, the tag part, and the default LR / EPS of each driver. The torch side finds
its classes under the same names (``methods.MODES``, ``zo_methods.ZO_METHODS``; a test checks they agree).

This module is also the drivers' command (run by path, so it needs no installed package):

    python3 mezo_engine/registry.py modes                      # ft lora xgblora prefix head
    python3 mezo_engine/registry.py defaults MODE DRIVER [ZO]  # LR=1e-5 EPS=1e-3
    python3 mezo_engine/registry.py driver MODE DRIVER         # shell assignments: MODE_ARGS, MODE_TAG, DEFAULT_*
    python3 mezo_engine/registry.py variables [SCRIPT]         # the variables SCRIPT (default: every driver) reads

``DRIVER`` is one of ``DRIVERS``; ``driver`` reads the method's environment variables (``LORA_R``, ...).
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

DRIVERS = ("mezo", "finetune", "medium-mezo", "medium-finetune")
REPO = Path(__file__).resolve().parent.parent
DRIVER_FOLDERS = (".", "large_models", "medium_models")  # where the shell drivers are, in the repository
BASE = "ft"  # full-parameter training: the mode of a run that selects none
_ENV = re.compile(r"\{(\w+):([^}]*)\}")  # {VARIABLE:default} in a driver flag or tag
_READ = re.compile(r"\$\{([A-Za-z_]\w*):?[-=?+]")  # ${VAR:-default} and its kin: a script reads VAR from the environment
_CALLED = re.compile(r"(?:source|bash)\s+\"[^\n]*?(/[\w.-][\w./-]*\.sh)\"")  # "$HERE/common.sh": a script it runs
_RESOLVES_MODE = re.compile(r"^\s*mode_args\s+\S", re.M)  # calls drivers.sh's mode_args: reads the modes' variables


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


# MeZO's advice: prefix tuning LR 1e-3 (zo, EPS 1e-1) or 1e-2 (regular). Upstream's medium-model README: MeZO
# full-parameter 1e-6, MeZO + LoRA 1e-4, Adam 1e-5, Adam + LoRA 1e-4; XGBLoRA's boosters take LoRA's. Prefix tuning
# is not built for masked LMs (medium_models/run.py says so); its medium defaults are the large ones.
_FULL = _defaults(Defaults("1e-5"), "1e-5", Defaults("1e-6"), "1e-5")
_ADAPTER = _defaults(Defaults("1e-5"), "1e-5", Defaults("1e-4"), "1e-4")
_PREFIX = _defaults(Defaults("1e-3", "1e-1"), "1e-2", Defaults("1e-3", "1e-1"), "1e-2")
_ADAPTS = "an adapter changes nothing until it is trained"

ADAPTERS: dict[str, AdapterSpec] = {s.name: s for s in (
    AdapterSpec(BASE, None, _FULL),
    AdapterSpec("lora", "lora", _ADAPTER, ("--lora_r", "{LORA_R:8}", "--lora_alpha", "{LORA_ALPHA:16}"),
                untrained=_ADAPTS),
    AdapterSpec("xgblora", "xgblora", _ADAPTER,
                ("--xgblora_rank", "{XGBLORA_RANK:1}", "--lora_alpha", "{LORA_ALPHA:16}",
                 "--xgblora_steps_per_iteration", "{XGBLORA_STEPS:1000}", "--xgblora_num_layers", "{XGBLORA_LAYERS:0}"),
                tag="xgblora-k{XGBLORA_STEPS:1000}", untrained=_ADAPTS),
    AdapterSpec("prefix", "prefix_tuning", _PREFIX,
                ("--num_prefix", "{NUM_PREFIX:5}", "--no_reparam", "--prefix_init_by_real_act"),
                untrained="nothing would train the prefix"),
    AdapterSpec("head", "head_tuning", _FULL, untrained="nothing would train the head"),
)}

ZO_METHODS: dict[str, ZoSpec] = {s.name: s for s in (ZoSpec("sgd"), ZoSpec("momentum"), ZoSpec("adam"))}


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


def defaults(mode: str, driver: str, zo: str = "sgd") -> Defaults:
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


def script_variables(path: Path, seen: set | None = None) -> set[str]:
    """The environment variables the shell script at ``path`` reads (``${VAR:-default}`` and its kin), with those
    of the scripts it sources or runs by a literal path (``source "$HERE/common.sh"``, taken from its folder) and,
    when it resolves a mode (``mode_args``), the modes' own (``driver_variables``)."""
    path, seen = Path(path).resolve(), set() if seen is None else seen
    if path in seen or not path.is_file():
        return set()
    seen.add(path)
    text = path.read_text(encoding="utf-8")
    found = set(_READ.findall(text)) | (driver_variables() if _RESOLVES_MODE.search(text) else set())
    for relative in _CALLED.findall(text):
        found |= script_variables(path.parent / relative.lstrip("/"), seen)
    return found


def all_script_variables() -> set[str]:
    """What every shell driver of the repository reads (``script_variables`` of each)."""
    return {v for folder in DRIVER_FOLDERS for script in (REPO / folder).glob("*.sh") for v in script_variables(script)}


def driver_assignments(mode: str, driver: str, env: dict[str, str]) -> str:
    """Shell assignments of ``MODE_ARGS`` (run.py flags), ``MODE_TAG``, ``DEFAULT_LR`` and ``DEFAULT_EPS``."""
    spec, chosen = adapter(mode), defaults(mode, driver)
    flags = [*spec.selection(), *(expand(a, env) for a in spec.driver_args)]
    return "\n".join((f"MODE_ARGS=({' '.join(shlex.quote(f) for f in flags)})",
                      f"MODE_TAG={shlex.quote(expand(spec.tag or spec.name, env))}",
                      f"DEFAULT_LR={shlex.quote(chosen.lr)}", f"DEFAULT_EPS={shlex.quote(chosen.eps)}"))


def main(argv: list[str]) -> int:
    """The drivers' command (see the module docstring); an unknown name prints the error and returns 2."""
    commands = {"modes": lambda: " ".join(ADAPTERS),
                "defaults": lambda mode, driver, zo="sgd": "LR={0.lr} EPS={0.eps}".format(defaults(mode, driver, zo)),
                "driver": lambda mode, driver: driver_assignments(mode, driver, dict(os.environ)),
                "variables": lambda script=None: " ".join(sorted(script_variables(script) if script
                                                                  else all_script_variables()))}
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
