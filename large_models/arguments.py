"""The one arguments dataclass of `run.py`: the engine's flags (``mezo_engine.arguments``) and the tasks' data,
scoring and generation flags of MeZO's large-model experiments (same names, same defaults).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from large_models import task_table
from large_models.task_file import TaskFileError, digest, read_task_file
from large_models.tasks import TASKS
from mezo_engine.arguments import ArgumentError, EngineArguments, default_config_of, flag_names, parse_args_into
from mezo_engine.linear_probe import NUM_FOLDS

__all__ = ["ArgumentError", "Arguments", "GENERATION_TASKS", "KNOWN_TASKS", "default_config", "parse_args"]

KNOWN_TASKS = (*task_table.TASKS, task_table.CUSTOM)
GENERATION_TASKS = tuple(name for name, cls in TASKS.items() if cls.generation)


@dataclass
class Arguments(EngineArguments):
    # ---- task and data -------------------------------------------------------------------------------------
    task_name: str = field(default="SST2", metadata={"help": f"Task: one of {', '.join(KNOWN_TASKS)}."})
    task_file: str | None = field(default=None, metadata={
        "help": "With --task_name custom: the task file (TOML) naming your data files (JSONL, CSV, TSV), the prompt "
                "template and the answers (docs/your-data.md). Its content and its data files' enter the result "
                "name."})
    data_dir: str | None = field(default=None, metadata={
        "help": "Folder of original-format task files (GLUE TSV, SuperGLUE JSONL, SQuAD/DROP JSON). "
                "Default: download from the HuggingFace hub."})
    num_train: int = field(default=0, metadata={"help": "Training examples (also: ICL demonstrations)."})
    num_dev: int | None = field(default=None, metadata={"help": "Dev examples, taken from the end of the sampled train set."})
    num_eval: int | None = field(default=None, metadata={"help": "Evaluation examples sampled from the validation split (default: all)."})
    num_train_sets: int | None = field(default=None, metadata={"help": "Number of train sets (seeds 0..N-1) when --train_set_seed is unset."})
    train_set_seed: int | None = field(default=None, metadata={"help": "Seed for sampling the train/dev set."})
    train_from_validation: bool = field(default=False, metadata={
        "help": "Draw the train and dev examples from the validation split and evaluate on the rest of it (for a "
                "task whose train file is missing, e.g. SQuAD offline); the result JSON records the split sizes. "
                "Not in MeZO."})
    max_length: int = field(default=2048, metadata={"help": "Longest input in tokens; longer prompts lose their left end."})
    sfc: bool = field(default=False, metadata={
        "help": "SFC calibration (surface form competition): a candidate's score is the sum of its answer "
                "log-probabilities minus their sum after the task's calibration prompt (the prompt without the "
                "input, no demonstrations). Classification and multiple-choice tasks."})
    icl_sfc: bool = field(default=False, metadata={
        "help": "As --sfc, with the in-context demonstrations kept before the calibration prompt."})
    scoring: Literal["shared", "rows"] = field(default="shared", metadata={
        "help": "Candidate scoring: shared = each prompt runs once and all its candidates are scored from it; "
                "rows = one full row per candidate (upstream MeZO's layout). Same scores within float rounding."})
    only_train_option: bool = field(default=True, metadata={"help": "LM loss on the answer tokens only."})
    train_as_classification: bool = field(default=False, metadata={
        "help": "Cross-entropy over the candidates' length-normalised log-likelihoods."})
    non_diff: bool = field(default=False, metadata={
        "help": "--trainer zo on a generation task (SQuAD, DROP): minimise minus the mean F1 of the generated "
                "answers (a non-differentiable objective) instead of the LM loss on the gold answer."})
    # ---- generation ----------------------------------------------------------------------------------------
    sampling: bool = field(default=False, metadata={"help": "Sample when generating (default greedy)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    num_beams: int = field(default=1, metadata={"help": "Beams for generation."})
    top_k: int | None = field(default=None, metadata={"help": "top-k for sampling."})
    top_p: float = field(default=0.95, metadata={"help": "top-p for sampling."})
    max_new_tokens: int = field(default=50, metadata={"help": "Longest generated answer."})
    eos_token: str = field(default="\n", metadata={"help": "Text that ends a generated answer."})

    # -- a task of one's own (--task_name custom --task_file FILE) ------------------------------------------------
    @cached_property
    def custom_task(self):
        """The checked task file (``task_file.TaskFile``) of ``--task_name custom``, else None."""
        return read_task_file(self.task_file) if self.task_name == task_table.CUSTOM else None

    @cached_property
    def task_file_sha256(self) -> str | None:
        return digest(self.task_file) if self.task_name == task_table.CUSTOM else None

    @property
    def is_generation(self) -> bool:
        if self.task_name == task_table.CUSTOM:
            return self.custom_task.kind == "generation"
        return self.task_name in GENERATION_TASKS

    @property
    def task_label(self) -> str:
        """The task's part of result names: its name, or ``custom-<the task file's name>``."""
        return f"{task_table.CUSTOM}-{self.custom_task.name}" if self.custom_task else self.task_name

    def to_dict(self) -> dict:
        """The engine's resolved flags, and with a task file the sha256 of its bytes and its data files' (so an
        edited file is a new run; ``task_file.digest``)."""
        config = super().to_dict()
        if self.task_file_sha256:
            config["task_file_sha256"] = self.task_file_sha256
        return config

    def _custom_task_problems(self):
        if self.task_name != task_table.CUSTOM:
            if self.task_file:
                yield f"--task_file {self.task_file}: only with --task_name {task_table.CUSTOM}"
            return
        if not self.task_file:
            yield f"--task_name {task_table.CUSTOM} needs --task_file (a TOML file: docs/your-data.md)"
            return
        try:
            self.custom_task
        except TaskFileError as err:
            yield f"--task_file: {err}"

    def _task_problems(self):
        """The task, data, scoring and generation flags."""
        if self.task_name not in KNOWN_TASKS:
            yield f"--task_name {self.task_name!r}: unknown task; known: {', '.join(KNOWN_TASKS)}"
            return
        problems = list(self._custom_task_problems())
        if problems:
            yield from problems
            return
        if self.num_train < 0:
            yield f"--num_train {self.num_train}: must be >= 0"
        for flag in ("max_length", "max_new_tokens"):
            if getattr(self, flag) < 1:
                yield f"--{flag} {getattr(self, flag)}: must be >= 1"
        if self.num_dev is not None and self.num_dev < 0:
            yield f"--num_dev {self.num_dev}: must be >= 0"
        if self.num_eval is not None and self.num_eval < 1:
            yield f"--num_eval {self.num_eval}: must be >= 1"
        if self.trainer != "none" and self.num_train == 0:
            yield f"--num_train 0 with --trainer {self.trainer}: nothing to train on; give --num_train >= 1"
        if self.is_generation and self.max_length <= self.max_new_tokens:
            yield (f"--max_length {self.max_length}: must exceed --max_new_tokens {self.max_new_tokens} for "
                   f"generation task {self.task_name}")
        if self.train_as_classification and self.is_generation:
            yield f"--train_as_classification: task {self.task_name} is generation, it has no candidates"
        yield from self._objective_problems()
        yield from self._probe_problems()

    def _objective_problems(self):
        """--sfc / --icl_sfc (candidate scoring), --non_diff (zo on generation), --train_from_validation."""
        for flag in ("sfc", "icl_sfc"):
            if getattr(self, flag) and self.is_generation:
                yield (f"--{flag}: task {self.task_name} is generation; SFC calibration rescores the candidates of "
                       f"classification and multiple-choice tasks only")
        if self.sfc and self.icl_sfc:
            yield "--sfc and --icl_sfc: choose one (--icl_sfc keeps the demonstrations in the calibration prompt)"
        if self.non_diff and self.trainer != "zo":
            yield (f"--non_diff with --trainer {self.trainer}: the F1 objective has no gradient and is only "
                   f"for --trainer zo")
        if self.non_diff and not self.is_generation:
            yield (f"--non_diff: task {self.task_name} is not a generation task; the F1 objective needs "
                   f"{' or '.join(GENERATION_TASKS)}")
        if self.non_diff and not self.only_train_option:
            yield "--only_train_option False with --non_diff: the F1 objective scores generated answers, no tokens"
        if self.train_from_validation and self.num_train == 0:
            yield "--train_from_validation with --num_train 0: nothing to draw; give --num_train >= 1"
        if (self.train_from_validation and self.trainer == "none" and self.train_set_seed is None
                and not self.num_train_sets):
            yield ("--train_from_validation with --trainer none and neither --train_set_seed nor --num_train_sets: "
                   "one demonstration set per example would be drawn from the evaluation pool itself; "
                   "give --train_set_seed")

    def _probe_problems(self):
        if self.linear_probing and self.is_generation:
            yield (f"--linear_probing: task {self.task_name} is generation; a probe over its answer tokens would "
                   f"overwrite the head rows generation needs. Use a classification or multiple-choice task")
        if self.linear_probing and self.trainer == "none" and self.num_train == 0:
            yield "--linear_probing with --num_train 0: nothing to fit the probe on; give --num_train >= 1"
        elif self.linear_probing and 0 < self.num_train - (self.num_dev or 0) < NUM_FOLDS:
            yield (f"--linear_probing with --num_train {self.num_train}" + (f" and --num_dev {self.num_dev}"
                   if self.num_dev else "") + f": fewer training examples than the probe's {NUM_FOLDS} "
                   f"cross-validation folds; give --num_train >= {NUM_FOLDS + (self.num_dev or 0)}")


def default_config() -> dict:
    """The resolved configuration of a run given no flags (``Arguments().to_dict()``): what result names are
    hashed against (``results.config_hash``)."""
    return default_config_of(Arguments)


def parse_args(argv: list[str] | None = None) -> Arguments:
    """Parse ``argv`` (default: sys.argv) into validated Arguments; bad input exits with the message."""
    return parse_args_into(Arguments, argv)


if __name__ == "__main__":  # every flag run.py takes, one a line: what scripts/sweeps checks its files against
    print("\n".join(flag_names(Arguments)))
