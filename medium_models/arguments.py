"""The one arguments dataclass of ``medium_models/run.py``: the engine's flags (``mezo_engine.arguments``) and the
LM-BFF task flags of MeZO's medium-model experiments (upstream's names: ``--num_k``, ``--max_seq_length``,
``--first_sent_limit``, ``--other_sent_limit``, ``--template``, ``--mapping``)."""
from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass, field
from typing import Literal

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
    few_shot_type: Literal["prompt", "prompt-demo"] = field(default="prompt", metadata={
        "help": "prompt: the template alone (MeZO's drivers); prompt-demo: one demonstration per label after it, "
                "drawn from the training set (LM-BFF's; docs/medium-models.md). Upstream's third type, finetune "
                "(a classifier head, no prompt), is not built."})
    num_sample: int = field(default=16, metadata={
        "help": "prompt-demo: demonstration draws per dev and test example, their logits averaged (upstream's "
                "flag and default)."})
    double_demo: bool | None = field(default=None, metadata={
        "help": "prompt-demo: double --max_seq_length (upstream's flag; default: the task's, on for sst-5 as MeZO's "
                "run_fewshot.sh)."})
    truncate_head: bool = field(default=False, metadata={
        "help": "A masked LM's prompt longer than --max_seq_length loses its front instead of its end (upstream's "
                "flag, which upstream applied with demonstrations only). A cut that removes the mask is refused."})
    # ---- what trains on a masked LM (medium_models/trainable.py: upstream MeZO's rules) -----------------------
    tie_emb: bool = field(default=False, metadata={
        "help": "Masked LM: keep the MLM decoder tied to the input embeddings (upstream's flag; this app's rule "
                "before it followed upstream). Default: the decoder gets its own copy before training, as "
                "upstream's prompt models, so full-parameter MeZO perturbs it apart from the embeddings and head "
                "tuning leaves the embeddings alone (RoBERTa-large: 51.5M parameters more, 206 MB in float32)."})
    adapters_train_head: bool = field(default=True, metadata={
        "help": "Masked LM with --lora or --xgblora: the whole MLM head (dense, LayerNorm, decoder, bias) trains "
                "beside the adapters, as upstream's --apply_lora freezes only the encoder's non-LoRA weights. "
                "False: the adapters alone (the earlier rule here)."})
    # ---- the engine's defaults that differ here ------------------------------------------------------------
    model_name: str = field(default="roberta-large", metadata={
        "help": "Masked LM (RoBERTa, BERT: hub id or local directory), or a causal LM (hub id, local directory, "
                ".gguf, smollm2-135m), which scores the label word after the text before the mask."})
    best_dev_ties: Literal["later", "first"] = field(default="first", metadata={
        "help": "With --load_best_model_at_end, which of equal best dev scores is kept: first (upstream's rule, the "
                "default here) or later."})
    zo_weight_decay_all: bool = field(default=True, metadata={
        "help": "zo with --weight_decay: decay every trained parameter, biases and LayerNorm weights too, as "
                "upstream MeZO's medium_models (default here). False: only those the Trainer decays."})

    def _task_problems(self):
        if self.task_name not in TASKS:
            yield f"--task_name {self.task_name!r}: unknown LM-BFF task; known: {', '.join(TASKS)}"
        for flag in ("num_k", "max_seq_length", "first_sent_limit", "other_sent_limit", "num_eval"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                yield f"--{flag} {value}: must be >= 1"
        if self.template is not None and self.template.count("*mask*") != 1:
            yield f"--template {self.template!r}: needs exactly one *mask*"
        if self.num_sample < 1:
            yield f"--num_sample {self.num_sample}: must be >= 1"
        if self.few_shot_type == "prompt" and (self.double_demo is not None or not self._is_default("num_sample")):
            given = "--double_demo" if self.double_demo is not None else f"--num_sample {self.num_sample}"
            yield f"{given} without --few_shot_type prompt-demo: only demonstrations use it"
        if self.mapping is not None and self.task_name in TASKS:
            yield from self._mapping_problems()
        if self.prefix_tuning:
            yield ("--prefix_tuning: not built for medium_models: the engine's prefix enters through a causal LM's "
                   "KV cache (a masked LM returns no cache to start it from real activations, and RoBERTa would "
                   "number the real tokens' positions after the prefix, where MeZO leaves them); upstream patched "
                   "RoBERTa's attention instead (docs/medium-models.md); use it with large_models/run.py")
        if self.linear_probing and self.task_name in TASKS and self.task.regression:
            yield (f"--linear_probing with --task_name {self.task_name}: a regression has no classes to probe "
                   f"(upstream's LinearRegression row, written into both label words, predicts the middle of the "
                   f"range for every example)")
        if self.tie_emb and (self.untie_emb or self.linear_probing):
            other = "--untie_emb" if self.untie_emb else "--linear_probing (which unties the head)"
            yield f"--tie_emb and {other}: choose one"

    def _copy_aliases(self) -> list[str]:
        """Upstream's ``--zero_order_sample n`` without ``--zero_order_sample_scheduler`` draws one direction per
        step in upstream's medium_models (its scheduler's default, none, is 1): so it does here, with a warning."""
        if (self.zero_order_sample not in (None, 1) and self.zero_order_sample_scheduler is None
                and self.trainer == "zo" and self._is_default("zo_num_samples")):
            warnings.warn(f"--zero_order_sample {self.zero_order_sample} without --zero_order_sample_scheduler: one "
                          f"direction per step, as upstream MeZO's medium_models; for {self.zero_order_sample} give "
                          f"--zero_order_sample_scheduler constant (or --zo_num_samples)", stacklevel=4)
            self.zero_order_sample = 1
        return super()._copy_aliases()

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
    def demos(self) -> bool:
        return self.few_shot_type == "prompt-demo"

    @property
    def seq_length(self) -> int:
        """The prompt's length limit: the task's or --max_seq_length, doubled for demonstrations with
        --double_demo (the task's default)."""
        length = self.max_seq_length or self.task.max_seq_length
        double = self.task.double_demo if self.double_demo is None else self.double_demo
        return 2 * length if self.demos and double else length

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
