"""The label words' logits at the scored position, the training loss over them, batching and evaluation.

A batch holds prompts (``prompts.Encoded``): a masked LM's right-padded with the mask's index per row
(``position``), a causal LM's left-padded so that every row ends at its scored position. A masked LM runs its
encoder and applies its MLM head to the mask rows only; a causal LM keeps only its last logits. Either way the
result is one row of label-word logits per example, and the loss is the cross-entropy over them with the gold
label, as LM-BFF's prompt-based fine-tuning (and MeZO's medium models) train.

A regression task (STS-B) has two label words, its low and high end; it trains on the KL divergence from the
target distribution ``[1 - y', y']`` (``y'``: the score scaled to [0, 1] on the task's bounds) to the softmax of
the two label-word logits, and predicts ``low + (high - low) * p(high word)``, as LM-BFF. LM-BFF wrote the loss as
``nn.KLDivLoss(log_target=True)`` with the probabilities as target, which reads them as log-probabilities: its
loss is ``mean(exp(t) * (t - log p))``, minimised at ``p = softmax(t)``, a target squeezed into [0.27, 0.73]. Here
the target is a distribution (``log_target=False``) and the loss the KL divergence averaged over the batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mezo_engine.data import pad_left, pad_right
from mezo_engine.metrics import binary_f1, matthews_corrcoef, pearson, spearman
from mezo_engine.scoring import float32_or_wider, position_ids, repeat_rows

# The MLM head of each masked-LM family (attribute of the ...ForMaskedLM model), applied to the mask rows only.
MLM_HEADS = ("lm_head", "cls", "generator_lm_head", "predictions")


@dataclass
class Feature:
    """A prompt (``prompts.Encoded``) with its gold label index."""

    ids: list[int]
    position: int
    label: int | float  # a regression's score
    token_type_ids: list[int] | None = None


class Collator:
    """Batches Features: right padding with the mask indices for a masked LM, left padding for a causal LM."""

    def __init__(self, pad_id: int, causal: bool):
        self.pad_id, self.causal = pad_id, causal

    def __call__(self, features: Sequence[Feature]) -> dict:
        pad = pad_left if self.causal else pad_right
        ids, mask = pad([f.ids for f in features], self.pad_id)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f.label for f in features]),
                 "position": torch.tensor([f.position for f in features])}
        if features[0].token_type_ids is not None:
            batch["token_type_ids"] = pad([f.token_type_ids for f in features], 0)[0]
        return batch


def unwrapped(model):
    """The transformers model under a PEFT wrapper (its LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def mlm_head(model):
    """The MLM head module of a masked LM, or None if it has none of the known names."""
    return next((getattr(model, n) for n in MLM_HEADS if isinstance(getattr(model, n, None), torch.nn.Module)), None)


def position_logits(model, batch: dict, causal: bool) -> torch.Tensor:
    """Vocabulary logits at each row's scored position: (rows, vocabulary)."""
    if causal:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=position_ids(batch["attention_mask"]), logits_to_keep=1, use_cache=False)
        return out.logits[:, -1]
    inner = unwrapped(model)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    rows = torch.arange(batch["input_ids"].shape[0], device=batch["input_ids"].device)
    head = mlm_head(inner)
    if head is None:  # an unknown family: the whole model, every position through its head
        return model(**inputs).logits[rows, batch["position"]]
    hidden = inner.base_model(**inputs).last_hidden_state
    return head(hidden[rows, batch["position"]])


def label_logits(model, batch: dict, label_ids: Sequence[int], causal: bool) -> torch.Tensor:
    """The label words' logits at each row's scored position: (rows, labels)."""
    index = torch.tensor(list(label_ids), device=batch["input_ids"].device)
    return float32_or_wider(position_logits(model, batch, causal).index_select(-1, index))


