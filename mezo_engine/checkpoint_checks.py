"""Whether a run may continue from a checkpoint: the checks made before anything of it is loaded.

A checkpoint fails in one of two ways, and the two are treated differently:

* **damaged** (``DamagedCheckpoint``): a file missing, truncated or unreadable, or holding tensors, optimizer
  groups or callback states that do not fit this run's model. ``--resume_from_checkpoint auto`` walks back past it
  to the newest checkpoint that passes (``checkpoint.resolve_resume``);
* **mismatched** (``MismatchedCheckpoint``): made by a run with other settings, so continuing would train one run
  and report another. Always refused, ``auto`` too: every checkpoint of that run would mismatch the same way.

The settings compared are those the result name is hashed over (``results.hashed_settings``), plus the mode: a
resumed run may change exactly the settings left out of the name (``results.NOT_IN_HASH``: where it writes, how it
logs and checkpoints, the stopping budgets), so the two lists cannot drift apart. One setting has its own rule:
``--max_steps`` may change if the schedules that read it (the learning rate, n-SPSA's number of directions) take
the same values up to the checkpoint's step with either value, so that the resumed run is the run that was given
the new value from the start; never to below the checkpoint's step.

Each check is a function of the checkpoint's files and of what the run expects (``Expected``); it returns the
problem as a phrase, or None.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors import safe_open
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mezo_engine.zo_methods.spsa import num_samples

logger = logging.getLogger(__name__)

RUN_STATE = "run_state.pt"
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "adapter_model.bin", "pytorch_model.bin")
OPTIMIZER = "optimizer.pt"
MODE = "mode"  # the key of the run's mode among the recorded settings (not a flag: set by --lora, --xgblora, ...)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names it and says why."""


class DamagedCheckpoint(CheckpointError):
    """Incomplete or unreadable, or not fitting this run's model: ``auto`` walks back past it."""


class MismatchedCheckpoint(CheckpointError):
    """Made with other settings or another base model: refused, ``auto`` too."""


@dataclass
class Expected:
    """What this run needs of a checkpoint. ``settings``: its recorded settings (``run_settings``);
    ``defaults``: a setting's value where the settings leave it out; ``schedule_changes(old, new, step)``: the
    flags whose schedules differ up to ``step`` between ``--max_steps`` old and new (``schedule_changes``);
    ``weights``: name -> shape of what the Trainer saves of the model; ``optimizer``: the shapes of each group's
    parameters (None: the Trainer's own optimizer, not checked); ``callbacks``: stateful callback -> the keys of
    its state; ``base``: LoRA layer -> shape of its base weight; ``base_sha256``: the base model's fingerprint."""

    settings: dict
    defaults: dict
    schedule_changes: Callable[[int, int, int], list[str]]
    weights: dict[str, tuple[int, ...]] = field(default_factory=dict)
    optimizer: list[list[tuple[int, ...]]] | None = None
    callbacks: dict[str, set[str]] = field(default_factory=dict)
    base: dict[str, tuple[int, ...]] = field(default_factory=dict)
    base_sha256: str | None = None


