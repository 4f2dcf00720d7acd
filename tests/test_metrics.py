"""Metrics against numbers worked out by hand."""
from __future__ import annotations

import pytest

from mezo_engine.metrics import (Prediction, calculate_metric, exact_match, f1_score, normalize_answer, pearson, ranks,
                                 spearman)


def test_normalize_answer():
    assert normalize_answer("The  Cat's, hat!") == "cats hat"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("  ") == ""


def test_f1_score_by_hand():
    # prediction tokens {cat, sat}, gold {cat, sat, down}: precision 2/2, recall 2/3 -> 2*(1*2/3)/(1+2/3) = 0.8
    assert f1_score("the cat sat", ["cat sat down"]) == pytest.approx(0.8)
    assert f1_score("blue car", ["red car"]) == pytest.approx(0.5)
    assert f1_score("Denver Broncos", ["Broncos", "the Denver Broncos."]) == pytest.approx(1.0)  # best gold
    assert f1_score("Denver Broncos", "Broncos") == pytest.approx(2 * 0.5 * 1 / 1.5)  # one gold string
    assert f1_score("nothing", ["Broncos"]) == 0.0
    assert f1_score("", ["Broncos"]) == 0.0
    # a gold token matches one predicted token only: precision 1/3, recall 1/1 -> 0.5
    assert f1_score("go go go", ["go"]) == pytest.approx(0.5)


def test_f1_no_answer_gold_needs_exact_match():
    assert f1_score("no answer", ["no answer"]) == 1.0
    assert f1_score("no answer here", ["no answer"]) == 0.0


def test_exact_match():
    assert exact_match("The Broncos.", ["broncos"]) == 1.0
    assert exact_match("Denver", ["Broncos", "Denver Broncos"]) == 0.0
    assert exact_match("denver broncos", "Denver Broncos") == 1.0


def test_calculate_metric():
    preds = [Prediction(["cat sat down"], "the cat sat"), Prediction(["red car"], "blue car")]
    assert calculate_metric(preds, "f1") == pytest.approx((0.8 + 0.5) / 2)
    ems = [Prediction(["broncos"], "The Broncos."), Prediction(["Broncos"], "Denver")]
    assert calculate_metric(ems, "em") == pytest.approx(0.5)
    accs = [Prediction(1, 1), Prediction(1, 0), Prediction(2, 2), Prediction("I went to bed.", "I went to bed.")]
    assert calculate_metric(accs, "accuracy") == pytest.approx(0.75)
    assert isinstance(calculate_metric(accs, "accuracy"), float)


def test_accuracy_with_several_gold_candidates():
    preds = [Prediction(["Berlin", "Bonn"], "Bonn"), Prediction(["Obama"], "Merkel")]
    assert calculate_metric(preds, "accuracy") == pytest.approx(0.5)


def test_calculate_metric_errors():
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        calculate_metric([Prediction(1, 1)], "bleu")
    with pytest.raises(ValueError, match="at least one prediction"):
        calculate_metric([], "accuracy")


def test_pearson_and_spearman_match_scipy_with_ties():
    """STS-B's metrics (as GLUE computes them with scipy.stats), on scores with tied values."""
    from scipy import stats  # scikit-learn's dependency, so the project's
    xs, ys = [0.5, 2.0, 2.0, 3.5, 4.8, 1.0, 2.0], [1.0, 1.5, 2.5, 2.5, 5.0, 0.2, 3.0]
    assert ranks(xs) == list(stats.rankdata(xs))
    assert pearson(xs, ys) == pytest.approx(stats.pearsonr(xs, ys)[0], abs=1e-12)
    assert spearman(xs, ys) == pytest.approx(stats.spearmanr(xs, ys)[0], abs=1e-12)
    assert pearson([1.0, 1.0, 1.0], ys[:3]) == 0.0  # constant predictions: 0, as matthews_corrcoef
