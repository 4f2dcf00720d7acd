"""Training objectives: what a step minimises, as a function ``(model, batch) -> scalar tensor``.

The trainer is handed one objective (``MezoTrainer(objective=...)``) and calls it from ``compute_loss``; the
zo step calls it twice per step under the perturbed weights. The app picks it from its own flags
(``large_models.pipeline.objective_for``), and the batch (``data.TrainCollator``) carries what the objective needs:

* ``AnswerLoss`` (differentiable; ``scoring.batch_loss``): cross-entropy over the candidates
  (``--train_as_classification``), the LM loss on the answer tokens (``--only_train_option``, the default), or
  on every token of the rows.
* ``F1Objective`` (``--non_diff``, MeZO's non-differentiable objective for generation tasks, zo only): minus
  the mean SQuAD F1 of the model's generated answers against the gold answers. The batch holds the prompts
  without their answers (``input_ids``/``attention_mask``) and the gold answers (``gold``); the answers are
  generated with the evaluation's own ``evaluation.generate_batch``.

Each objective also says the weight of a batch (``weight(batch)``): the count its loss is a mean over (examples
for the classification loss and the F1, counted answer tokens for the LM loss). Data-parallel ranks average their
losses with these weights (``distributed.weighted_mean``), so the result is the loss of the whole global batch.
An objective without ``weight`` counts 1 per batch (``batch_weight``).

``copies_loss(model, batch, copies)`` gives the loss of each of ``copies`` copies of a batch from one forward of
them all (``batched_queries``: each copy runs with its own adapter values, FZOO's queries in one pass). An
objective without it is queried one forward at a time.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from mezo_engine.evaluation import EvalConfig, generate_batch
from mezo_engine.metrics import Prediction, calculate_metric
from mezo_engine.scoring import batch_loss, copies_loss, counted_tokens, repeat_rows

Objective = Callable[[torch.nn.Module, dict], torch.Tensor]


class AnswerLoss:
    """The differentiable training loss of a candidate batch (see ``scoring.batch_loss``)."""

    def __init__(self, as_classification: bool, only_train_option: bool = True):
        self.as_classification, self.only_train_option = as_classification, only_train_option

    def __call__(self, model, batch: dict) -> torch.Tensor:
        return batch_loss(model, batch, self.as_classification, self.only_train_option)

    def copies_loss(self, model, batch: dict, copies: int) -> torch.Tensor:
        """The loss of each of ``copies`` copies of the batch, run as one batch (``scoring.copies_loss``)."""
        return copies_loss(model, batch, copies, self.as_classification, self.only_train_option)

    def weight(self, batch: dict) -> int:
        """Examples (classification: a mean over examples), else the tokens the LM loss counts."""
        if self.as_classification:
            return int(batch["gold_row"].numel())
        return counted_tokens(batch, all_tokens=not self.only_train_option)


class F1Objective:
    """Minus the mean over the batch of each generated answer's SQuAD F1 (best over its gold answers), as
    upstream MeZO's ``--non_diff``. No gradient: for zeroth-order training only."""

    def __init__(self, tokenizer, cfg: EvalConfig):
        self.tokenizer, self.cfg = tokenizer, cfg

    def __call__(self, model, batch: dict) -> torch.Tensor:
        answers = generate_batch(model, self.tokenizer, batch["input_ids"], batch["attention_mask"], self.cfg)
        return -torch.tensor(mean_f1(answers, batch["gold"]), dtype=torch.float32)

    def copies_loss(self, model, batch: dict, copies: int) -> torch.Tensor:
        """Minus the mean F1 of each of ``copies`` copies of the batch, generated as one batch (copy q: rows q*B..)."""
        ids, mask = (repeat_rows(batch[k], copies) for k in ("input_ids", "attention_mask"))
        answers = generate_batch(model, self.tokenizer, ids, mask, self.cfg)
        rows = len(batch["gold"])
        return -torch.tensor([mean_f1(answers[q * rows:(q + 1) * rows], batch["gold"]) for q in range(copies)],
                             dtype=torch.float32)

    def weight(self, batch: dict) -> int:
        """Examples: the F1 is a mean over them."""
        return len(batch["gold"])


def mean_f1(answers: list[str], gold: list[list[str]]) -> float:
    """The mean SQuAD F1 of ``answers`` against their gold answer lists (``metrics.f1_score`` per answer)."""
    return calculate_metric([Prediction(g, a) for g, a in zip(gold, answers)], "f1")


def batch_weight(objective: Objective, batch: dict) -> float:
    """The weight of ``batch`` under ``objective`` (its ``weight`` method; 1 for an objective without one)."""
    weight = getattr(objective, "weight", None)
    return float(weight(batch)) if weight is not None else 1.0

