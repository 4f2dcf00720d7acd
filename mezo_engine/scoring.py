"""Log-likelihoods of answer tokens, and the two training losses built on them.

Two layouts, one result (``candidate_logprobs``):

* **Rows** (``--scoring rows``, upstream MeZO's layout): one left-padded row per candidate, prompt + answer, so
  the answer tokens are the last ``option_len`` of the row. Only the last ``max(option_len) + 1`` positions need
  the LM head; ``logits_to_keep`` asks the model for just those.
* **Shared prefix** (``--scoring shared``, the default): each prompt runs once (left-padded, ``use_cache``); the
  first answer token of every candidate is scored from the prompt's last logits, and the rest of each answer runs
  as a continuation from the prompt's KV cache, gathered once per candidate (``Cache.batch_select_indices``).
  A KV cache rather than a packed row with a block attention mask: it needs nothing of an architecture beyond
  its ordinary cache (OPT, LLaMA-family, GPT-2 alike), and gradients flow through the cached keys and values into
  the prompt pass, so regular training uses the same path. Single-token answers (SST-2, RTE, CB, ...) need no
  continuation at all. Positions continue from each prompt's own length, so left padding does not shift them.

The scores equal those of the row layout within float rounding (tested to 1e-5 in float32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def float32_or_wider(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or as it is when already float64: scores and merges of half-precision models are computed
    in float32, and a float64 model (``--load_float64``, for numerical checks) keeps its precision throughout."""
    return t if t.dtype == torch.float64 else t.float()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, option_len: torch.Tensor,
                   all_tokens: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the last tokens of each row, and the mask of those that count.

    Returns ``(logprobs, mask)`` of shape (rows, K - 1). With ``all_tokens`` every real token after the first
    counts (LM loss on the whole sequence); otherwise only the answer tokens.
    """
    width = input_ids.shape[1]
    keep = width if all_tokens else min(int(option_len.max()) + 1, width)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                logits_to_keep=keep, use_cache=False)
    logits = out.logits[:, -keep:-1]
    targets = input_ids[:, width - keep + 1:]
    logprobs = -F.cross_entropy(float32_or_wider(logits).transpose(1, 2), targets, reduction="none")
    if all_tokens:
        mask = attention_mask[:, width - keep + 1:].bool()
    else:
        offsets = torch.arange(keep - 1, device=input_ids.device)
        mask = offsets[None, :] >= (keep - 1 - option_len.to(input_ids.device))[:, None]
    return logprobs, mask


def _logprob_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(float32_or_wider(logits).transpose(1, 2), targets, reduction="none")


def shared_prefix_logprobs(model, prompt_ids, prompt_mask, answer_ids, answer_mask, owner) -> torch.Tensor:
    """Log-probability of every answer token (answers right-padded, ``owner``: each answer's prompt row)."""
    width = answer_ids.shape[1]
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask),
                logits_to_keep=1, use_cache=width > 1)
    first = _logprob_of(out.logits[owner, -1:], answer_ids[:, :1])
    if width == 1:
        return first
    cache = out.past_key_values
    # a CPU index serves cache layers on any device (a model split over GPUs and the CPU keeps each layer's cache
    # where the layer runs); a CUDA index could not index a layer cached on the CPU
    cache.batch_select_indices(owner.cpu())
    owner_mask = prompt_mask[owner]
    mask = torch.cat([owner_mask, answer_mask[:, :-1]], dim=1)
    positions = owner_mask.sum(-1, keepdim=True) + torch.arange(width - 1, device=answer_ids.device)
    rest = model(input_ids=answer_ids[:, :-1], attention_mask=mask, position_ids=positions, past_key_values=cache,
                 use_cache=False)
    return torch.cat([first, _logprob_of(rest.logits, answer_ids[:, 1:])], dim=1)


