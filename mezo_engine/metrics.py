"""Evaluation metrics: accuracy for classification (F1 of the positive label and Matthews correlation for the
GLUE tasks that use them, Pearson's and Spearman's correlation for the regression STS-B), SQuAD-style exact match
and token F1 for generation.

The definitions follow MeZO's ``large_models/metrics.py``, which in turn follows the official SQuAD v1.1
evaluation script (normalise, then compare bags of tokens; take the best gold answer).
"""
from __future__ import annotations

import logging
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

logger = logging.getLogger(__name__)
_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Gold answers that mean "the question cannot be answered": only an exact (normalised) match scores.
_NO_ANSWER = ("CANNOTANSWER", "no answer")


@dataclass
class Prediction:
    """One evaluated sample: its gold candidate (or list of gold answers) and the model's choice."""

    correct_candidate: Any
    predicted_candidate: Any


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, and collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_list(gold: Any) -> list[str]:
    return list(gold) if isinstance(gold, (list, tuple)) else [gold]


def _token_f1(prediction: str, gold: str) -> float:
    """Token-level F1 between one prediction and one gold answer, both normalised."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: Any) -> float:
    """1.0 when ``prediction`` equals any gold answer after normalisation, else 0.0."""
    target = normalize_answer(prediction)
    return float(any(normalize_answer(g) == target for g in _as_list(gold)))


def f1_score(prediction: str, gold: Any) -> float:
    """The best token F1 of ``prediction`` over the gold answers.

    As in MeZO, a first gold answer of ``CANNOTANSWER`` or ``no answer`` asks for an exact match instead.
    """
    golds = _as_list(gold)
    if not golds:
        raise ValueError("f1_score needs at least one gold answer")
    if golds[0] in _NO_ANSWER:
        return float(normalize_answer(golds[0]) == normalize_answer(prediction))
    return max(_token_f1(prediction, g) for g in golds)


def _is_correct(pred: Any) -> bool:
    """Accuracy of one prediction; a list of gold candidates accepts any of them."""
    gold = pred.correct_candidate
    if isinstance(gold, (list, tuple)):
        return pred.predicted_candidate in gold
    return pred.predicted_candidate == gold


def example_scores(predictions: Sequence[Any], metric: str) -> list[float]:
    """Each prediction's ``metric`` ("accuracy": 1 or 0, "em", "f1"): what paired tests between runs compare.

    Each prediction needs ``correct_candidate`` and ``predicted_candidate`` attributes (see ``Prediction``).
    """
    if metric == "accuracy":
        return [float(_is_correct(p)) for p in predictions]
    if metric == "em":
        return [exact_match(p.predicted_candidate, p.correct_candidate) for p in predictions]
    if metric == "f1":
        return [f1_score(p.predicted_candidate, p.correct_candidate) for p in predictions]
    raise ValueError(f"unknown metric {metric!r}; known: accuracy, em, f1")


def calculate_metric(predictions: Sequence[Any], metric: str) -> float:
    """The mean of ``metric`` ("accuracy", "em" or "f1") over ``predictions`` (``example_scores``)."""
    if not predictions:
        raise ValueError("calculate_metric needs at least one prediction")
    scores = example_scores(predictions, metric)
    return sum(scores) / len(scores)


def binary_f1(gold: Sequence[int], predicted: Sequence[int], positive: int = 1) -> float:
    """F1 of the ``positive`` label (GLUE's MRPC and QQP metric); 0 when it is never predicted nor gold."""
    tp = sum(g == p == positive for g, p in zip(gold, predicted))
    fp = sum(p == positive != g for g, p in zip(gold, predicted))
    fn = sum(g == positive != p for g, p in zip(gold, predicted))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_corrcoef(gold: Sequence[int], predicted: Sequence[int]) -> float:
    """Matthews correlation of two binary labelings (GLUE's CoLA metric); 0 when either is constant."""
    tp = sum(g == 1 and p == 1 for g, p in zip(gold, predicted))
    tn = sum(g == 0 and p == 0 for g, p in zip(gold, predicted))
    fp = sum(g == 0 and p == 1 for g, p in zip(gold, predicted))
    fn = sum(g == 1 and p == 0 for g, p in zip(gold, predicted))
    denominator = ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's correlation of two equally long sequences (GLUE's STS-B metric); 0 when either is constant."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx and syy else 0.0


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks (as ``scipy.stats.rankdata``)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start:end + 1]:
            out[i] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's of the ranks (ties share their mean rank)."""
    return pearson(ranks(xs), ranks(ys))


def warn_if_one_class(predicted: Sequence[Any]) -> None:
    """Log a warning when every one of two or more predicted classes is the same: a diverged run (its loss
    saturated, every input scored alike) or a model that ignores its input, whatever its accuracy says."""
    if len(predicted) > 1 and all(p == predicted[0] for p in predicted):
        logger.warning("every prediction is class %r (%d of %d): the model ignores its input; a diverged run "
                       "(docs/troubleshooting.md) or a prompt it cannot read", predicted[0], len(predicted),
                       len(predicted))
