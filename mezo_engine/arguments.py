"""The flags every app shares: MeZO's training flags (same names, same defaults) on top of TrainingArguments.

``EngineArguments`` holds what the engine reads (model loading, trainer, zo step and optimizers, the training
modes, outputs); each app subclasses it with its task and data flags (``large_models.arguments.Arguments``,
``medium_models.arguments.Arguments``) and adds its own checks in ``_task_problems``. Every check happens once, in
``__post_init__``; all problems are collected and raised together as one error that names each flag and its bad
value. The settings derived from the flags are decided in ``run_config`` (the flags alone, here; those that need
the model or the train set, once those are known), and an app freezes its arguments right after parsing.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import IntervalStrategy

from mezo_engine import divergence, methods, registry, run_config, zo_methods
from mezo_engine.ledger import Budget
from mezo_engine.zo_methods import spsa



# Upstream MeZO's names (medium_models) -> ours; run.py accepts both.
ALIASES = {"zero_order_sample": "zo_num_samples", "zero_order_sample_scheduler": "zo_sample_scheduler",
           "max_zo_forward_steps": "max_forwards"}
# Flags only --trainer zo reads besides each ZO method's own: a non-default value with another trainer would be
# silently ignored.
ZO_STEP_FLAGS = ("zo_num_samples", "zo_sample_scheduler", "zo_perturb", "zo_stall_timeout", "zo_weight_decay_all",
                 "zo_pair_batched", "zo_reuse_activations")


class ArgumentError(ValueError):
    """Bad command-line input; the message names every offending flag and value."""


def launched_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    value = os.environ.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() else 1


def int8_trains(mode: type, cuda: bool) -> bool:
    """Whether ``mode`` can train beside 8-bit base weights: one that leaves the base frozen (``frozen_base``), or
    on the CPU any adapter mode (the CPU path keeps the layers a merge writes into float32: ``Mode.merged_bases``)."""
    return getattr(mode, "frozen_base", False) or (not cuda and getattr(mode, "adapter", False))


@dataclass
class EngineArguments(TrainingArguments, *methods.FLAGS, *zo_methods.FLAGS):
    """The shared flags: these, TrainingArguments' and each method's flag dataclass (``methods.FLAGS``,
    ``zo_methods.FLAGS``), in one flat namespace."""

    # ---- results -------------------------------------------------------------------------------------------
    result_file: str | None = field(default=None, metadata={
        "help": "Where to write the result JSON (default: <result_dir>/<task>-<model>-<tag>-<config hash>.json)."})
    result_dir: str | None = field(default=None, metadata={
        "help": "Folder of default-named results (default: result/ at the repository root)."})
    # ---- model ---------------------------------------------------------------------------------------------
    model_name: str = field(default="facebook/opt-125m", metadata={
        "help": "Hub id, local HF directory, .gguf file, or an offline alias (smollm2-135m)."})
    load_float16: bool = field(default=False, metadata={"help": "Load the model in float16 (CUDA only; float32 on CPU)."})
    load_bfloat16: bool = field(default=False, metadata={"help": "Load the model in bfloat16."})
    load_float64: bool = field(default=False, metadata={
        "help": "Load the model in float64: slow; for numerical checks on tiny models (the tests compare "
                "differently batched runs in it). The Trainer still logs losses through float32, and models whose "
                "norms cast to float32 (LLaMA's RMSNorm in transformers) round there."})
    load_int8: bool = field(default=False, metadata={
        "help": "Linear weights in 8 bits, for evaluation and adapter training. On CUDA: bitsandbytes LLM.int8() (as "
                "upstream MeZO), with --lora or --prefix_tuning (no merges). On the CPU: every frozen linear layer "
                "but the LM head becomes int8 (mezo_engine/int8.py) once the adapters are attached; --lora, "
                "--xgblora, --prefix_tuning; the layers merges write into stay float32, and adapters run unfolded."})
    no_auto_device: bool = field(default=False, metadata={
        "help": "Do not spread the model over the GPUs with device_map='auto' (upstream MeZO's flag). By default, on "
                "a CUDA machine and in a single process, the model is split over every GPU, each capped at its free "
                "memory less 5 GiB, and what does not fit stays in CPU memory and runs there (trained in place). "
                "Under torchrun (DDP, FSDP) each rank holds its own copy and auto placement is always off."})
    # ---- training ------------------------------------------------------------------------------------------
    trainer: Literal["none", "regular", "zo"] = field(default="none", metadata={
        "help": "none: zero-shot / in-context evaluation; regular: backprop fine-tuning; zo: MeZO."})
    zo_eps: float = field(default=1e-3, metadata={"help": "MeZO perturbation scale eps."})
    zo_stall_timeout: float = field(default=600.0, metadata={
        "help": "zo under torchrun: seconds a rank waits in the zo step's all-reduce (and the ranks' agreement "
                "after each step) before it ends the job, naming the ranks that did not answer, with exit status 75 "
                "(resume from the latest checkpoint). The first step and the step after a checkpoint save or a dev "
                "evaluation wait as long as the process group allows (--ddp_timeout), so slow loads and long "
                "saves are not cut short. 0: no bound."})
    zo_fold_adapters: bool = field(default=True, metadata={
        "help": "zo with LoRA/XGBLoRA: run each adapted layer as one matmul with W + s B A (lora.folded_adapters) "
                "instead of PEFT's adapter path; same losses within float rounding, base weights bit-identical. "
                "Layers over an 8-bit base (--load_int8) keep PEFT's path: W + s B A would be a float copy."})
    zo_reuse_activations: bool = field(default=True, metadata={
        "help": "zo: the forwards of one step compute what lies below the lowest perturbed block once and reuse "
                "it (mezo_engine/activation_reuse.py): the same losses bit for bit, one activation of the batch "
                "kept during the step. Pays where nothing low is perturbed: --head_tuning --untie_emb, LoRA or "
                "XGBLoRA on upper blocks (--lora_layers); a no-op otherwise."})
    zo_perturb: Literal["in_place", "out_of_place"] = field(default="in_place", metadata={
        "help": "How a full-parameter zo step perturbs the weights. in_place (MeZO's way): theta += eps z, "
                "-= 2 eps z, += eps z in place, then the update; in fp16/bf16 the restore by arithmetic drifts a "
                "few ulps a step. out_of_place: forward hooks form each module's W + eps z just before it runs and "
                "drop it after, so the weights change only in the update (float64, rounded once to the dtype); z is "
                "drawn per parameter (another stream than in_place). Full-parameter ZO-SGD with one direction only "
                "(docs/zo_precision.md)."})
    zo_optimizer: str = field(default="sgd", metadata={
        "help": "The ZO method (zo_methods/: sgd, momentum, adam, and any registered): sgd = MeZO's ZO-SGD (no "
                "state; one seed: the fused step); momentum = ZO-SGD with momentum --zo_momentum (one extra buffer "
                "the size of the trainable parameters); adam = MeZO-Adam with --adam_beta1 --adam_beta2 "
                "--adam_epsilon (two buffers); lozo, lozo_m, subzero = low-rank directions in lazily refreshed "
                "per-matrix subspaces (docs/zo-methods.md). Upstream: large_models trains ZO-SGD only; "
                "medium_models' --optimizer sgd|adam (default adam) with --zero_order_use_trainer_optim."})
    zo_weight_decay_all: bool = field(default=False, metadata={
        "help": "zo with --weight_decay: decay every trained parameter, biases and norm weights too, as upstream "
                "MeZO's medium_models (its step subtracts lr * wd * theta from each; medium_models/run.py's "
                "default). Default here: only those the Trainer decays (not biases or norm weights), as upstream "
                "large_models."})
    zero_order_sample: int | None = field(default=None, metadata={"help": "Alias of --zo_num_samples (upstream name)."})
    zero_order_sample_scheduler: Literal["constant", "linear"] | None = field(default=None, metadata={
        "help": "Alias of --zo_sample_scheduler (upstream name)."})
    # ---- budgets (mezo_engine/ledger.py) -------------------------------------------------------------------
    max_forwards: int = field(default=0, metadata={
        "help": "Stop training after the first step at which the run has made this many training forwards (one "
                "forward: one pass over a batch; a ZO-SGD step costs 2, n-SPSA 2n, a backprop micro-batch 1), "
                "save a checkpoint, evaluate, and record status 'budget reached' (0: no limit). --max_steps stays "
                "the schedule's horizon; a larger budget continues the run from its checkpoint."})
    max_zo_forward_steps: int | None = field(default=None, metadata={
        "help": "Alias of --max_forwards (upstream name)."})
    max_time: float = field(default=0.0, metadata={
        "help": "Stop training, as --max_forwards does, once the training steps have taken this many wall-clock "
                "seconds, summed over resumed processes; evaluation and checkpoint saving do not count (0: no "
                "limit)."})
    eval_forwards: int = field(default=0, metadata={
        "help": "Also evaluate on dev after each step at which the training forwards pass a multiple of this "
                "number (0: only --eval_steps' schedule): runs whose steps cost different numbers of forwards are "
                "then compared at the same forwards. Needs --eval_strategy steps (give a large --eval_steps to "
                "evaluate on forwards alone)."})
    # ---- the training mode ---------------------------------------------------------------------------------
    method: str | None = field(default=None, metadata={
        "help": "A registered training mode without a flag of its own (methods.METHODS; the built-in modes are "
                "selected by MeZO's flags: --lora, --xgblora, --prefix_tuning, --head_tuning; none: ft)."})
    # ---- output --------------------------------------------------------------------------------------------
    save_model: bool = field(default=False, metadata={"help": "Save the trained model (merged) and adapters to output_dir."})
    best_dev_ties: Literal["later", "first"] = field(default="later", metadata={
        "help": "With --load_best_model_at_end, which of equal best dev scores is kept: later (the default here: "
                "the model trained longer) or first (upstream MeZO's and the Trainer's rule; medium_models' "
                "default)."})
    eval_last_model: bool = field(default=False, metadata={
        "help": "With --load_best_model_at_end, also evaluate the model of the last training step (before the best "
                "dev model is restored) on the eval set: result key eval_last (its metric, per-example scores and "
                "step), beside eval (the best dev model's)."})
    no_eval: bool = field(default=False, metadata={"help": "Skip the final evaluation."})
    tag: str = field(default="", metadata={"help": "Tag for the result file name."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace an existing completed result at the result path (default: refuse before loading anything)."})
    save_on_interrupt: bool = field(default=False, metadata={
        "help": "On SIGUSR1 or SIGINT (as upstream MeZO): stop after the current step, save the model (as "
                "--save_model) and a checkpoint, exit 75."})
    merge_warn_ratio: float = field(default=1.0, metadata={
        "help": "Warn when a merge adds a delta with |dW| above this multiple of |W| (0: never warn)."})
    diverge_loss_ratio: float = field(default=10.0, metadata={
        "help": "Stop as diverged when a logged training loss exceeds this multiple of the first logged loss "
                "(0: never; docs/troubleshooting.md)."})
    diverge_zero_grad_steps: int = field(default=20, metadata={
        "help": "zo: stop as diverged when the projected gradient is exactly 0 for this many consecutive steps "
                "(0: never)."})
    diverge_grad_norm_ratio: float = field(default=1000.0, metadata={
        "help": "regular: stop as diverged when a logged grad_norm exceeds this multiple of the first logged one "
                "(0: never)."})
    verbose: bool = field(default=False, metadata={"help": "Print prompts and per-example predictions."})
    evaluation_strategy: str | None = field(default=None, metadata={"help": "Alias of --eval_strategy (older transformers)."})
    # ---- TrainingArguments defaults that differ for this project ------------------------------------------
    output_dir: str | None = field(default=None, metadata={
        "help": "Trainer output (checkpoints, saved model); default: the result path without '.json', one per run."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpointing (default: none; the best dev model is kept in memory)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the collator's extra columns."})

    def __post_init__(self):
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        problems = self._copy_aliases() + list(self._problems())
        if problems:
            raise ArgumentError("invalid arguments:\n  " + "\n  ".join(problems))
        run_config.derive_flags(self, launched_world_size())
        super().__post_init__()

    def __setattr__(self, name, value):
        run_config.check_settable(self, name)  # frozen after parsing (run_config.freeze)
        super().__setattr__(name, value)

    def to_dict(self) -> dict:
        """The resolved flags, with ``--load_best_model_at_end`` as the user gave it (the Trainer is handed False
        because ``BestModelCallback`` keeps the best model; that value is under ``trainer_load_best_model_at_end``)
        and ``--save_total_limit`` too (the Trainer is handed None: ``RunStateCallback`` rotates checkpoints)."""
        config = super().to_dict()
        config["load_best_model_at_end"] = getattr(self, "keep_best_model", config["load_best_model_at_end"])
        config["save_total_limit"] = getattr(self, "checkpoints_kept", config["save_total_limit"])
        config["trainer_load_best_model_at_end"] = self.load_best_model_at_end
        config["world_size"] = launched_world_size()  # the global batch is world_size x the per-device batch
        return config

    # -- derived --------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """The training mode's name (``registry.ADAPTERS``) from MeZO's mode flags or ``--method`` (``ft`` when
        none is given); with ``--linear_probing``: ``lp`` for the probe alone, ``lp-<mode>`` for training that
        starts from it."""
        chosen = [spec.name for spec in registry.ADAPTERS.values() if spec.flag and getattr(self, spec.flag)]
        base = chosen[0] if chosen else self.method or registry.BASE
        if not self.linear_probing:
            return base
        return "lp" if self.trainer == "none" else f"lp-{base}"

    @property
    def place_model_on_device(self) -> bool | None:
        """TrainingArguments' override point: False when run.py splits the model over the devices itself
        (``placement.py``: CUDA, one process, no ``--no_auto_device``), so the Trainer does not move it whole."""
        auto = torch.cuda.is_available() and not self.no_auto_device and launched_world_size() == 1
        return False if auto else None

    @property
    def learns(self) -> bool:
        """Whether the run learns from the training set (training or a linear probe); if not, the training
        examples are in-context demonstrations."""
        return self.trainer != "none" or self.linear_probing

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.load_float64:
            return torch.float64
        return torch.float16 if self.load_float16 else torch.bfloat16 if self.load_bfloat16 else torch.float32

    def _copy_aliases(self) -> list[str]:
        """Copy upstream's flag names into ours; a setting given under both names with two values is a problem."""
        problems, self.aliases_given = [], {}
        for alias, flag in ALIASES.items():
            value = getattr(self, alias)
            if value is None:
                continue
            current = getattr(self, flag)
            if not self._is_default(flag) and current != value:
                problems.append(f"--{alias} {value} and --{flag} {current}: the same setting twice; give one")
            setattr(self, flag, value)
            self.aliases_given[flag] = alias
        return problems

    def _problems(self):
        """Yield one message per bad flag value."""
        if not self.zo_eps > 0:
            yield f"--zo_eps {self.zo_eps}: must be > 0"
        if not self.zo_stall_timeout >= 0:
            yield f"--zo_stall_timeout {self.zo_stall_timeout}: must be >= 0 (0: no bound)"
        for flag in ("seed", "data_seed"):
            value = getattr(self, flag)
            if value is not None and not 0 <= value < 2 ** 32:
                yield f"--{flag} {value}: must be between 0 and 2**32 - 1 (numpy's seed range)"
        if sum((self.load_float16, self.load_bfloat16, self.load_float64)) > 1:
            given = [f for f in ("load_float16", "load_bfloat16", "load_float64") if getattr(self, f)]
            yield f"--{' and --'.join(given)}: choose one"
        yield from self._int8_problems()
        for flag in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, flag) < 1:
                yield f"--{flag} {getattr(self, flag)}: must be >= 1"
        yield from self._training_problems()
        yield from self._budget_problems()
        yield from self._eval_last_problems()
        yield from self._zo_problems()
        yield from self._mode_problems()
        yield from self._task_problems()

    def _task_problems(self):
        """The app's checks of its task and data flags (none here)."""
        return iter(())

    def _int8_problems(self):
        """8-bit base weights: under training only beside a mode that leaves them unchanged (``int8_trains``; on
        CUDA the modes that merge into the base say so in their own checks)."""
        if not self.load_int8:
            return
        modes = [registry.adapter(n) for n, m in methods.METHODS.items()
                 if int8_trains(m.mode, torch.cuda.is_available())]
        if self.trainer != "none" and not any(self._selects(spec) for spec in modes):
            given = "/".join(" ".join(spec.selection()) for spec in modes)
            yield (f"--load_int8 with --trainer {self.trainer} and no {given}: training would change "
                   "the 8-bit base weights themselves; train an adapter (--lora) or evaluate only (--trainer none)")

    def _selects(self, spec: registry.AdapterSpec) -> bool:
        """Whether the flags select ``spec``'s mode (its own flag, or ``--method``)."""
        return bool(getattr(self, spec.flag)) if spec.flag else self.method == spec.name

    def _training_problems(self):
        if self.trainer == "none":
            for spec in registry.ADAPTERS.values():
                if spec.selection() and self._selects(spec):
                    given = " ".join(spec.selection())
                    yield (f"{given} with --trainer none: {spec.untrained}; use --trainer zo or regular, "
                           f"or drop {given}")
            return
        if self.max_steps == 0 or self.max_steps < -1:
            yield (f"--max_steps {self.max_steps} with --trainer {self.trainer}: must be >= 1 "
                   f"(or -1 to train --num_train_epochs epochs)")
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            yield (f"--num_train_epochs {self.num_train_epochs} with --trainer {self.trainer}: must be > 0 "
                   f"(or give --max_steps >= 1)")
        if not self.learning_rate > 0:
            yield f"--learning_rate {self.learning_rate} with --trainer {self.trainer}: must be > 0"

    def _eval_last_problems(self):
        if not self.eval_last_model:
            return
        if self.trainer == "none" or not self.load_best_model_at_end:
            yield ("--eval_last_model needs training with --load_best_model_at_end: without a best dev model kept, "
                   "the last model is the one evaluated")
        if self.no_eval:
            yield "--eval_last_model with --no_eval: there is no evaluation to repeat; drop one of them"

    def _budget_problems(self):
        """``--max_forwards`` and ``--max_time``: 0 (no limit) or positive, and only where training runs."""
        for flag in ("max_forwards", "max_time"):
            value = getattr(self, flag)
            if not 0 <= value < float("inf"):
                yield f"{self._flag(flag)}: must be >= 0 (0: no limit)"
            elif value and self.trainer == "none":
                yield f"{self._flag(flag)} with --trainer none: a budget limits training; drop it"
        if self.eval_forwards < 0:
            yield f"--eval_forwards {self.eval_forwards}: must be >= 0 (0: evaluate on --eval_steps' schedule only)"
        elif self.eval_forwards and self.eval_strategy != IntervalStrategy.STEPS:
            yield (f"--eval_forwards {self.eval_forwards} with --eval_strategy {self.eval_strategy}: needs "
                   f"--eval_strategy steps")

    @property
    def budget(self) -> Budget:
        """The limits ``trainer.LedgerCallback`` stops training at."""
        return Budget(self.max_forwards, self.max_time)

    def _is_default(self, flag: str) -> bool:
        return getattr(self, flag) == type(self).__dataclass_fields__[flag].default

    def _flag(self, flag: str) -> str:
        """``--flag value`` as the user wrote it (upstream's alias if that is what was given)."""
        return f"--{self.aliases_given.get(flag, flag)} {getattr(self, flag)}"

    def _zo_problems(self):
        """The ZO step's flags and the ZO methods' (each method checks its own: ``zo_methods.method_problems``)."""
        yield from spsa.problems(self, self._flag)
        if self.zo_optimizer not in zo_methods.ZO_METHODS:
            yield f"--zo_optimizer {self.zo_optimizer}: unknown; known: {', '.join(zo_methods.ZO_METHODS)}"
            return
        yield from zo_methods.method_problems(self)
        if self.trainer != "zo":
            yield from self._zo_flags_unused()
            return
        for flag, users in zo_methods.flag_users().items():
            if self.zo_optimizer not in users and not self._is_default(flag):
                yield (f"--{flag} {getattr(self, flag)}: only --zo_optimizer {' or '.join(users)} uses it "
                       f"(not {self.zo_optimizer})")
        yield from spsa.zo_problems(self, self._flag)
        yield from self._perturb_problems()

    def _zo_flags_unused(self):
        """Flags only --trainer zo reads, given with another trainer."""
        own = list(zo_methods.flag_users())
        for flag in ("zo_optimizer", *own, *ZO_STEP_FLAGS):
            if not self._is_default(flag):
                yield (f"{self._flag(flag)} with --trainer {self.trainer}: only --trainer zo uses it; "
                       f"drop it or use --trainer zo")

    def _perturb_problems(self):
        """``--zo_perturb out_of_place``: full-parameter ZO-SGD with one direction per step."""
        if self.zo_perturb != "out_of_place":
            return
        if self.mode not in ("ft", "lp-ft"):
            yield (f"--zo_perturb out_of_place with {self.mode} training: for full-parameter training only (the "
                   f"small trainable sets of adapters, prefixes and heads are restored bit for bit already)")
        if not zo_methods.ZO_METHODS[self.zo_optimizer].out_of_place:
            able = ", ".join(name for name, cls in zo_methods.ZO_METHODS.items() if cls.out_of_place)
            yield (f"--zo_perturb out_of_place with --zo_optimizer {self.zo_optimizer}: only {able} (the ZO "
                   f"optimizers regenerate z from the in-place stream)")
        if self.zo_num_samples != 1:
            yield f"--zo_perturb out_of_place with {self._flag('zo_num_samples')}: one direction per step only"

    def _mode_problems(self):
        """The choice of mode; each mode's own checks (``methods.problems``); merges; distributed training."""
        yield from self._method_problems()
        yield from methods.problems(self)
        if not self.merge_warn_ratio >= 0:
            yield f"--merge_warn_ratio {self.merge_warn_ratio}: must be >= 0 (0: never warn)"
        yield from self._divergence_problems()
        if self.trainer == "zo" and self.gradient_accumulation_steps != 1:
            yield f"--gradient_accumulation_steps {self.gradient_accumulation_steps}: --trainer zo takes 1"
        yield from self._fsdp_problems()

    def _divergence_problems(self):
        """The divergence thresholds: 0 turns a check off, a negative or NaN value is a typo."""
        for flag in ("diverge_loss_ratio", "diverge_zero_grad_steps", "diverge_grad_norm_ratio"):
            if not getattr(self, flag) >= 0:
                yield f"--{flag} {getattr(self, flag)}: must be >= 0 (0: never stop on it)"

    @property
    def divergence_limits(self) -> divergence.Limits:
        """The thresholds ``trainer.DivergenceCallback`` stops a run at."""
        return divergence.Limits(self.diverge_loss_ratio, self.diverge_zero_grad_steps, self.diverge_grad_norm_ratio)

    def _method_problems(self):
        """``--method``: a registered mode without a flag of its own, and no mode flag beside it."""
        if self.method is None:
            return
        spec = registry.ADAPTERS.get(self.method)
        if spec is None or self.method not in methods.METHODS:
            yield f"--method {self.method}: unknown; known: {', '.join(methods.METHODS)}"
        elif spec.flag:
            yield f"--method {self.method}: select it with --{spec.flag} (its own flag)"
        elif not spec.selection():
            yield f"--method {self.method}: the mode of a run that selects none; drop --method"
        flagged = [f"--{s.flag}" for s in registry.ADAPTERS.values() if s.flag and getattr(self, s.flag)]
        if flagged:
            yield f"--method {self.method} and {' '.join(flagged)}: choose one training mode"

    def _fsdp_problems(self):
        if not self.fsdp:
            return
        if self.trainer != "regular":
            yield (f"--fsdp with --trainer {self.trainer}: FSDP shards the model for backprop training; a ZO step "
                   f"needs the whole model on every rank (use plain torchrun for data-parallel zo)")
        if self.mode != "ft":
            others = [" ".join(s.selection()) for s in registry.ADAPTERS.values() if s.selection()]
            yield (f"--fsdp with {self.mode} training: only full-parameter training (no {', '.join(others)}, "
                   f"--linear_probing) is supported with FSDP here")
        if self.load_best_model_at_end:
            yield ("--fsdp with --load_best_model_at_end: the in-memory best dev snapshot does not handle sharded "
                   "parameters; drop --load_best_model_at_end (finetune_fsdp.sh does)")
        if not torch.cuda.is_available():
            yield ("--fsdp without CUDA: accelerate runs FSDP on GPUs only (on the CPU it would silently train "
                   "with plain DDP); drop --fsdp on this machine")


