"""Linear probing (``--linear_probing``): a logistic regression on the LM head's input, written into the head.

As upstream MeZO's ``large_models`` does it:

* **Samples.** Each training example's gold answer, placed after its prompt (no demonstrations); every answer
  token is one sample: the feature is the hidden state that the LM head reads at the position predicting that
  token, the class is the token id. A single-token label word (SST-2's `` great``, CB's ``Maybe``) gives one sample
  per example, read at the last prompt token; a longer answer (Copa) gives one per token, as upstream.
* **Fit.** scikit-learn's ``LogisticRegressionCV``: 10 values of C on a log grid from 1e-4 to 1e4, 5 stratified
  folds scored by accuracy, lbfgs, multinomial for three or more classes; ``tol`` 1e-4 and at most 5000
  iterations, or with ``--lp_early_stopping`` ``tol`` 0.01 and at most 1000. No intercept, since the heads of
  OPT, GPT-2 and LLaMA have no bias (upstream refused other families; a head with a bias gets the intercept).
* **Head.** Row ``t`` of the head's weight becomes the coefficients of class ``t``, so the logits of the classes'
  tokens are the regression's decision values and evaluation runs unchanged. With two classes scikit-learn keeps
  one row ``c`` (the log-odds of the second class); the two rows become ``-c/2`` and ``c/2``, whose softmax is the
  regression's probability. Tokens that are never a gold answer token keep their rows (a label word missing from
  the training set keeps its embedding row; a warning names it). The head must be untied first
  (``head.untie_embeddings``): upstream wrote into the tied weight, which also rewrote those tokens' input
  embeddings.
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch

from mezo_engine.data import encode_option, first_answer, option_lengths, pad_left
from mezo_engine.head import is_tied, lm_head
from mezo_engine.scoring import position_ids

logger = logging.getLogger(__name__)

NUM_CS = 10  # LogisticRegressionCV's grid of C values, 1e-4 .. 1e4 (upstream's default)
NUM_FOLDS = 5  # its stratified cross-validation folds (upstream's default): some answer needs this many samples


class ProbeError(ValueError):
    """The training set or model cannot be probed; the message names the task and what is wrong."""


def gold_rows(tokenizer, task, samples: Sequence, max_length: int) -> list[tuple[list[int], int]]:
    """Each sample's prompt + gold answer as token ids, and how many of them are the answer."""
    return [encode_option(tokenizer, task.template, s, first_answer(s.correct_candidate), (), max_length)
            for s in samples]


@contextmanager
def head_inputs(model):
    """Inside the block, the list it yields receives the LM head's input of every forward pass."""
    seen = []
    handle = lm_head(model).register_forward_hook(lambda module, args, output: seen.append(args[0].detach()))
    try:
        yield seen
    finally:
        handle.remove()


def _batch_features(model, rows: Sequence[Sequence[int]], lens: Sequence[int], pad_id: int):
    """(features, token ids) of the answer tokens of a batch of rows (see ``features``)."""
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in pad_left(rows, pad_id))
    keep = min(max(lens) + 1, ids.shape[1])  # the positions that predict the answer tokens, and one more
    with head_inputs(model) as seen:
        model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=keep,
              use_cache=False)
    hidden = seen[0][:, -keep:-1]
    xs = [hidden[i, hidden.shape[1] - n:] for i, n in enumerate(lens)]
    ys = [ids[i, ids.shape[1] - n:] for i, n in enumerate(lens)]
    return torch.cat(xs).float().cpu(), torch.cat(ys).cpu()