def candidate_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer-token log-probabilities of every candidate of a ``data.collate_candidates`` batch, in candidate
    order: ``(logprobs, mask)`` of shape (candidates, K), the counted tokens marked by ``mask``."""
    parts = []
    if "prompt_ids" in batch:
        lp = shared_prefix_logprobs(model, batch["prompt_ids"], batch["prompt_mask"], batch["answer_ids"],
                                    batch["answer_mask"], batch["answer_owner"])
        parts.append((batch["shared_index"], lp, batch["answer_mask"].bool()))
    if "input_ids" in batch:
        lp, mask = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["option_len"])
        index = batch.get("row_index", torch.arange(lp.shape[0], device=lp.device))  # a plain row batch: in order
        parts.append((index, lp, mask))
    width = max(lp.shape[1] for _, lp, _ in parts)
    total = sum(index.shape[0] for index, _, _ in parts)
    logprobs = parts[0][1].new_zeros((total, width))
    mask = torch.zeros((total, width), dtype=torch.bool, device=logprobs.device)
    for index, lp, m in parts:
        logprobs = logprobs.index_copy(0, index.to(logprobs.device), F.pad(lp, (0, width - lp.shape[1])))
        mask[index] = F.pad(m, (0, width - m.shape[1]))
    return logprobs, mask


def mean_option_logprob(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length-normalised log-likelihood of each row's answer: MeZO's candidate score."""
    return (logprobs * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def summed_option_logprob(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Total log-likelihood of each row's answer: the score SFC calibration subtracts (as upstream MeZO)."""
    return (logprobs * mask).sum(-1)


def classification_loss(row_scores: torch.Tensor, group: torch.Tensor, gold_row: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over each example's candidate scores, the gold candidate being row ``gold_row[i]``."""
    losses = []
    for i, gold in enumerate(gold_row.tolist()):
        rows = (group == i).nonzero().squeeze(-1)
        target = (rows == gold).nonzero().squeeze(-1)
        losses.append(F.cross_entropy(row_scores[rows][None], target))
    return torch.stack(losses).mean()


def lm_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the counted tokens of the batch (teacher forcing)."""
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1)


def counted_tokens(batch: dict, all_tokens: bool = False) -> int:
    """How many tokens ``lm_loss`` averages over in a collated batch, read off the batch without a forward: the
    answer tokens (shared part: ``answer_mask``; row part: ``option_len``, which never exceeds a row's length
    minus one), or with ``all_tokens`` every real token after each row's first. The weight of the batch's LM loss
    when ranks average their losses (``distributed.weighted_mean``)."""
    if all_tokens:
        return int(batch["attention_mask"][:, 1:].sum())
    shared = int(batch["answer_mask"].sum()) if "answer_mask" in batch else 0
    return shared + (int(batch["option_len"].sum()) if "option_len" in batch else 0)


def batch_loss(model, batch: dict, as_classification: bool, only_train_option: bool = True) -> torch.Tensor:
    """The training loss of a collated batch (see data.TrainCollator): cross-entropy over the candidates, the
    LM loss on the answer tokens, or (``only_train_option`` False) on every token of the rows."""
    logprobs, mask = _counted_logprobs(model, batch, as_classification, only_train_option)
    return _loss_of(logprobs, mask, batch, as_classification)


def copies_loss(model, batch: dict, copies: int, as_classification: bool,
                only_train_option: bool = True) -> torch.Tensor:
    """``batch_loss`` of ``copies`` copies of ``batch`` run as one batch (``tile_batch``), one loss per copy:
    shape (copies,). Each copy's loss is reduced over its own rows exactly as ``batch_loss`` reduces the batch
    alone (the LM loss divides by that copy's counted tokens, not by all copies'), so the copies differ only by
    what makes their rows run differently (``batched_queries``: each copy's own adapter values)."""
    logprobs, mask = _counted_logprobs(model, tile_batch(batch, copies), as_classification, only_train_option)
    return torch.stack([_loss_of(lp, m, batch, as_classification)
                        for lp, m in zip(logprobs.unflatten(0, (copies, -1)), mask.unflatten(0, (copies, -1)))])


def _counted_logprobs(model, batch: dict, as_classification: bool, only_train_option: bool):
    """The (logprobs, mask) a training loss reduces: every token of the rows, or the candidates' answer tokens."""
    if not (as_classification or only_train_option):
        return token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["option_len"],
                              all_tokens=True)
    return candidate_logprobs(model, batch)


def _loss_of(logprobs: torch.Tensor, mask: torch.Tensor, batch: dict, as_classification: bool) -> torch.Tensor:
    if as_classification:
        return classification_loss(mean_option_logprob(logprobs, mask), batch["group"], batch["gold_row"])
    return lm_loss(logprobs, mask)


# ---- copies of a batch in one forward ----------------------------------------------------------------------------
ROW_KEYS = ("prompt_ids", "prompt_mask", "answer_ids", "answer_mask", "input_ids", "attention_mask", "option_len")


def repeat_rows(tensor: torch.Tensor, copies: int) -> torch.Tensor:
    """``copies`` copies of ``tensor`` one after another along its first dimension: copy q is rows q*R..q*R+R-1."""
    return tensor.repeat(copies, *([1] * (tensor.dim() - 1)))


def _repeat_index(index: torch.Tensor, copies: int, size: int) -> torch.Tensor:
    """An index into ``size`` rows, for ``copies`` copies of those rows: copy q's entries point into copy q."""
    return torch.cat([index + q * size for q in range(copies)])


def _num_candidates(batch: dict) -> int:
    shared = int(batch["shared_index"].numel()) if "shared_index" in batch else 0
    if "row_index" in batch:
        return shared + int(batch["row_index"].numel())
    return shared + (int(batch["input_ids"].shape[0]) if "input_ids" in batch else 0)


def tile_batch(batch: dict, copies: int) -> dict:
    """What ``candidate_logprobs`` and ``token_logprobs`` read of a collated batch, for ``copies`` copies of it in
    one batch: every row tensor repeated (``repeat_rows``), and the indices between them (``answer_owner`` into the
    prompts, ``shared_index`` / ``row_index`` into the candidates) moved so that each copy's point into its own
    rows. ``candidate_logprobs`` of the result is the batch's, ``copies`` times over, copy q in rows q*C..q*C+C-1."""
    candidates = _num_candidates(batch)
    out = {key: repeat_rows(batch[key], copies) for key in ROW_KEYS if key in batch}
    if "answer_owner" in batch:
        out["answer_owner"] = _repeat_index(batch["answer_owner"], copies, batch["prompt_ids"].shape[0])
    for key in ("shared_index", "row_index"):
        if key in batch:
            out[key] = _repeat_index(batch[key], copies, candidates)
    return out
