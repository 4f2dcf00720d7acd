"""The flags every app shares: MeZO's training flags (same names, same defaults) on top of TrainingArguments.

``EngineArguments`` holds what the engine reads (model loading, trainer, zo step and optimizers, the training
modes, outputs); each app subclasses it with its task and data flags (``large_models.arguments.Arguments``,
``medium_models.arguments.Arguments``) and adds its own checks in ``_task_problems``. Every check happens once, in
``__post_init__``; all problems are collected and raised together as one error that names each flag and its bad
value.
"""
from __future__ import annotations

import functools
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import HfArgumentParser, TrainingArguments



# Training modes (``modes.MODES``) and the MeZO flag that selects each; no flag: full-parameter (``ft``).
MODE_FLAGS = {"lora": "lora", "xgblora": "xgblora", "prefix": "prefix_tuning", "head": "head_tuning"}
# What a mode flag would leave untouched under --trainer none (the refusal's reason).
UNTRAINED = {"lora": "an adapter changes nothing until it is trained",
             "xgblora": "an adapter changes nothing until it is trained",
             "prefix": "nothing would train the prefix", "head": "nothing would train the head"}
# Upstream MeZO's names (medium_models) -> ours; run.py accepts both.
ALIASES = {"zero_order_sample": "zo_num_samples", "zero_order_sample_scheduler": "zo_sample_scheduler"}
# Flags only --trainer zo reads: a non-default value with another trainer would be silently ignored.
ZO_OPTIMIZER_FLAGS = ("zo_optimizer", "zo_momentum", "zo_num_samples", "zo_sample_scheduler", "zo_perturb")


class ArgumentError(ValueError):
    """Bad command-line input; the message names every offending flag and value."""


def launched_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    value = os.environ.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() else 1


