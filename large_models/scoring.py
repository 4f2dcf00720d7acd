"""Log-likelihoods of answer tokens, and the two training losses built on them.

Rows are left-padded, so the answer ("option") tokens are the last ``option_len`` tokens of each row. Only the
last ``max(option_len) + 1`` positions need the LM head; ``logits_to_keep`` asks the model for just those, which
gives the same numbers as full logits at a fraction of the cost (vocabulary projections dominate small models).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    logprobs = -F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    if all_tokens:
        mask = attention_mask[:, width - keep + 1:].bool()
    else:
        offsets = torch.arange(keep - 1, device=input_ids.device)
        mask = offsets[None, :] >= (keep - 1 - option_len.to(input_ids.device))[:, None]
    return logprobs, mask


def mean_option_logprob(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length-normalised log-likelihood of each row's answer: MeZO's candidate score."""
    return (logprobs * mask).sum(-1) / mask.sum(-1).clamp(min=1)


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


def batch_loss(model, batch: dict, as_classification: bool, only_train_option: bool = True) -> torch.Tensor:
    """The training loss of a collated batch (see data.TrainCollator)."""
    logprobs, mask = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["option_len"],
                                    all_tokens=not (as_classification or only_train_option))
    if as_classification:
        return classification_loss(mean_option_logprob(logprobs, mask), batch["group"], batch["gold_row"])
    return lm_loss(logprobs, mask)
