"""The run's derived settings, decided in one module, and the parsed arguments frozen after parsing.

Two moments, because the inputs arrive at two moments:

- ``derive_flags``, from ``EngineArguments.__post_init__``: what the flags alone decide (``keep_best_model``,
  ``checkpoints_kept``, ``max_grad_norm`` 0 for zo, the mode's DDP setting, ``use_cpu`` under torchrun without CUDA, float32 instead of
  float16 on a CPU). It must run before TrainingArguments' own ``__post_init__``, which validates
  ``load_best_model_at_end`` and sets up the devices from these values; the result name's hash reads them.
- ``resolve``, once the app has loaded the model and drawn the train set: the output folder of this train set,
  the eval strategy (off without dev examples) and the app's values that need the model (``--max_length`` capped
  to its positions). It returns a frozen copy of the parsed arguments with these set: what the Trainer, the
  pipeline and the result's ``config`` read.

An app freezes its parsed arguments (``freeze``) right after parsing; setting a flag on frozen arguments raises
``FrozenArgumentsError``, so no code changes a setting after it was resolved.
"""
from __future__ import annotations

import copy
import logging
import warnings

import torch
from transformers.trainer_utils import IntervalStrategy

from mezo_engine import methods

logger = logging.getLogger("run")

# What TrainingArguments' lazy device setup and the HF Trainer write on the arguments they are handed.
TRAINER_WRITES = frozenset({"distributed_state", "_n_gpu", "gradient_accumulation_steps",
                            "per_device_train_batch_size", "hf_deepspeed_config", "deepspeed_plugin"})


class FrozenArgumentsError(AttributeError):
    """Code set a flag on frozen arguments; derived settings belong in ``run_config``."""


def derive_flags(args, world_size: int) -> None:
    """The settings the flags alone decide, set once while the arguments are built (see the module's note)."""
    if args.load_float16 and not torch.cuda.is_available():
        warnings.warn("--load_float16 without CUDA: loading in float32 instead (fp16 matmuls on CPU are slow "
                      "and imprecise)", stacklevel=3)
        args.load_float16 = False
    args.output_dir_given = args.output_dir is not None  # else the app derives it from the run's name
    # The best dev model is tracked in memory (see trainer.BestModelCallback): the Trainer's own reload from a
    # checkpoint would restore only the adapter of a PEFT model and lose every merged booster.
    args.keep_best_model = args.load_best_model_at_end
    args.load_best_model_at_end = False
    # Old checkpoints are rotated by checkpoint.RunStateCallback once the new one is complete (run_state.pt
    # written); the Trainer would rotate them before that.
    args.checkpoints_kept = args.save_total_limit
    args.save_total_limit = None
    if args.trainer == "zo":
        args.max_grad_norm = 0.0  # zo has no gradients to clip; also keeps a meaningless grad_norm out of logs
    methods.resolve(args)
    if world_size > 1 and not torch.cuda.is_available():
        args.use_cpu = True  # accelerate runs torchrun's ranks on the CPU (gloo) only when told so


def freeze(args):
    """Make ``args`` read-only (but for ``TRAINER_WRITES``) and return it."""
    object.__setattr__(args, "_frozen", True)
    return args


def check_settable(args, name: str) -> None:
    """Raise FrozenArgumentsError if ``args`` is frozen and ``name`` is not one the Trainer itself writes."""
    if args.__dict__.get("_frozen") and name not in TRAINER_WRITES:
        raise FrozenArgumentsError(f"args.{name}: the arguments are frozen after parsing; derive settings in "
                                   f"mezo_engine/run_config.py")


def run_values(args, output_dir: str, has_dev: bool) -> dict:
    """The run-time derived settings the engine decides: this train set's output folder, and no evaluation during
    training when a trained run has no dev examples."""
    values = {"output_dir": output_dir}
    if args.trainer != "none" and not has_dev and args.eval_strategy != IntervalStrategy.NO:
        logger.warning("no dev examples: evaluation during training is off")
        values["eval_strategy"] = IntervalStrategy.NO
    return values


def resolve(args, output_dir: str, has_dev: bool, **app_values):
    """A frozen copy of the parsed ``args`` with the run's derived settings set (``run_values``, then the app's
    own, e.g. ``max_length`` capped to the model): the one object the run reads from here on."""
    run = copy.copy(args)
    for name, value in {**run_values(args, output_dir, has_dev), **app_values}.items():
        object.__setattr__(run, name, value)
    return freeze(run)