@dataclass
class EngineArguments(TrainingArguments):
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
        "help": "Load the linear weights in 8 bits (bitsandbytes LLM.int8(), as upstream MeZO); CUDA only. For "
                "evaluation and adapter training (--lora, --prefix_tuning): base weights that are perturbed or merged "
                "cannot be 8-bit."})
    no_auto_device: bool = field(default=False, metadata={
        "help": "Do not spread the model over the GPUs with device_map='auto' (upstream MeZO's flag). By default, on "
                "a CUDA machine and in a single process, the model is split over every GPU, each capped at its free "
                "memory less 5 GiB, and what does not fit stays in CPU memory and runs there (trained in place). "
                "Under torchrun (DDP, FSDP) each rank holds its own copy and auto placement is always off."})
    # ---- training ------------------------------------------------------------------------------------------
    trainer: Literal["none", "regular", "zo"] = field(default="none", metadata={
        "help": "none: zero-shot / in-context evaluation; regular: backprop fine-tuning; zo: MeZO."})
    zo_eps: float = field(default=1e-3, metadata={"help": "MeZO perturbation scale eps."})
    zo_fold_adapters: bool = field(default=True, metadata={
        "help": "zo with LoRA/XGBLoRA: run each adapted layer as one matmul with W + s B A (lora.folded_adapters) "
                "instead of PEFT's adapter path; same losses within float rounding, base weights bit-identical."})
    zo_perturb: Literal["in_place", "out_of_place"] = field(default="in_place", metadata={
        "help": "How a full-parameter zo step perturbs the weights. in_place (MeZO's way): theta += eps z, "
                "-= 2 eps z, += eps z in place, then the update; in fp16/bf16 the restore by arithmetic drifts a "
                "few ulps a step. out_of_place: forward hooks form each module's W + eps z just before it runs and "
                "drop it after, so the weights change only in the update (float64, rounded once to the dtype); z is "
                "drawn per parameter (another stream than in_place). Full-parameter ZO-SGD with one direction only "
                "(docs/zo_precision.md)."})
    # ---- prefix tuning (MeZO's names and defaults) -----------------------------------------------------------
    prefix_tuning: bool = field(default=False, metadata={
        "help": "Prefix tuning: train --num_prefix key/value vectors in front of every attention layer; nothing else "
                "trains. MeZO's advice: zo LR 1e-2 or 1e-3 with --zo_eps 1e-1; regular training LR 1e-2."})
    num_prefix: int = field(default=5, metadata={"help": "Prefix tuning: number of prefix positions."})
    no_reparam: bool = field(default=True, metadata={
        "help": "Prefix tuning: train the prefix keys and values directly (MeZO's default). --no_reparam False: "
                "compute them with per-layer MLPs from shared embeddings (the reparameterisation trick)."})
    prefix_init_by_real_act: bool = field(default=True, metadata={
        "help": "Prefix tuning: start the prefix from the keys and values the model computes for --num_prefix "
                "random vocabulary tokens (drawn with --seed); False: standard normal. Needs --no_reparam."})
    # ---- LM head: head tuning, linear probing --------------------------------------------------------------
    head_tuning: bool = field(default=False, metadata={
        "help": "Train only the LM head (--trainer zo or regular; MeZO's flag, default off). If the head is tied "
                "to the input embeddings (OPT, GPT-2, SmolLM2, ...) and --untie_emb is not given, the shared weight "
                "trains, so the input embeddings change too (as upstream; with regular training its gradient "
                "comes from the head's use alone)."})
    untie_emb: bool = field(default=False, metadata={
        "help": "Give the LM head its own copy of the tied input embedding weight (MeZO's flag, default off); a "
                "saved model keeps them apart."})
    linear_probing: bool = field(default=False, metadata={
        "help": "Linear probing (MeZO's flag, default off): fit a logistic regression (LogisticRegressionCV) from "
                "the LM head's input to each gold answer token of the training examples and write it into those "
                "tokens' rows of the head, untied first (automatically). --trainer none: the probe is all the "
                "training; zo or regular: training starts from it (upstream MeZO stopped after the probe). "
                "Not for generation tasks."})
    lp_early_stopping: bool = field(default=False, metadata={
        "help": "Linear probing with tol 0.01 and at most 1000 iterations instead of 1e-4 and 5000 (MeZO's flag, "
                "default off)."})
    zo_optimizer: Literal["sgd", "momentum", "adam"] = field(default="sgd", metadata={
        "help": "zo update rule (zo_optim.py): sgd = MeZO's ZO-SGD (no state; one seed: the fused step); "
                "momentum = ZO-SGD with momentum --zo_momentum (one extra buffer the size of the trainable "
                "parameters); adam = MeZO-Adam with --adam_beta1 --adam_beta2 --adam_epsilon (two buffers). "
                "Upstream: large_models trains ZO-SGD only; medium_models' --optimizer sgd|adam (default adam) "
                "with --zero_order_use_trainer_optim."})
    zo_momentum: float = field(default=0.9, metadata={
        "help": "Momentum of --zo_optimizer momentum (upstream medium_models' README: --momentum, not in its code)."})
    zo_num_samples: int = field(default=1, metadata={
        "help": "n-SPSA: directions per step, their projected gradients averaged (1/n), as upstream "
                "--zero_order_sample (default 1); with --zo_sample_scheduler linear the number reached at the end."})
    zo_sample_scheduler: Literal["constant", "linear"] = field(default="constant", metadata={
        "help": "Directions per step: constant = --zo_num_samples; linear = max(1, int(step / max_steps * n)) "
                "for the 0-based step, as upstream --zero_order_sample_scheduler (whose default, none, is 1)."})
    zero_order_sample: int | None = field(default=None, metadata={"help": "Alias of --zo_num_samples (upstream name)."})
    zero_order_sample_scheduler: Literal["constant", "linear"] | None = field(default=None, metadata={
        "help": "Alias of --zo_sample_scheduler (upstream name)."})
    # ---- LoRA / XGBLoRA ------------------------------------------------------------------------------------
    lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all parameters."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA alpha (scale alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Module names to adapt (default: the attention query and value projections)."})
    lora_init: Literal["default", "lora_ga"] = field(default="default", metadata={
        "help": "default: A Kaiming-uniform, B zero; lora_ga: from the top singular vectors of an estimated gradient."})
    lora_ga_batches: int = field(default=4, metadata={"help": "Batches used to estimate the gradient for --lora_init lora_ga."})
    lora_merge_every: int = field(default=0, metadata={"help": "Plain LoRA: partial merge every N steps (0: never)."})
    lora_merge_alpha: float = field(default=0.5, metadata={"help": "Fraction of the adapter moved into the base weight per partial merge."})
    xgblora: bool = field(default=False, metadata={"help": "XGBLoRA: gradient-boosted rank-1 LoRA boosters."})
    xgblora_rank: int = field(default=1, metadata={"help": "Rank of each booster."})
    xgblora_steps_per_iteration: int = field(default=0, metadata={
        "help": "kappa: optimizer steps per booster before it is merged (0: merge every --xgblora_merge_frequency epochs)."})
    xgblora_merge_frequency: int = field(default=1, metadata={"help": "Epochs between merges when kappa is 0."})
    xgblora_num_layers: int = field(default=0, metadata={"help": "Ls: blocks drawn per iteration (0: all blocks)."})
    xgblora_merge_scale: float = field(default=1.0, metadata={"help": "eta: W <- W + eta * (alpha/r) * B A at each merge."})
    xgblora_restart_warmup_steps: int = field(default=0, metadata={
        "help": "Regular training: linear LR warm-up after each merge (ReLoRA's jagged schedule; 0: off)."})
    # ---- output --------------------------------------------------------------------------------------------
    save_model: bool = field(default=False, metadata={"help": "Save the trained model (merged) and adapters to output_dir."})
    no_eval: bool = field(default=False, metadata={"help": "Skip the final evaluation."})
    tag: str = field(default="", metadata={"help": "Tag for the result file name."})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace an existing completed result at the result path (default: refuse before loading anything)."})
    save_on_interrupt: bool = field(default=False, metadata={
        "help": "On SIGUSR1 or SIGINT (as upstream MeZO): stop after the current step, save the model (as "
                "--save_model) and a checkpoint, exit 75."})
    merge_warn_ratio: float = field(default=1.0, metadata={
        "help": "Warn when a merge adds a delta with |dW| above this multiple of |W| (0: never warn)."})
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
        self._resolve_half_precision()
        self.output_dir_given = self.output_dir is not None  # else run.py derives it from the run's name
        # The best dev model is tracked in memory (see trainer.BestModelCallback): the Trainer's own reload from a
        # checkpoint would restore only the adapter of a PEFT model and lose every merged booster.
        self.keep_best_model = self.load_best_model_at_end
        self.load_best_model_at_end = False
        if self.trainer == "zo":
            self.max_grad_norm = 0.0  # zo has no gradients to clip; also keeps a meaningless grad_norm out of logs
        if self.trainer == "regular" and self.xgblora and self.xgblora_num_layers:
            self.ddp_find_unused_parameters = True  # DDP must expect no gradient for the frozen boosters
        if launched_world_size() > 1 and not torch.cuda.is_available():
            self.use_cpu = True  # accelerate runs torchrun's ranks on the CPU (gloo) only when told so
        super().__post_init__()

    def to_dict(self) -> dict:
        """The resolved flags, with ``--load_best_model_at_end`` as the user gave it (the Trainer is handed False
        because ``BestModelCallback`` keeps the best model; that value is under ``trainer_load_best_model_at_end``)."""
        config = super().to_dict()
        config["load_best_model_at_end"] = getattr(self, "keep_best_model", config["load_best_model_at_end"])
        config["trainer_load_best_model_at_end"] = self.load_best_model_at_end
        config["world_size"] = launched_world_size()  # the global batch is world_size x the per-device batch
        return config

    # -- derived --------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """The training mode's name (``modes.MODES``) from MeZO's mode flags (``ft`` when none is given);
        with ``--linear_probing``: ``lp`` for the probe alone, ``lp-<mode>`` for training that starts from it."""
        chosen = [name for name, flag in MODE_FLAGS.items() if getattr(self, flag)]
        base = chosen[0] if chosen else "ft"
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

    def _resolve_half_precision(self) -> None:
        if self.load_float16 and not torch.cuda.is_available():
            warnings.warn("--load_float16 without CUDA: loading in float32 instead (fp16 matmuls on CPU are slow "
                          "and imprecise)", stacklevel=2)
            self.load_float16 = False

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
        if sum((self.load_float16, self.load_bfloat16, self.load_float64)) > 1:
            given = [f for f in ("load_float16", "load_bfloat16", "load_float64") if getattr(self, f)]
            yield f"--{' and --'.join(given)}: choose one"
        yield from self._int8_problems()
        for flag in ("lora_r", "xgblora_rank", "xgblora_merge_frequency"):
            if getattr(self, flag) < 1:
                yield f"--{flag} {getattr(self, flag)}: must be >= 1"
        for flag in ("xgblora_steps_per_iteration", "xgblora_num_layers", "lora_merge_every",
                     "xgblora_restart_warmup_steps"):
            if getattr(self, flag) < 0:
                yield f"--{flag} {getattr(self, flag)}: must be >= 0"
        for flag in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, flag) < 1:
                yield f"--{flag} {getattr(self, flag)}: must be >= 1"
        yield from self._training_problems()
        yield from self._zo_problems()
        yield from self._mode_problems()
        yield from self._head_problems()
        yield from self._task_problems()

    def _task_problems(self):
        """The app's checks of its task and data flags (none here)."""
        return iter(())

    def _int8_problems(self):
        if not self.load_int8:
            return
        if not torch.cuda.is_available():
            yield ("--load_int8: needs CUDA (bitsandbytes' 8-bit layers have no CPU path); drop it on this machine, "
                   "or use --load_bfloat16 / --load_float16 on a GPU")
        if self.trainer != "none" and not (self.lora or self.prefix_tuning):
            yield (f"--load_int8 with --trainer {self.trainer} and no --lora/--prefix_tuning: training would change "
                   "the 8-bit base weights themselves; train an adapter (--lora) or evaluate only (--trainer none)")
        if self.xgblora or self.lora_merge_every:
            flag = "--xgblora" if self.xgblora else f"--lora_merge_every {self.lora_merge_every}"
            yield f"--load_int8 with {flag}: merges write into the base weights, which cannot be 8-bit"

    def _training_problems(self):
        if self.trainer == "none":
            for mode, flag in MODE_FLAGS.items():
                if getattr(self, flag):
                    yield (f"--{flag} with --trainer none: {UNTRAINED[mode]}; use --trainer zo or regular, "
                           f"or drop --{flag}")
            return
        if self.max_steps == 0 or self.max_steps < -1:
            yield (f"--max_steps {self.max_steps} with --trainer {self.trainer}: must be >= 1 "
                   f"(or -1 to train --num_train_epochs epochs)")
        if not self.learning_rate > 0:
            yield f"--learning_rate {self.learning_rate} with --trainer {self.trainer}: must be > 0"

    def _is_default(self, flag: str) -> bool:
        return getattr(self, flag) == type(self).__dataclass_fields__[flag].default

    def _flag(self, flag: str) -> str:
        """``--flag value`` as the user wrote it (upstream's alias if that is what was given)."""
        return f"--{self.aliases_given.get(flag, flag)} {getattr(self, flag)}"

    def _zo_problems(self):
        if self.zo_num_samples < 1:
            yield f"{self._flag('zo_num_samples')}: must be >= 1"
        if not 0 <= self.zo_momentum < 1:
            yield f"--zo_momentum {self.zo_momentum}: must be in [0, 1)"
        if self.trainer != "zo":
            for flag in ZO_OPTIMIZER_FLAGS:
                if not self._is_default(flag):
                    yield (f"{self._flag(flag)} with --trainer {self.trainer}: only --trainer zo uses it; "
                           f"drop it or use --trainer zo")
            return
        if self.zo_optimizer != "momentum" and not self._is_default("zo_momentum"):
            yield f"--zo_momentum {self.zo_momentum}: only --zo_optimizer momentum uses it (not {self.zo_optimizer})"
        if self.zo_sample_scheduler == "linear" and self.zo_num_samples == 1:
            yield (f"{self._flag('zo_sample_scheduler')} with --zo_num_samples 1: every step would take one "
                   f"direction; give --zo_num_samples > 1, the number reached at the end of the run")
        yield from self._perturb_problems()
        if self.zo_optimizer == "adam":
            for flag in ("adam_beta1", "adam_beta2"):
                if not 0 <= getattr(self, flag) < 1:
                    yield f"--{flag} {getattr(self, flag)}: must be in [0, 1) for --zo_optimizer adam"
            if not self.adam_epsilon >= 0:
                yield f"--adam_epsilon {self.adam_epsilon}: must be >= 0 for --zo_optimizer adam"

    def _perturb_problems(self):
        """``--zo_perturb out_of_place``: full-parameter ZO-SGD with one direction per step."""
        if self.zo_perturb != "out_of_place":
            return
        if self.mode not in ("ft", "lp-ft"):
            yield (f"--zo_perturb out_of_place with {self.mode} training: for full-parameter training only (the "
                   f"small trainable sets of adapters, prefixes and heads are restored bit for bit already)")
        if self.zo_optimizer != "sgd":
            yield (f"--zo_perturb out_of_place with --zo_optimizer {self.zo_optimizer}: only sgd (the ZO optimizers "
                   f"regenerate z from the in-place stream)")
        if self.zo_num_samples != 1:
            yield f"--zo_perturb out_of_place with {self._flag('zo_num_samples')}: one direction per step only"

    def _mode_problems(self):
        yield from self._prefix_problems()
        if self.lora and self.xgblora:
            yield "--lora and --xgblora: choose one (--xgblora trains rank --xgblora_rank boosters)"
        if not self.merge_warn_ratio >= 0:
            yield f"--merge_warn_ratio {self.merge_warn_ratio}: must be >= 0 (0: never warn)"
        if not self.xgblora_merge_scale > 0:
            yield f"--xgblora_merge_scale {self.xgblora_merge_scale}: must be > 0"
        if not 0 < self.lora_merge_alpha <= 1:
            yield f"--lora_merge_alpha {self.lora_merge_alpha}: must be in (0, 1]"
        if self.lora_merge_every and not self.lora:
            yield f"--lora_merge_every {self.lora_merge_every}: needs --lora"
        if self.lora_init == "lora_ga" and self.mode not in ("lora", "xgblora"):
            yield "--lora_init lora_ga: needs --lora or --xgblora"
        if self.lora_init == "lora_ga" and self.trainer == "zo":
            yield ("--lora_init lora_ga with --trainer zo: LoRA-GA needs backprop gradients, which would cost "
                   "training memory; use --trainer regular, or --lora_init default with zo")
        if self.lora_init == "lora_ga" and self.xgblora and self.xgblora_merge_scale != 1.0:
            yield (f"--xgblora_merge_scale {self.xgblora_merge_scale} with --lora_init lora_ga: a LoRA-GA booster "
                   "starts non-zero, so only eta = 1 merges it without a jump; use 1.0")
        if self.xgblora_restart_warmup_steps and self.trainer != "regular":
            yield f"--xgblora_restart_warmup_steps {self.xgblora_restart_warmup_steps}: only for --trainer regular"
        if self.xgblora_restart_warmup_steps and not (self.xgblora and self.xgblora_steps_per_iteration):
            yield "--xgblora_restart_warmup_steps: needs --xgblora with --xgblora_steps_per_iteration > 0"
        if self.trainer == "zo" and self.gradient_accumulation_steps != 1:
            yield f"--gradient_accumulation_steps {self.gradient_accumulation_steps}: --trainer zo takes 1"
        yield from self._distributed_problems()

    def _distributed_problems(self):
        """FSDP (backprop, full-parameter, CUDA); XGBLoRA's frozen boosters under DDP."""
        yield from self._fsdp_problems()
        if (self.trainer == "regular" and self.xgblora and self.xgblora_num_layers
                and self.ddp_find_unused_parameters is False):
            yield (f"--ddp_find_unused_parameters False with --xgblora_num_layers {self.xgblora_num_layers}: the "
                   f"boosters of the blocks not drawn are frozen and get no gradient, which DDP must look for; "
                   f"drop the flag (or set it True)")

    def _fsdp_problems(self):
        if not self.fsdp:
            return
        if self.trainer != "regular":
            yield (f"--fsdp with --trainer {self.trainer}: FSDP shards the model for backprop training; a ZO step "
                   f"needs the whole model on every rank (use plain torchrun for data-parallel zo)")
        if self.mode != "ft":
            yield (f"--fsdp with {self.mode} training: only full-parameter training (no --lora, --xgblora, "
                   f"--prefix_tuning, --head_tuning, --linear_probing) is supported with FSDP here")
        if self.load_best_model_at_end:
            yield ("--fsdp with --load_best_model_at_end: the in-memory best dev snapshot does not handle sharded "
                   "parameters; drop --load_best_model_at_end (finetune_fsdp.sh does)")
        if not torch.cuda.is_available():
            yield ("--fsdp without CUDA: accelerate runs FSDP on GPUs only (on the CPU it would silently train "
                   "with plain DDP); drop --fsdp on this machine")

    def _prefix_problems(self):
        if not self.prefix_tuning:
            return
        for flag in ("xgblora", "lora"):
            if getattr(self, flag):
                yield (f"--prefix_tuning: cannot be combined with --{flag}; one training mode at a time "
                       f"(drop --prefix_tuning or --{flag})")
        if self.num_prefix < 1:
            yield f"--num_prefix {self.num_prefix}: must be >= 1"
        if self.prefix_init_by_real_act and not self.no_reparam:
            yield ("--prefix_init_by_real_act with --no_reparam False: real activations set the prefix keys and "
                   "values directly, which the reparameterisation computes instead; pass --no_reparam, or "
                   "--prefix_init_by_real_act False")

    def _head_problems(self):
        for flag in ("lora", "xgblora", "prefix_tuning"):
            if self.head_tuning and getattr(self, flag):
                yield f"--head_tuning and --{flag}: choose one (--head_tuning trains the LM head alone)"
        if self.lp_early_stopping and not self.linear_probing:
            yield "--lp_early_stopping: needs --linear_probing"


@functools.cache
def default_config_of(cls: type[EngineArguments]) -> dict:
    """The resolved configuration of a run of ``cls`` given no flags (``cls().to_dict()``): what result names are
    hashed against (``results.config_hash``)."""
    return cls().to_dict()


def parse_args_into(cls: type[EngineArguments], argv: list[str] | None = None, prog: str = "run.py"):
    """Parse ``argv`` (default: sys.argv) into validated ``cls``; bad input exits with the message."""
    parser = HfArgumentParser(cls)
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    except ArgumentError as err:
        parser.exit(2, f"{prog}: error: {err}\n")
    return args
