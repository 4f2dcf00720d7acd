"""The one arguments dataclass of `run.py`: MeZO's flags (same names, same defaults) on top of TrainingArguments.

Every check happens once, in ``__post_init__``; all problems are collected and raised together as one error that
names each flag and its bad value.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import HfArgumentParser, TrainingArguments

KNOWN_TASKS = ("SST2", "RTE", "CB", "BoolQ", "WSC", "WIC", "MultiRC", "Copa", "ReCoRD", "SQuAD", "DROP")
GENERATION_TASKS = ("SQuAD", "DROP")


# Upstream MeZO's names (medium_models) -> ours; run.py accepts both.
ALIASES = {"zero_order_sample": "zo_num_samples", "zero_order_sample_scheduler": "zo_sample_scheduler"}
# Flags only --trainer zo reads: a non-default value with another trainer would be silently ignored.
ZO_OPTIMIZER_FLAGS = ("zo_optimizer", "zo_momentum", "zo_num_samples", "zo_sample_scheduler")


class ArgumentError(ValueError):
    """Bad command-line input; the message names every offending flag and value."""


@dataclass
class Arguments(TrainingArguments):
    # ---- task and data -------------------------------------------------------------------------------------
    task_name: str = field(default="SST2", metadata={"help": f"Task: one of {', '.join(KNOWN_TASKS)}."})
    data_dir: str | None = field(default=None, metadata={
        "help": "Folder of original-format task files (GLUE TSV, SuperGLUE JSONL, SQuAD/DROP JSON). "
                "Default: download from the HuggingFace hub."})
    num_train: int = field(default=0, metadata={"help": "Training examples (also: ICL demonstrations)."})
    num_dev: int | None = field(default=None, metadata={"help": "Dev examples, taken from the end of the sampled train set."})
    num_eval: int | None = field(default=None, metadata={"help": "Evaluation examples sampled from the validation split (default: all)."})
    num_train_sets: int | None = field(default=None, metadata={"help": "Number of train sets (seeds 0..N-1) when --train_set_seed is unset."})
    train_set_seed: int | None = field(default=None, metadata={"help": "Seed for sampling the train/dev set."})
    result_file: str | None = field(default=None, metadata={
        "help": "Where to write the result JSON (default: <result_dir>/<task>-<model>-<tag>-<config hash>.json)."})
    result_dir: str | None = field(default=None, metadata={
        "help": "Folder of default-named results (default: result/ at the repository root)."})
    # ---- model ---------------------------------------------------------------------------------------------
    model_name: str = field(default="facebook/opt-125m", metadata={
        "help": "Hub id, local HF directory, .gguf file, or an offline alias (smollm2-135m)."})
    load_float16: bool = field(default=False, metadata={"help": "Load the model in float16 (CUDA only; float32 on CPU)."})
    load_bfloat16: bool = field(default=False, metadata={"help": "Load the model in bfloat16."})
    max_length: int = field(default=2048, metadata={"help": "Longest input in tokens; longer prompts lose their left end."})
    scoring: Literal["shared", "rows"] = field(default="shared", metadata={
        "help": "Candidate scoring: shared = each prompt runs once and all its candidates are scored from it; "
                "rows = one full row per candidate (upstream MeZO's layout). Same scores within float rounding."})
    # ---- training ------------------------------------------------------------------------------------------
    trainer: Literal["none", "regular", "zo"] = field(default="none", metadata={
        "help": "none: zero-shot / in-context evaluation; regular: backprop fine-tuning; zo: MeZO."})
    only_train_option: bool = field(default=True, metadata={"help": "LM loss on the answer tokens only."})
    train_as_classification: bool = field(default=False, metadata={
        "help": "Cross-entropy over the candidates' length-normalised log-likelihoods."})
    zo_eps: float = field(default=1e-3, metadata={"help": "MeZO perturbation scale eps."})
    zo_fold_adapters: bool = field(default=True, metadata={
        "help": "zo with LoRA/XGBLoRA: run each adapted layer as one matmul with W + s B A (lora.folded_adapters) "
                "instead of PEFT's adapter path; same losses within float rounding, base weights bit-identical."})
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
    prefix_tuning: bool = field(default=False, metadata={"help": "Prefix tuning (not available yet)."})
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
    # ---- generation ----------------------------------------------------------------------------------------
    sampling: bool = field(default=False, metadata={"help": "Sample when generating (default greedy)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    num_beams: int = field(default=1, metadata={"help": "Beams for generation."})
    top_k: int | None = field(default=None, metadata={"help": "top-k for sampling."})
    top_p: float = field(default=0.95, metadata={"help": "top-p for sampling."})
    max_new_tokens: int = field(default=50, metadata={"help": "Longest generated answer."})
    eos_token: str = field(default="\n", metadata={"help": "Text that ends a generated answer."})
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
        super().__post_init__()

    def to_dict(self) -> dict:
        """The resolved flags, with ``--load_best_model_at_end`` as the user gave it (the Trainer is handed False
        because ``BestModelCallback`` keeps the best model; that value is under ``trainer_load_best_model_at_end``)."""
        config = super().to_dict()
        config["load_best_model_at_end"] = getattr(self, "keep_best_model", config["load_best_model_at_end"])
        config["trainer_load_best_model_at_end"] = self.load_best_model_at_end
        return config

    # -- derived --------------------------------------------------------------------------------------------
    @property
    def uses_adapter(self) -> bool:
        return self.lora or self.xgblora

    @property
    def mode(self) -> str:
        return "xgblora" if self.xgblora else "lora" if self.lora else "ft"

    @property
    def adapter_rank(self) -> int:
        return self.xgblora_rank if self.xgblora else self.lora_r

    @property
    def torch_dtype(self) -> torch.dtype:
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
        if self.task_name not in KNOWN_TASKS:
            yield f"--task_name {self.task_name!r}: unknown task; known: {', '.join(KNOWN_TASKS)}"
        if not self.zo_eps > 0:
            yield f"--zo_eps {self.zo_eps}: must be > 0"
        if self.load_float16 and self.load_bfloat16:
            yield "--load_float16 and --load_bfloat16: choose one"
        for flag in ("num_train", "max_length", "lora_r", "xgblora_rank", "xgblora_merge_frequency", "max_new_tokens"):
            if getattr(self, flag) < (0 if flag == "num_train" else 1):
                yield f"--{flag} {getattr(self, flag)}: must be {'>= 0' if flag == 'num_train' else '>= 1'}"
        for flag in ("xgblora_steps_per_iteration", "xgblora_num_layers", "lora_merge_every",
                     "xgblora_restart_warmup_steps"):
            if getattr(self, flag) < 0:
                yield f"--{flag} {getattr(self, flag)}: must be >= 0"
        if self.num_dev is not None and self.num_dev < 0:
            yield f"--num_dev {self.num_dev}: must be >= 0"
        if self.num_eval is not None and self.num_eval < 1:
            yield f"--num_eval {self.num_eval}: must be >= 1"
        for flag in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, flag) < 1:
                yield f"--{flag} {getattr(self, flag)}: must be >= 1"
        yield from self._training_problems()
        yield from self._zo_problems()
        yield from self._mode_problems()

    def _training_problems(self):
        if self.trainer == "none":
            if self.uses_adapter:
                flag = "--xgblora" if self.xgblora else "--lora"
                yield (f"{flag} with --trainer none: an adapter changes nothing until it is trained; "
                       f"use --trainer zo or regular, or drop {flag}")
            return
        if self.num_train == 0:
            yield f"--num_train 0 with --trainer {self.trainer}: nothing to train on; give --num_train >= 1"
        if self.max_steps == 0 or self.max_steps < -1:
            yield (f"--max_steps {self.max_steps} with --trainer {self.trainer}: must be >= 1 "
                   f"(or -1 to train --num_train_epochs epochs)")
        if not self.learning_rate > 0:
            yield f"--learning_rate {self.learning_rate} with --trainer {self.trainer}: must be > 0"

    def _is_default(self, flag: str) -> bool:
        return getattr(self, flag) == Arguments.__dataclass_fields__[flag].default

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
        if self.zo_optimizer == "adam":
            for flag in ("adam_beta1", "adam_beta2"):
                if not 0 <= getattr(self, flag) < 1:
                    yield f"--{flag} {getattr(self, flag)}: must be in [0, 1) for --zo_optimizer adam"
            if not self.adam_epsilon >= 0:
                yield f"--adam_epsilon {self.adam_epsilon}: must be >= 0 for --zo_optimizer adam"

    def _mode_problems(self):
        if self.prefix_tuning:
            yield ("--prefix_tuning: cannot be combined with --xgblora" if self.xgblora
                   else "--prefix_tuning: not available yet")
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
        if self.lora_init == "lora_ga" and not self.uses_adapter:
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
        if self.task_name in GENERATION_TASKS and self.max_length <= self.max_new_tokens:
            yield (f"--max_length {self.max_length}: must exceed --max_new_tokens {self.max_new_tokens} for "
                   f"generation task {self.task_name}")
        if self.train_as_classification and self.task_name in GENERATION_TASKS:
            yield f"--train_as_classification: task {self.task_name} is generation, it has no candidates"


def parse_args(argv: list[str] | None = None) -> Arguments:
    """Parse ``argv`` (default: sys.argv) into validated Arguments; bad input exits with the message."""
    parser = HfArgumentParser(Arguments)
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    except ArgumentError as err:
        parser.exit(2, f"run.py: error: {err}\n")
    return args