def canonical(settings: dict) -> dict:
    """``settings`` as JSON would give them back (enums as their strings, tuples as lists): what a checkpoint
    stores, so that a setting compares equal to itself after the round trip."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def check(folder: Path, expected: Expected) -> dict:
    """The run state of ``folder`` if this run may continue from it; raise DamagedCheckpoint or
    MismatchedCheckpoint with the problem (one phrase; the caller names the folder) otherwise."""
    state = read_run_state(folder)
    step = checkpoint_step(folder)
    if problem := mismatch(state, expected, step):
        raise MismatchedCheckpoint(problem)
    if problem := next(filter(None, damage(folder, state, expected)), None):
        raise DamagedCheckpoint(problem)
    return state


def read_run_state(folder: Path) -> dict:
    """``run_state.pt`` of ``folder``, loaded; DamagedCheckpoint if it is absent, unreadable or not a run state."""
    if not folder.is_dir():
        raise DamagedCheckpoint("not a folder")
    if not (folder / RUN_STATE).is_file():
        raise DamagedCheckpoint(f"no {RUN_STATE} (not a checkpoint of run.py, or one cut short)")
    try:
        state = torch.load(folder / RUN_STATE, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a damaged file raises whatever the unpickler meets first
        raise DamagedCheckpoint(f"{RUN_STATE} cannot be read (truncated or damaged: {_first_line(err)})") from None
    if not isinstance(state, dict) or not {"identity", "callbacks"} <= state.keys():
        raise DamagedCheckpoint(f"{RUN_STATE} is not a run state (no identity or callbacks)")
    return state


def checkpoint_step(folder: Path) -> int:
    """The step of a checkpoint: ``global_step`` in its ``trainer_state.json`` (DamagedCheckpoint if that file is
    missing or unreadable, or disagrees with a ``checkpoint-<step>`` folder name)."""
    try:
        step = int(json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))["global_step"])
    except FileNotFoundError:
        raise DamagedCheckpoint(f"no {TRAINER_STATE}") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise DamagedCheckpoint(f"{TRAINER_STATE} cannot be read ({_first_line(err)})") from None
    named = named_step(folder)
    if named is not None and named != step:
        raise DamagedCheckpoint(f"{TRAINER_STATE} says step {step}, the folder's name step {named}")
    return step


def named_step(folder: Path) -> int | None:
    """The N of a folder named ``checkpoint-N`` (None for any other name)."""
    named = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", folder.name)
    return int(named.group(1)) if named else None


def _first_line(err: BaseException) -> str:
    """The first sentence of an error's message (some libraries add paragraphs of advice), at most 160 chars."""
    text = str(err).strip().splitlines()
    return (text[0].split(". ")[0] if text else type(err).__name__)[:160]


# ---- mismatches: settings, max_steps, base model ---------------------------------------------------------------
def mismatch(state: dict, expected: Expected, step: int) -> str | None:
    """Why a run with ``expected.settings`` must not continue from a checkpoint of ``state`` at ``step``, or None.
    A checkpoint written before settings were recorded is compared by its base model only (with a warning)."""
    saved = state.get("settings")
    if saved is None:
        logger.warning("this checkpoint records no settings (written by an older version): they are not checked")
    elif problem := settings_problem(differences(saved, expected.settings, expected.defaults), step,
                                     expected.schedule_changes):
        return problem
    identity = state["identity"]
    if identity.get("base_sha256") != expected.base_sha256:  # the path may move; the weights may not
        return (f"made from another base model (model {identity.get('model_name')}, base weights sha256 "
                f"{str(identity.get('base_sha256'))[:12]}); this run's base weights have sha256 "
                f"{str(expected.base_sha256)[:12]}")
    return None


def differences(saved: dict, current: dict, defaults: dict) -> dict[str, tuple[Any, Any]]:
    """Setting -> (checkpoint's value, this run's value) for each setting whose values differ; a setting absent
    from one side has its default there (``hashed_settings`` leaves out the settings at their default)."""
    saved, current = canonical(saved), canonical(current)
    shown = canonical({k: defaults.get(k) for k in saved.keys() | current.keys()})
    return {k: (saved.get(k, shown[k]), current.get(k, shown[k])) for k in sorted(saved.keys() | current.keys())
            if saved.get(k, shown[k]) != current.get(k, shown[k])}


def _steps(value: Any) -> bool:
    return isinstance(value, int) and value > 0


def settings_problem(differ: dict[str, tuple[Any, Any]], step: int,
                     changes: Callable[[int, int, int], list[str]]) -> str | None:
    """Why the settings ``differ`` (``differences``) forbid continuing at ``step``, or None: any difference but
    in ``--max_steps``, and a change of ``--max_steps`` that ``max_steps_problem`` refuses."""
    if not differ:
        return None
    old, new = differ.get("max_steps", (None, None))
    if set(differ) != {"max_steps"} or not (_steps(old) and _steps(new)):
        return settings_message(differ)  # an unset --max_steps (an epoch count decides) is a plain difference
    problem = max_steps_problem(old, new, step, changes)
    if problem is None:
        logger.info("--max_steps %s -> %s: the schedules agree up to step %d; the run goes on", old, new, step)
    return problem


def max_steps_problem(old: int, new: int, step: int, changes: Callable[[int, int, int], list[str]]) -> str | None:
    """Why ``--max_steps`` may not go from ``old`` (the checkpoint's) to ``new`` at ``step``, or None."""
    if new < step:
        return f"--max_steps {new} is below the checkpoint's step {step}; give --max_steps {step} or more"
    changed = changes(old, new, step)
    if changed:
        return (f"--max_steps {new} (checkpoint: {old}): with {' and '.join(changed)} the schedule up to step "
                f"{step} depends on --max_steps, so this would not be the run given --max_steps {new}; keep "
                f"--max_steps {old}, or use a schedule that does not depend on it (--lr_scheduler_type constant)")
    return None