class LabelLoss:
    """The training objective: cross-entropy of the label-word logits against the gold labels; a prediction is the
    label with the highest logit (the first on ties), from the logits averaged over an example's copies."""

    def __init__(self, label_ids: Sequence[int], causal: bool):
        self.label_ids, self.causal = list(label_ids), causal

    def __call__(self, model, batch: dict) -> torch.Tensor:
        return F.cross_entropy(label_logits(model, batch, self.label_ids, self.causal), batch["labels"])

    def copies_loss(self, model, batch: dict, copies: int) -> torch.Tensor:
        """The loss of each of ``copies`` copies of the batch, run as one batch (copy q: rows q*B..q*B+B-1)."""
        tiled = {k: repeat_rows(v, copies) for k, v in batch.items() if k != "labels"}
        logits = label_logits(model, tiled, self.label_ids, self.causal).unflatten(0, (copies, -1))
        return torch.stack([F.cross_entropy(part, batch["labels"]) for part in logits])

    def weight(self, batch: dict) -> int:
        """Examples: the loss is a mean over them."""
        return int(batch["labels"].numel())

    def readout(self, logits: torch.Tensor) -> int:
        """The predicted label of one example from its label-word logits, (copies, labels)."""
        return int(logits.mean(0).argmax().item())


class RegressionLoss(LabelLoss):
    """A regression's objective (STS-B, see the module docstring): the KL divergence from ``[1 - y', y']`` to the
    softmax of the two label-word logits, averaged over the batch; a prediction is ``low + (high - low) * p``,
    ``p`` the high word's probability, averaged over an example's copies."""

    def __init__(self, label_ids: Sequence[int], causal: bool, bounds: tuple[float, float]):
        super().__init__(label_ids, causal)
        if len(self.label_ids) != 2:
            raise ValueError(f"a regression needs two label words (its low and high end), got {len(label_ids)}")
        self.low, self.high = bounds

    def target(self, scores: torch.Tensor) -> torch.Tensor:
        """``[1 - y', y']`` per row, ``y'`` the score scaled to [0, 1] on the bounds."""
        scaled = (scores - self.low) / (self.high - self.low)
        return torch.stack([1 - scaled, scaled], -1)

    def __call__(self, model, batch: dict) -> torch.Tensor:
        logp = F.log_softmax(label_logits(model, batch, self.label_ids, self.causal), -1)
        return F.kl_div(logp, self.target(batch["labels"].to(logp.dtype)), reduction="batchmean")

    def readout(self, logits: torch.Tensor) -> float:
        """The predicted score of one example from its label-word logits, (copies, 2)."""
        return (self.low + (self.high - self.low) * logits.softmax(-1)[:, 1]).mean().item()


@torch.inference_mode()
def all_label_logits(model, features: Sequence[Feature], collator: Collator, label_ids: Sequence[int],
                     batch_size: int, progress: bool = False) -> torch.Tensor:
    """The label-word logits of every feature, (features, labels) on the CPU, computed in batches of similar
    length."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(features)), key=lambda i: -len(features[i].ids))
    out = torch.zeros(len(features), len(label_ids), dtype=torch.float64)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc="scoring", disable=not progress, leave=False):
        batch = {k: v.to(device) for k, v in collator([features[i] for i in idx]).items()}
        out[idx] = label_logits(model, batch, label_ids, collator.causal).detach().to("cpu", torch.float64)
    model.train(was_training)
    return out


def predict(model, features: Sequence[Feature], collator: Collator, objective: LabelLoss, batch_size: int,
            progress: bool = False, copies: int = 1) -> list:
    """The prediction of every example (``objective.readout``): its label index, or a regression's score.
    ``features`` holds ``copies`` consecutive prompts per example (the same query with other demonstrations),
    whose logits the readout averages."""
    logits = all_label_logits(model, features, collator, objective.label_ids, batch_size, progress)
    return [objective.readout(group) for group in logits.view(-1, copies, logits.shape[-1])]


def metrics(gold: Sequence, predicted: Sequence, main: str) -> dict[str, float]:
    """Accuracy, and the task's own dev metric if it is another one (``f1`` of label 1, or ``mcc``); for a
    regression (``pearson``) Pearson's and Spearman's correlation."""
    if main == "pearson":
        return {"pearson": pearson(predicted, gold), "spearman": spearman(predicted, gold)}
    out = {"accuracy": sum(g == p for g, p in zip(gold, predicted)) / len(gold)}
    if main == "f1":
        out["f1"] = binary_f1(gold, predicted)
    elif main == "mcc":
        out["mcc"] = matthews_corrcoef(gold, predicted)
    return out