@functools.cache
def default_config_of(cls: type[EngineArguments]) -> dict:
    """The resolved configuration of a run of ``cls`` given no flags (``cls().to_dict()``): what result names are
    hashed against (``results.config_hash``)."""
    return cls().to_dict()


def flag_names(cls: type[EngineArguments]) -> list[str]:
    """Every option string run.py takes for ``cls`` (both spellings, upstream's aliases, ``--no_<flag>``), sorted;
    printed by ``python -m large_models.arguments`` for tools that must not import the engine (``scripts/sweeps``)."""
    return sorted(o for action in HfArgumentParser(cls)._actions for o in action.option_strings)


def parse_args_into(cls: type[EngineArguments], argv: list[str] | None = None, prog: str = "run.py"):
    """Parse ``argv`` (default: sys.argv) into validated ``cls``; bad input exits with one line naming it: an
    unknown flag (with the closest known one), a value argparse cannot read, or the checks' problems."""
    argv = list(argv if argv is not None else sys.argv[1:])
    parser = HfArgumentParser(cls, exit_on_error=False)
    try:
        _, unknown = parser.parse_known_args(argv)
        if unknown:
            raise ArgumentError(unknown_flags(unknown, parser._option_string_actions))
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except argparse.ArgumentError as err:
        parser.exit(2, f"{prog}: error: {unreadable_value(err, argv)}\n")
    except ArgumentError as err:
        parser.exit(2, f"{prog}: error: {err}\n")
    return args


def unknown_flags(words: list[str], known) -> str:
    """The message for the words argparse did not take: each unknown ``--flag`` with the closest known one."""
    flags = [w.split("=")[0] for w in words if w.startswith("-")]
    if not flags:
        return f"unexpected argument(s) {' '.join(words)}: every value follows its --flag"
    return "; ".join(f"{flag}: unknown flag{closest(flag, known)}" for flag in flags)


def closest(name: str, known) -> str:
    """``; did you mean X?`` for the known name closest to ``name`` (nothing when none is close)."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def unreadable_value(err: argparse.ArgumentError, argv: list[str]) -> str:
    """argparse's complaint about a value, with a hint when the value is a negative number written after a space
    (``--learning_rate -1e-3``: argparse takes ``-1e-3`` for a flag)."""
    names = (err.argument_name or "").split("/")
    after = [(w, argv[i + 1]) for i, w in enumerate(argv[:-1]) if w in names]
    if after and after[0][1].startswith("-") and _is_number(after[0][1]):
        flag, value = after[0]
        return f"{flag} {value}: a negative value after a space reads as a flag; write {flag}={value}"
    return str(err)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
