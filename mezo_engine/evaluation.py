"""Zero-shot / in-context evaluation: batched candidate scoring and batched generation.

Classification: every candidate is scored by the mean log-probability of its answer tokens (scoring.py: each
prompt once with ``--scoring shared``, a row per candidate with ``rows``); the prediction is the argmax over a
sample's candidates. Samples are batched longest first, so padding stays small; the scores equal those of one
sample at a time (tested).
SFC calibration (``--sfc`` / ``--icl_sfc``, as upstream MeZO): a candidate's score is instead the *sum* of its
answer log-probabilities minus their sum after the template's calibration prompt (``Template.calibration``,
without the input; with ``icl_sfc`` after the same demonstrations). The calibration rows go through the same
batched scoring as the candidates, in the same batches.
Generation (SQuAD, DROP): greedy or sampled decoding of the answer, cut at ``eos_token``; ``generate_batch``
also serves the non-differentiable training objective (objectives.py).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mezo_engine import distributed
from mezo_engine.data import collate_candidates, collate_rows, encode_candidates, encode_prompt, pad_left
from mezo_engine.metrics import Prediction, calculate_metric, warn_if_one_class
from mezo_engine.scoring import candidate_logprobs, mean_option_logprob, summed_option_logprob, token_logprobs

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """How candidates are scored and answers generated. The app fills it from its own flags (``large_models``:
    ``pipeline.eval_config``); the engine reads no flag of its own here."""

    batch_size: int = 8
    max_length: int = 2048
    max_new_tokens: int = 50
    sampling: bool = False
    temperature: float = 1.0
    num_beams: int = 1
    top_k: int | None = None
    top_p: float = 0.95
    eos_token: str = "\n"
    progress: bool = True
    scoring: str = "shared"  # or "rows": see scoring.py
    calibration: str = "none"  # "sfc" (calibration prompt alone) or "icl_sfc" (after the demonstrations)


def _batches(order: Sequence[int], size: int):
    for start in range(0, len(order), size):
        yield order[start:start + size]


@torch.inference_mode()
def score_rows(model, rows: Sequence[Sequence[int]], option_lens: Sequence[int], pad_id: int,
               batch_size: int, progress: bool = False) -> list[float]:
    """Mean answer log-probability of every row, computed in batches of similar length."""
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    scores = [0.0] * len(rows)
    for idx in tqdm(list(_batches(order, batch_size)), desc="scoring", disable=not progress, leave=False):
        batch = collate_rows([rows[i] for i in idx], [option_lens[i] for i in idx], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        lp, mask = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["option_len"])
        for i, s in zip(idx, mean_option_logprob(lp, mask).tolist()):
            scores[i] = s
    return scores


def demo_sets_for(samples: Sequence, demos: Sequence) -> list:
    """``demos`` is one demonstration set shared by every sample, or (a list of lists) one set per sample."""
    if demos and isinstance(demos[0], (list, tuple)):
        if len(demos) != len(samples):
            raise ValueError(f"{len(demos)} demonstration sets for {len(samples)} samples")
        return list(demos)
    return [demos] * len(samples)


@torch.inference_mode()
def score_features(model, features: Sequence, pad_id: int, batch_size: int, shared: bool = True,
                   progress: bool = False, total: bool = False) -> list[list[float]]:
    """Mean (``total``: summed) answer log-probability of every candidate of every ``data.Feature``,
    ``batch_size`` features per batch (longest first); ``shared``: each prompt once (rows where it cannot be
    shared exactly)."""
    device = next(model.parameters()).device
    order = sorted(range(len(features)), key=lambda i: -max(len(r) for r in features[i].rows))
    scores = [None] * len(features)
    reduce = summed_option_logprob if total else mean_option_logprob
    for idx in tqdm(list(_batches(order, batch_size)), desc="scoring", disable=not progress, leave=False):
        batch = collate_candidates([features[i] for i in idx], pad_id, shared)
        lp, mask = candidate_logprobs(model, {k: v.to(device) for k, v in batch.items()})
        flat = reduce(lp, mask).tolist()
        for i in idx:
            scores[i], flat = flat[:len(features[i].rows)], flat[len(features[i].rows):]
    return scores


def candidate_scores(model, tokenizer, template, samples: Sequence, demos: Sequence, cfg: EvalConfig) -> list:
    """Every candidate's score, a list per sample: its mean answer log-probability, or with ``cfg.calibration``
    its SFC-calibrated summed log-probability. ``cfg.scoring``: ``shared`` (each prompt once) or ``rows`` (a row
    per candidate, upstream's layout)."""
    demo_sets = demo_sets_for(samples, demos)
    features = [encode_candidates(tokenizer, template, s, s.candidates, d, 0, cfg.max_length)
                for s, d in zip(samples, demo_sets)]
    if cfg.calibration != "none":
        features += calibration_features(tokenizer, template, samples, demo_sets, cfg)
    shared = cfg.scoring == "shared"
    if shared and (unshared := sum(f.prompt is None for f in features)):
        logger.info("%d of %d examples scored by rows: their prompt tokens are not a prefix of every candidate "
                    "row (a BPE merge across the boundary, an empty SFC calibration prompt, or a row cut by "
                    "--max_length)%s", unshared, len(features),
                    "; each SFC calibration prompt counted as an example" if cfg.calibration != "none" else "")
    scores = score_features(model, features, tokenizer.pad_token_id, cfg.batch_size, shared, cfg.progress,
                            total=cfg.calibration != "none")
    if cfg.calibration == "none":
        return scores
    raw, calibrating = scores[:len(samples)], scores[len(samples):]
    return [[a - b for a, b in zip(r, c)] for r, c in zip(raw, calibrating)]


def calibration_features(tokenizer, template, samples: Sequence, demo_sets: Sequence, cfg: EvalConfig) -> list:
    """The candidates of every sample after ``template``'s SFC calibration prompt: alone (``sfc``), or after the
    sample's demonstrations (``icl_sfc``), as upstream MeZO encodes them."""
    calibration = template.calibration()
    return [encode_candidates(tokenizer, calibration, s, s.candidates, d if cfg.calibration == "icl_sfc" else (),
                              0, cfg.max_length) for s, d in zip(samples, demo_sets)]


def predict_candidates(model, tokenizer, template, samples: Sequence, demos: Sequence, cfg: EvalConfig) -> list:
    """The highest-scoring candidate of each sample (the first one on ties); ``demos``: one shared set, or one
    set per sample."""
    scores = candidate_scores(model, tokenizer, template, samples, demos, cfg)
    return [sample.candidates[max(range(len(sc)), key=sc.__getitem__)] for sample, sc in zip(samples, scores)]


def _stop_ids(tokenizer, eos_token: str) -> list[int]:
    ids = [tokenizer.eos_token_id]
    text_ids = tokenizer.encode(eos_token, add_special_tokens=False)
    if text_ids:
        ids.append(text_ids[-1])
    return ids


@torch.inference_mode()
def generate_batch(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   cfg: EvalConfig) -> list[str]:
    """Decode an answer after each prompt of a left-padded batch, cut at ``cfg.eos_token`` and stripped."""
    device = next(model.parameters()).device
    gen_kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.sampling, num_beams=cfg.num_beams,
                      eos_token_id=_stop_ids(tokenizer, cfg.eos_token), pad_token_id=tokenizer.pad_token_id)
    if cfg.sampling:
        gen_kwargs.update(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **gen_kwargs)
    return [tokenizer.decode(row, skip_special_tokens=True).split(cfg.eos_token)[0].strip()
            for row in out[:, input_ids.shape[1]:]]


