"""From task samples to token ids: prompts with demonstrations, option lengths, training features and batches.

Every row is ``prompt + option``; the option's tokens are the tokens of the verbalised text beyond those of the
prompt alone. Rows are padded on the left, so every option ends at the last position of its row.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEMO_SEPARATOR = "\n\n"


def _demo_text(template, demos: Sequence) -> str:
    return "".join(template.verbalize(d, first_answer(d.correct_candidate)).strip() + DEMO_SEPARATOR for d in demos)


def first_answer(candidate):
    """Generation tasks store every gold answer; training and demonstrations use the first."""
    return candidate[0] if isinstance(candidate, (list, tuple)) else candidate


def encode_prompt(tokenizer, template, sample, demos: Sequence = (), max_length: int = 2048) -> list[int]:
    """Token ids of the demonstrations followed by the sample's prompt (no answer), cut on the left."""
    ids = tokenizer.encode(_demo_text(template, demos) + template.encode(sample))
    return ids[-max_length:]


def encode_option(tokenizer, template, sample, candidate, demos: Sequence = (),
                  max_length: int = 2048) -> tuple[list[int], int]:
    """Token ids of demonstrations + prompt + ``candidate``'s answer text, and how many of them are the answer."""
    prefix = _demo_text(template, demos)
    prompt_len = len(tokenizer.encode(prefix + template.encode(sample)))
    ids = tokenizer.encode(prefix + template.verbalize(sample, candidate))
    option_len = max(len(ids) - prompt_len, 1)
    ids = ids[-max_length:]
    return ids, min(option_len, len(ids) - 1)


@dataclass
class Feature:
    """One training example: one row per candidate (classification) or a single gold row (LM loss)."""

    rows: list[list[int]]
    option_lens: list[int]
    gold: int  # index of the gold row in ``rows``


def training_feature(tokenizer, template, sample, as_classification: bool, max_length: int) -> Feature:
    if as_classification:
        encoded = [encode_option(tokenizer, template, sample, c, (), max_length) for c in sample.candidates]
        gold = sample.candidates.index(first_answer(sample.correct_candidate))
        return Feature([e[0] for e in encoded], [e[1] for e in encoded], gold)
    ids, option_len = encode_option(tokenizer, template, sample, first_answer(sample.correct_candidate), (), max_length)
    return Feature([ids], [option_len], 0)


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad ``rows`` into (input_ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def collate_rows(rows: Sequence[Sequence[int]], option_lens: Sequence[int], pad_id: int) -> dict:
    ids, mask = pad_left(rows, pad_id)
    return {"input_ids": ids, "attention_mask": mask, "option_len": torch.tensor(list(option_lens), dtype=torch.long)}


class TrainCollator:
    """Batches Features: every row of every example, plus which example each row belongs to and the gold rows."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: Sequence[Feature]) -> dict:
        rows, lens, group, gold = [], [], [], []
        for i, f in enumerate(features):
            gold.append(len(rows) + f.gold)
            rows.extend(f.rows)
            lens.extend(f.option_lens)
            group.extend([i] * len(f.rows))
        batch = collate_rows(rows, lens, self.pad_id)
        batch["group"] = torch.tensor(group, dtype=torch.long)
        batch["gold_row"] = torch.tensor(gold, dtype=torch.long)
        return batch


def longest_row(tokenizer, template, sample, demos: Sequence = (), reserve: int = 0) -> int:
    """Tokens in the longest row ``sample`` gives before any cut: each candidate's row for classification; for
    generation the prompt plus ``reserve`` generated tokens (evaluation) or prompt plus gold answer (reserve 0)."""
    prefix = _demo_text(template, demos)
    if sample.candidates is not None:
        texts = [template.verbalize(sample, c) for c in sample.candidates]
    elif reserve:
        return len(tokenizer.encode(prefix + template.encode(sample))) + reserve
    else:
        texts = [template.verbalize(sample, first_answer(sample.correct_candidate))]
    return max(len(tokenizer.encode(prefix + t)) for t in texts)


def count_cut(tokenizer, template, samples: Sequence, max_length: int, demos: Sequence = (), reserve: int = 0) -> int:
    """How many of ``samples`` have a row longer than ``max_length`` tokens, i.e. lose their left end."""
    return sum(longest_row(tokenizer, template, s, demos, reserve) > max_length for s in samples)
