"""The one arguments dataclass of ``medium_models/run.py``: the engine's flags (``mezo_engine.arguments``) and the
LM-BFF task flags of MeZO's medium-model experiments (upstream's names: ``--num_k``, ``--max_seq_length``,
``--first_sent_limit``, ``--other_sent_limit``, ``--template``, ``--mapping``)."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field

from mezo_engine.arguments import EngineArguments, default_config_of, flag_names, parse_args_into
from medium_models.tasks import TASKS, LmBffTask


@dataclass
class Arguments(EngineArguments):
    # ---- task and data -------------------------------------------------------------------------------------
    task_name: str = field(default="SST-2", metadata={"help": f"LM-BFF task: one of {', '.join(TASKS)}."})
    data_dir: str | None = field(default=None, metadata={
        "help": "Folder holding <TASK>/<K>-<seed>/{train,dev,test} (LM-BFF's k-shot layout, e.g. "
                "../shared/data/LM-BFF/k-shot-1k-test)."})
    num_k: int = field(default=16, metadata={"help": "K: training (and dev) examples per label, the folder's <K>."})
    data_seed: int | None = field(default=None, metadata={
        "help": "The k-shot split's seed, the folder's <seed> (13, 21, 42, 87, 100); default: --seed, as upstream."})
    num_eval: int | None = field(default=None, metadata={
        "help": "Evaluate on the first N test examples only (default: all of test, at most 1000 in LM-BFF's files)."})
    max_seq_length: int | None = field(default=None, metadata={
        "help": "Longest prompt in tokens (default: the task's, upstream's 128; 256 for MNLI, SNLI, RTE)."})
    first_sent_limit: int | None = field(default=None, metadata={
        "help": "Tokens kept of sentence 0 (default: the task's, as upstream's run_fewshot.sh)."})
    other_sent_limit: int | None = field(default=None, metadata={
        "help": "Tokens kept of every other sentence (default: the task's)."})
    template: str | None = field(default=None, metadata={
        "help": "LM-BFF template, e.g. '*cls**sent_0*_It_was*mask*.*sep+*' (default: the task's manual template)."})
    mapping: str | None = field(default=None, metadata={
        "help": "Label words as a dict from the file's labels, e.g. \"{'0':'terrible','1':'great'}\" (default: the "
                "task's)."})
    # ---- the engine's defaults that differ here ------------------------------------------------------------
    model_name: str = field(default="roberta-large", metadata={
        "help": "Masked LM (RoBERTa, BERT: hub id or local directory), or a causal LM (hub id, local directory, "
                ".gguf, smollm2-135m), which scores the label word after the text before the mask."})

    def _task_problems(self):
        if self.task_name not in TASKS:
            yield f"--task_name {self.task_name!r}: unknown LM-BFF task; known: {', '.join(TASKS)}"
        for flag in ("num_k", "max_seq_length", "first_sent_limit", "other_sent_limit", "num_eval"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                yield f"--{flag} {value}: must be >= 1"
        if self.template is not None and self.template.count("*mask*") != 1:
            yield f"--template {self.template!r}: needs exactly one *mask*"
        if self.mapping is not None and self.task_name in TASKS:
            yield from self._mapping_problems()
        for flag in ("linear_probing", "prefix_tuning"):
            if getattr(self, flag):
                yield (f"--{flag}: not built for medium_models (the engine's version reads causal-LM answer "
                       f"rows); use it with large_models/run.py")

    def _mapping_problems(self):
        try:
            words = self.label_words()
        except (ValueError, SyntaxError) as err:
            yield f"--mapping {self.mapping!r}: {err}"
            return
        if len(words) != len(TASKS[self.task_name].labels):
            yield f"--mapping {self.mapping!r}: one word per label of {self.task_name} is needed"

    # -- derived --------------------------------------------------------------------------------------------
    @property
    def task(self) -> LmBffTask:
        return TASKS[self.task_name]

    @property
    def split_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def prompt_template(self) -> str:
        return self.template or self.task.template

    @property
    def seq_length(self) -> int:
        return self.max_seq_length or self.task.max_seq_length

    def sentence_limits(self) -> tuple[int | None, int | None]:
        task = self.task
        return (self.first_sent_limit or task.first_sent_limit, self.other_sent_limit or task.other_sent_limit)

    def label_words(self) -> list[str]:
        """The label words in the task's label order: ``--mapping`` (a dict from labels, as upstream writes it) or
        the task's own."""
        task = self.task
        if self.mapping is None:
            return list(task.label_words)
        value = ast.literal_eval(self.mapping)
        if not isinstance(value, dict):
            raise ValueError("not a dict from labels to words")
        mapping = {str(k): str(v) for k, v in value.items()}
        missing = [label for label in task.labels if label not in mapping]
        if missing:
            raise ValueError(f"no word for label(s) {', '.join(missing)}")
        return [mapping[label] for label in task.labels]


def default_config() -> dict:
    """The resolved configuration of a run given no flags: what result names are hashed against."""
    return default_config_of(Arguments)


def parse_args(argv: list[str] | None = None) -> Arguments:
    """Parse ``argv`` (default: sys.argv) into validated Arguments; bad input exits with the message."""
    return parse_args_into(Arguments, argv)


if __name__ == "__main__":  # every flag run.py takes, one a line: what scripts/sweeps checks its files against
    print("\n".join(flag_names(Arguments)))
