"""Linear probing of a prompt's scored position (``--linear_probing``), as upstream MeZO's medium models do it
(``--trainer linearhead``; ``--from_linearhead`` trains on from it).

Each training prompt gives one sample: the feature is what the LM head's decoder reads at the mask (for RoBERTa
and BERT the head's dense layer and LayerNorm already applied; a causal LM's last position), the class is the gold
label's word. The fit is the engine's (``linear_probe.fit_probe``: ``LogisticRegressionCV`` over 10 values of C,
5 folds, with an intercept when the decoder has a bias, as upstream's for RoBERTa and BERT), and its coefficients
and intercepts are written into the label words' rows of the decoder, untied first (``modes.prepare_head``), so
the label-word logits are the regression's decision values and evaluation runs unchanged.

A regression (STS-B) is refused: upstream fits ``LinearRegression`` to the score and writes its single row into
both label words' rows, which makes their logits equal, so every prediction is the middle of the range.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medium_models.scoring import Collator, Feature, label_logits
from mezo_engine.head import lm_head
from mezo_engine.linear_probe import ProbeError, fit_probe, head_inputs, write_head

FOLDS = 5  # LogisticRegressionCV's default cross-validation (stratified), as upstream


@torch.inference_mode()
def probe_features(model, features_: Sequence[Feature], collator: Collator, label_ids: Sequence[int],
             batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """X: the decoder's input at each prompt's scored position (prompts, hidden), float32; y: the gold label's
    word id of each prompt."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    xs = []
    for start in range(0, len(features_), batch_size):
        batch = {k: v.to(device) for k, v in collator(features_[start:start + batch_size]).items()}
        with head_inputs(model) as seen:
            label_logits(model, batch, label_ids, collator.causal)
        xs.append(seen[0].reshape(len(batch["labels"]), -1).float().cpu())
    model.train(was_training)
    y = np.asarray([label_ids[f.label] for f in features_])
    return torch.cat(xs).numpy(), y


def linear_probe(model, features_: Sequence[Feature], collator: Collator, label_ids: Sequence[int],
                 early_stopping: bool, batch_size: int) -> dict:
    """Fit the probe on ``features_`` and write it into the (untied) decoder; returns what the result records."""
    X, y = probe_features(model, features_, collator, label_ids, batch_size)
    fewest = min(np.unique(y, return_counts=True)[1])
    if fewest < FOLDS:
        raise ProbeError(f"--linear_probing: the fit's {FOLDS} stratified folds need {FOLDS} training examples of "
                         f"every label; one label has {fewest} (use a larger --num_k)")
    try:
        clf = fit_probe(X, y, early_stopping, fit_intercept=getattr(lm_head(model), "bias", None) is not None)
    except ProbeError as err:
        raise ProbeError(f"--linear_probing: {err}") from None
    write_head(model, clf.classes_, clf.coef_, clf.intercept_ if clf.fit_intercept else None)
    return {"train_accuracy": float(clf.score(X, y)), "C": float(np.ravel(clf.C_)[0]), "num_samples": len(y),
            "early_stopping": early_stopping}