def settings_message(differ: dict[str, tuple[Any, Any]]) -> str:
    """One line listing each differing setting with the checkpoint's value and this run's, the mode first."""
    order = sorted(differ, key=lambda k: (k != MODE, k))
    listed = ", ".join(f"{_flag(k)} {_shown(differ[k][0])} -> {_shown(differ[k][1])}" for k in order)
    what = "another mode" if MODE in differ else "other settings"
    return (f"made with {what} (checkpoint -> this run: {listed}); a resumed run may change only the settings "
            f"left out of the result name (results.NOT_IN_HASH): give the checkpoint's values or start a new run")


def _flag(name: str) -> str:
    return name if name == MODE else f"--{name}"


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# ---- damage: files, tensors, optimizer groups, callback states -------------------------------------------------
def damage(folder: Path, state: dict, expected: Expected) -> Iterator[str | None]:
    """The result of each check of ``folder`` against this run (its run state ``state`` already read), in turn:
    the problem, or None; the caller stops at the first problem."""
    yield weights_problem(folder, expected.weights)
    yield optimizer_problem(folder, expected.optimizer)
    yield None if (folder / "scheduler.pt").is_file() else "no scheduler.pt"
    yield callbacks_problem(state, expected.callbacks)
    yield merges_problem(state, expected.base)


def weights_problem(folder: Path, expected: dict[str, tuple[int, ...]]) -> str | None:
    """Whether the Trainer's weight file is there, readable, and holds this run's tensors with their shapes."""
    found = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if found is None:
        if _other_format(folder, "pytorch_model_fsdp", ".index.json"):
            return None  # sharded or FSDP weights: the Trainer reads them; their shapes are not checked here
        return f"no model weights (none of {', '.join(WEIGHT_FILES)})"
    try:
        shapes = tensor_shapes(found)
    except Exception as err:  # noqa: BLE001 - safetensors and torch raise their own errors for a damaged file
        return f"{found.name} cannot be read (truncated or damaged: {_first_line(err)})"
    return shapes_problem(found.name, shapes, expected)


def _other_format(folder: Path, prefix: str, suffix: str | None) -> bool:
    """Whether ``folder`` holds an entry named ``prefix...`` or ``...suffix`` (the Trainer's other layouts)."""
    return any(p.name.startswith(prefix) or (suffix and p.name.endswith(suffix)) for p in folder.iterdir())


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of each tensor in a safetensors or torch file, without reading the tensors' data."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return {k: tuple(v.shape) for k, v in torch.load(path, map_location="cpu", mmap=True, weights_only=True).items()}


def shapes_problem(name: str, shapes: dict, expected: dict) -> str | None:
    """Whether ``shapes`` (a weight file's) hold every tensor of ``expected`` with its shape."""
    missing = [k for k in expected if k not in shapes]
    if missing:
        return f"{name} lacks {len(missing)} of this run's {len(expected)} tensors ({missing[0]}, ...)"
    wrong = next((k for k in expected if tuple(shapes[k]) != tuple(expected[k])), None)
    if wrong:
        return (f"{name}: {wrong} has shape {list(shapes[wrong])}, this run's model {list(expected[wrong])} "
                f"(another --lora_r or model?)")
    return None


def optimizer_problem(folder: Path, expected: list[list[tuple[int, ...]]] | None) -> str | None:
    """Whether the optimizer state is there, readable, and has this run's groups and parameter shapes."""
    found = folder / OPTIMIZER
    if not found.is_file():
        if _other_format(folder, "optimizer", None):
            return None  # an FSDP optimizer state (optimizer.bin, optimizer_0/): not checked here
        return f"no {OPTIMIZER} (a checkpoint saved with --save_only_model cannot be continued exactly)"
    if expected is None:
        return None
    try:
        saved = torch.load(found, map_location="cpu", mmap=True, weights_only=True)
        groups = [len(g["params"]) for g in saved["param_groups"]]
    except Exception as err:  # noqa: BLE001
        return f"{found.name} cannot be read (truncated or damaged: {_first_line(err)})"
    if groups != [len(g) for g in expected]:
        return (f"{found.name} holds parameter groups of {groups} parameters, this run's optimizer "
                f"{[len(g) for g in expected]}")
    return buffers_problem(found.name, saved["state"], [s for g in expected for s in g])