def generate_answers(model, tokenizer, template, samples: Sequence, demos: Sequence, cfg: EvalConfig) -> list[str]:
    """Decoded answers, each cut at ``eos_token`` and stripped (``demos`` as in ``predict_candidates``)."""
    prompts = [encode_prompt(tokenizer, template, s, d, cfg.max_length - cfg.max_new_tokens)
               for s, d in zip(samples, demo_sets_for(samples, demos))]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers = [""] * len(samples)
    for idx in tqdm(list(_batches(order, cfg.batch_size)), desc="generating", disable=not cfg.progress, leave=False):
        ids, mask = pad_left([prompts[i] for i in idx], tokenizer.pad_token_id)
        for i, text in zip(idx, generate_batch(model, tokenizer, ids, mask, cfg)):
            answers[i] = text
    return answers


def predict(model, tokenizer, task, samples: Sequence, demos: Sequence = (), cfg: EvalConfig | None = None) -> list:
    """A ``metrics.Prediction`` (gold, predicted) for each of ``samples`` (none for none); ``demos`` as in
    ``evaluate``."""
    if not samples:
        return []
    cfg = cfg or EvalConfig()
    was_training = model.training
    model.eval()
    if task.generation:
        predicted = generate_answers(model, tokenizer, task.template, samples, demos, cfg)
    else:
        predicted = predict_candidates(model, tokenizer, task.template, samples, demos, cfg)
    model.train(was_training)
    return [Prediction(s.correct_candidate, p) for s, p in zip(samples, predicted)]


def evaluate(model, tokenizer, task, samples: Sequence, demos: Sequence = (), cfg: EvalConfig | None = None) -> dict:
    """Metric of ``task`` on ``samples`` and the predictions.

    ``demos`` are the in-context demonstrations: one list shared by every sample, or a list of lists, one
    demonstration set per sample (MeZO's default for in-context learning).
    """
    return scored(task, predict(model, tokenizer, task, samples, demos, cfg))


def scored(task, predictions: list) -> dict:
    """The metric of ``task`` and the ``predictions``; a classification task's one-class predictions warn once
    (on rank 0)."""
    if not task.generation and distributed.is_main():
        warn_if_one_class([p.predicted_candidate for p in predictions])
    return {task.metric: calculate_metric(predictions, task.metric), "predictions": predictions}


def evaluate_sharded(model, tokenizer, task, samples: Sequence, demos: Sequence = (),
                     cfg: EvalConfig | None = None, shard: bool = True) -> dict:
    """``evaluate``, with the work shared by the ranks under torchrun: each predicts every ``world_size``-th
    sample (with its own demonstration set, if there is one per sample); the predictions are gathered back into
    the samples' order on every rank, so every rank computes the same metric. One process, or ``shard`` False
    (a sharded model, whose forwards must run in step on every rank): ``evaluate`` on every sample."""
    if not (distributed.active() and shard):
        return evaluate(model, tokenizer, task, samples, demos, cfg)
    per_sample = bool(demos) and isinstance(demos[0], (list, tuple))
    mine = predict(model, tokenizer, task, distributed.shard(samples),
                   distributed.shard(demo_sets_for(samples, demos)) if per_sample else demos, cfg)
    return scored(task, distributed.unshard(distributed.gather(mine)))
