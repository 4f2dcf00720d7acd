"""A zeroth-order ``Trainer`` for your own Hugging Face script: change ``Trainer`` to ``ZOTrainer`` and
``TrainingArguments`` to ``ZOTrainingArguments`` (docs/your-data.md).

    from mezo_engine import ZOTrainer, ZOTrainingArguments
    args = ZOTrainingArguments(output_dir="out", learning_rate=1e-3, zo_eps=1e-2, lora=True, max_steps=200)
    ZOTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev, data_collator=collator).train()

The model minimises its own loss (from the batch's ``labels``), computed by the Trainer's own ``compute_loss``, so
any causal or masked LM and any dataset of ``input_ids``/``labels`` work as with ``Trainer``; ``objective=`` takes
another ``(model, batch) -> loss``. Everything else is the engine's: the ZO methods (``zo_optimizer``), the modes
and adapters (``lora``, ``xgblora``, ...), exact resume with its checks (``train(resume_from_checkpoint=True)``
takes the newest checkpoint that passes them), the divergence stops, budgets, the stall guard under torchrun, and
the ZO series in the logs (``report_to``). ``trainer="regular"`` trains by backprop through the same modes.
Evaluation is the Trainer's (``eval_loss``, ``compute_metrics``); the best dev model follows
``metric_for_best_model`` (default ``loss``).

``ZOSFTTrainer`` / ``ZOSFTConfig`` do the same for TRL's ``SFTTrainer`` (its dataset handling: prompt/completion
or chat datasets, chat templates, completion-only loss), when ``trl`` is installed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import TrainOutput

from mezo_engine import runner
from mezo_engine.arguments import EngineArguments
from mezo_engine.status import Kind
from mezo_engine.trainer import MezoTrainer

logger = logging.getLogger(__name__)

RESUME_VALUES = {True: "auto", False: None, None: None}


@dataclass
class ZOTrainingArguments(EngineArguments):
    """The engine's arguments (every flag of ``run.py`` that is not a task's) with a drop-in's defaults: zo
    training, the Trainer's column handling, and the model's name taken from the model."""

    trainer: Literal["none", "regular", "zo"] = field(default="zo", metadata={
        "help": "zo (zeroth-order, the default) or regular (backprop) training."})
    model_name: str = field(default="", metadata={
        "help": "The model's name, recorded in checkpoints (default: the model's own name_or_path)."})
    remove_unused_columns: bool = field(default=True, metadata={
        "help": "Drop the dataset columns the model's forward does not take (the Trainer's default)."})
    metric_for_best_model: str | None = field(default="loss", metadata={
        "help": "The eval metric the best dev model follows (with --load_best_model_at_end)."})


class ModelLoss:
    """The model's own loss (``outputs.loss`` from the batch's ``labels``); the weight of a batch for data-parallel
    averaging is the label tokens the loss averages over (a causal LM's shifted labels)."""

    def __init__(self, causal: bool):
        self.causal = causal

    def __call__(self, model, batch: dict) -> torch.Tensor:
        return model(**batch).loss

    def weight(self, batch: dict) -> int:
        labels = batch.get("labels")
        if labels is None:
            return int(batch["input_ids"].shape[0])
        return int((labels[..., 1:] if self.causal else labels).ne(-100).sum())


class ZOTrainerMixin:
    """What makes a Trainer (``Trainer``, TRL's ``SFTTrainer``) a ZO trainer: the run's mode, callbacks and checks
    from ``runner.prepare_run``, the loss from the Trainer itself, ``train`` with the engine's resume rules."""

    def __init__(self, model=None, args: EngineArguments | None = None, *pos, objective=None,
                 callbacks: list[TrainerCallback] | None = None, **kwargs):
        if not isinstance(args, EngineArguments):
            raise TypeError(f"{type(self).__name__} needs its arguments class ({self.arguments_class().__name__}), "
                            f"got {type(args).__name__}")
        if args.trainer not in ("zo", "regular"):
            raise ValueError(f"{type(self).__name__}: trainer={args.trainer!r}; use 'zo' or 'regular'")
        if not args.model_name:
            args.model_name = getattr(model, "name_or_path", "") or type(model).__name__
        self._own_objective = objective is not None
        objective = objective or ModelLoss(causal=not getattr(model.config, "is_encoder_decoder", False)
                                           and type(model).__name__.endswith("ForCausalLM"))
        greater = args.greater_is_better if args.greater_is_better is not None else \
            not str(args.metric_for_best_model or "loss").endswith("loss")
        parts = runner.prepare_run(args, model, objective, lambda: [], args.metric_for_best_model or "loss",
                                   greater_is_better=greater)
        kw = parts.trainer_kwargs()
        kw["callbacks"] = [*kw["callbacks"], *(callbacks or [])]
        super().__init__(*pos, args=args, objective=objective, evaluator=None, **kw, **kwargs)
        self.status = None

    @classmethod
    def arguments_class(cls) -> type:
        return ZOTrainingArguments

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """An ``objective`` given to the constructor, else the Trainer's own (the model's loss from ``labels``)."""
        if self._own_objective:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # the class after MezoTrainer in the method order: Trainer, or SFTTrainer for ZOSFTTrainer
        return super(MezoTrainer, self).compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """The Trainer's evaluation (``eval_loss``, ``compute_metrics``) of ``eval_dataset``."""
        started = time.perf_counter()
        metrics = super(MezoTrainer, self).evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        self.ledger.eval_s += time.perf_counter() - started
        self.ledger.dev_evaluations += 1
        return metrics

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs) -> TrainOutput:
        """The Trainer's training loop with the engine's resume rules: ``resume_from_checkpoint`` True (or "auto")
        takes the newest checkpoint in ``output_dir`` that passes the checks (damaged ones set aside), a path must
        pass them. ``self.status`` says how it ended (completed, budget reached, interrupted at step N, diverged at
        step N), as the result JSON of ``run.py`` does; a diverged run logs the cause instead of raising."""
        resume = RESUME_VALUES.get(resume_from_checkpoint, resume_from_checkpoint)

        def fit(checkpoint):
            return super(ZOTrainerMixin, self).train(resume_from_checkpoint=checkpoint, **kwargs)

        _, summary, status = runner.train(self.args, self, resume=resume, fit=fit)
        self.status = status.format()
        if status.kind is Kind.DIVERGED:
            logger.error("training stopped: %s", summary.get("error"))
        metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
        return TrainOutput(self.state.global_step, summary.get("train_loss", float("nan")),
                           {**metrics, "status": self.status})


class ZOTrainer(ZOTrainerMixin, MezoTrainer):
    """``transformers.Trainer`` trained zeroth-order (or by backprop) through the engine; see the module docstring."""