@torch.no_grad()
def features(model, tokenizer, task, samples: Sequence, batch_size: int = 8,
             max_length: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Probe samples of ``samples``: X (answer tokens, hidden size) as float32, y (answer tokens,) token ids.

    X[k] is the LM head's input at the position that predicts answer token y[k]; samples come in order, each
    example's answer tokens in order.
    """
    rows = gold_rows(tokenizer, task, samples, max_length)
    was_training = model.training
    model.eval()
    xs, ys = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        x, y = _batch_features(model, [r for r, _ in chunk], [n for _, n in chunk], tokenizer.pad_token_id)
        xs.append(x)
        ys.append(y)
    model.train(was_training)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def probe_settings(early_stopping: bool, fit_intercept: bool, seed: int = 0) -> dict:
    """``LogisticRegressionCV`` keyword arguments: upstream MeZO's, plus this scikit-learn's explicit defaults."""
    settings = dict(Cs=NUM_CS, cv=NUM_FOLDS, fit_intercept=fit_intercept, scoring="accuracy", random_state=seed,
                    tol=0.01 if early_stopping else 1e-4, max_iter=1000 if early_stopping else 5000)
    accepted = inspect.signature(_logistic_regression_cv()).parameters
    if "use_legacy_attributes" in accepted:  # scikit-learn >= 1.8 warns unless these are given
        settings.update(l1_ratios=(0.0,), use_legacy_attributes=False)
    return settings


def _logistic_regression_cv():
    from sklearn.linear_model import LogisticRegressionCV  # imported here: only linear probing needs it

    return LogisticRegressionCV


def fit_probe(X: np.ndarray, y: np.ndarray, early_stopping: bool = False, seed: int = 0,
              fit_intercept: bool = False):
    """The fitted ``LogisticRegressionCV`` from features ``X`` to token ids ``y`` (settings: ``probe_settings``)."""
    classes = np.unique(y)
    if len(classes) < 2:
        raise ProbeError(f"every one of the {len(y)} gold answer tokens is token {int(classes[0])}: a probe "
                         f"needs at least two different answers in the training set")
    counts = np.unique(y, return_counts=True)[1]
    if counts.max() < NUM_FOLDS:
        raise ProbeError(f"{len(y)} gold answer tokens, at most {counts.max()} of any one answer: the probe's "
                         f"{NUM_FOLDS}-fold stratified cross-validation needs {NUM_FOLDS} of one answer; give more "
                         f"training examples (--num_train)")
    return _logistic_regression_cv()(**probe_settings(early_stopping, fit_intercept, seed)).fit(X, y)


def head_rows(coef: np.ndarray, intercept: np.ndarray | None = None):
    """One weight row (and bias) per class: scikit-learn's single binary row ``c`` becomes ``-c/2`` and ``c/2``."""
    coef = np.asarray(coef)
    bias = None if intercept is None else np.asarray(intercept).reshape(-1)
    if coef.shape[0] == 1:
        coef = np.concatenate([-coef / 2, coef / 2])
        bias = None if bias is None else np.concatenate([-bias / 2, bias / 2])
    return coef, bias


def write_head(model, label_token_ids: Sequence[int], coef: np.ndarray, intercept: np.ndarray | None = None) -> None:
    """Write the probe into the rows ``label_token_ids`` (scikit-learn's ``classes_``) of the untied LM head."""
    head = lm_head(model)
    if is_tied(model):
        raise ProbeError("the LM head is tied to the input embeddings; untie it first (head.untie_embeddings)")
    weight, bias = head_rows(coef, intercept)
    if len(label_token_ids) != weight.shape[0]:
        raise ProbeError(f"{len(label_token_ids)} label tokens for {weight.shape[0]} coefficient rows")
    if bias is not None and getattr(head, "bias", None) is None:
        raise ProbeError("the probe has an intercept but this LM head has no bias")
    ids = torch.as_tensor(np.asarray(label_token_ids), dtype=torch.long, device=head.weight.device)
    with torch.no_grad():
        head.weight[ids] = torch.as_tensor(weight, dtype=head.weight.dtype, device=head.weight.device)
        if bias is not None:
            head.bias[ids] = torch.as_tensor(bias, dtype=head.bias.dtype, device=head.bias.device)


def unseen_answer_tokens(tokenizer, task, samples: Sequence, classes: Sequence[int]) -> list[int]:
    """Tokens of the candidates' answers that no gold answer of ``samples`` holds (their head rows stay)."""
    found = set()
    for s in samples:
        for c, n in zip(s.candidates or (), option_lengths(tokenizer, task.template, s, s.candidates or ())):
            found.update(tokenizer.encode(task.template.verbalize(s, c).strip(" "))[-n:] if n > 0 else ())
    return sorted(found - {int(c) for c in classes})


def linear_probe(model, tokenizer, task, samples: Sequence, early_stopping: bool = False, batch_size: int = 8,
                 max_length: int = 2048) -> dict:
    """Fit the probe on ``samples`` and write it into the (untied) head; returns what the result JSON records."""
    if is_tied(model):
        raise ProbeError("the LM head is tied to the input embeddings; untie it first (head.untie_embeddings)")
    X, y = features(model, tokenizer, task, samples, batch_size, max_length)
    logger.info("linear probing: %d samples of %d features, %d classes", *X.shape, len(np.unique(y)))
    try:
        clf = fit_probe(X, y, early_stopping, fit_intercept=getattr(lm_head(model), "bias", None) is not None)
    except ProbeError as err:
        raise ProbeError(f"--linear_probing on task {task.name}: {err}") from None
    write_head(model, clf.classes_, clf.coef_, clf.intercept_ if clf.fit_intercept else None)
    unseen = unseen_answer_tokens(tokenizer, task, samples, clf.classes_)
    if unseen:
        logger.warning("--linear_probing on task %s: %d answer token(s) of the candidates never occur in a gold "
                       "answer of the training set and keep their LM head rows: %s", task.name, len(unseen),
                       ", ".join(repr(tokenizer.decode([t])) for t in unseen[:10]))
    return {"train_accuracy": float(clf.score(X, y)), "C": float(np.ravel(clf.C_)[0]), "num_samples": len(y),
            "label_tokens": [tokenizer.decode([int(t)]) for t in clf.classes_], "unseen_answer_tokens": len(unseen),
            "early_stopping": early_stopping}