# Optimizer buffers the size of their parameter (momentum, Adam's moments, HiZOO's Hessian); others, such as
# LOZO-M's factored momentum (m x r), have shapes of their own and are not compared.
FULL_SIZE_BUFFERS = frozenset({"momentum_buffer", "exp_avg", "exp_avg_sq", "hessian_minus_one"})


def buffers_problem(name: str, state: dict, shapes: list[tuple[int, ...]]) -> str | None:
    """Whether each saved full-size optimizer buffer (``FULL_SIZE_BUFFERS``) has its parameter's shape; ``state``
    maps a parameter's index (groups in order) to its buffers, ``shapes`` lists the parameters' shapes in order."""
    for index, buffers in state.items():
        shape = shapes[index] if 0 <= index < len(shapes) else None
        for key, value in buffers.items():
            if key in FULL_SIZE_BUFFERS and torch.is_tensor(value) and value.dim() and tuple(value.shape) != shape:
                return f"{name}: buffer {key} of parameter {index} has shape {list(value.shape)}, the parameter " \
                       f"{list(shape) if shape else 'does not exist'}"
    return None


def callbacks_problem(state: dict, expected: dict[str, set[str]]) -> str | None:
    """Whether the run state holds a state, with every key, for each of this run's stateful callbacks."""
    saved = state["callbacks"]
    for name, keys in expected.items():
        if name not in saved:
            return f"{RUN_STATE} has no state for the {name!r} callback"
        if missing := sorted(keys - set(saved[name])):
            return f"{RUN_STATE}: the state of the {name!r} callback lacks {', '.join(map(repr, missing))}"
    return None


def merges_problem(state: dict, base: dict[str, tuple[int, ...]]) -> str | None:
    """Whether every recorded merge (or stored base weight) names a LoRA layer of this run with its shape."""
    if "base_weights" in state:
        return shapes_problem(f"{RUN_STATE}'s base weights", {k: tuple(v.shape) for k, v in
                                                               state["base_weights"].items()}, base)
    for i, merge in enumerate(state.get("merges", [])):
        if not {"module", "A", "B", "scaling", "fan_in_fan_out", "coeff"} <= merge.keys():
            return f"{RUN_STATE}: merge {i} lacks some of module, A, B, scaling, fan_in_fan_out, coeff"
        if merge["module"] not in base:
            return f"{RUN_STATE}: merge {i} is into {merge['module']!r}, not a LoRA layer of this run"
        shape = (merge["B"].shape[0], merge["A"].shape[1])
        if shape not in (base[merge["module"]], base[merge["module"]][::-1]):
            return (f"{RUN_STATE}: merge {i} into {merge['module']} has shape {list(shape)}, the layer "
                    f"{list(base[merge['module']])}")
    return None


# ---- what this run expects -------------------------------------------------------------------------------------
def saved_weight_shapes(model) -> dict[str, tuple[int, ...]]:
    """Name -> shape of what the Trainer writes of ``model`` into a checkpoint: a PEFT model's active adapter, or
    every parameter of any other model (tied ones once)."""
    if isinstance(model, PeftModel):
        return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def lr_factors(args, max_steps: int, steps: int) -> list[float] | None:
    """The learning-rate factor of each of the first ``steps`` steps, as the Trainer's scheduler sets it for a run
    of ``max_steps`` (None for a schedule that is not a function of the step, such as reduce_lr_on_plateau)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(max_steps),
                              num_training_steps=max_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    if not isinstance(scheduler, LambdaLR):
        return None
    return [scheduler.lr_lambdas[0](s) for s in range(steps)]


def schedule_changes(args, old: int, new: int, step: int) -> list[str]:
    """The flags whose schedules differ between ``--max_steps`` old and new over the steps a run resumed at
    ``step`` took on the old one: the learning rate through step ``step`` itself (its value is in the saved
    optimizer), n-SPSA's number of directions before it (1 at every step unless --trainer zo asks for more)."""
    changed = []
    old_lr = lr_factors(args, old, step + 1)
    if old_lr is None or old_lr != lr_factors(args, new, step + 1):
        changed.append(f"--lr_scheduler_type {getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}")
    samples = [[num_samples(args.zo_sample_scheduler, args.zo_num_samples, s, m) for s in range(step)]
               for m in (old, new)]
    if samples[0] != samples[1]:
        changed.append(f"--zo_sample_scheduler {args.zo_sample_scheduler}")
    return changed
