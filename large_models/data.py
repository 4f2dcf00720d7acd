"""From task samples to token ids: prompts with demonstrations, option lengths, training features and batches.

Every row is ``prompt + option``; the option's tokens are the tokens of the verbalised text beyond those of the
prompt alone. Rows are padded on the left, so every option ends at the last position of its row.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEMO_SEPARATOR = "\n\n"


def demo_text(template, demos: Sequence) -> str:
    """The demonstrations, each verbalised with its (first) gold answer and stripped, joined by blank lines."""
    return DEMO_SEPARATOR.join(template.verbalize(d, first_answer(d.correct_candidate)).strip() for d in demos).strip()


def first_answer(candidate):
    """Generation tasks store every gold answer; training and demonstrations use the first."""
    return candidate[0] if isinstance(candidate, (list, tuple)) else candidate


def _with_demos(demos_text: str, text: str) -> str:
    """MeZO's layout: demonstrations, a blank line, the example; leading whitespace and end spaces dropped."""
    return (demos_text + DEMO_SEPARATOR + text).lstrip().strip(" ")


def encode_prompt(tokenizer, template, sample, demos: Sequence = (), max_length: int = 2048) -> list[int]:
    """Token ids of the demonstrations followed by the sample's prompt (no answer), cut on the left."""
    ids = tokenizer.encode(_with_demos(demo_text(template, demos), template.encode(sample).strip(" ")))
    return ids[-max_length:]


def option_length(tokenizer, template, sample, candidate) -> int:
    """How many tokens ``candidate``'s answer adds to the prompt, counted as MeZO counts them.

    Both texts lose their end spaces (``strip(" ")``, never newlines) and are encoded without demonstrations:
    a prompt that ends in a space (COPA's ``" so "``) must not keep that space, or a tokenizer that merges a
    leading space into the next word would count the answer one token short.
    """
    prompt = template.encode(sample).strip(" ")
    full = template.verbalize(sample, candidate).strip(" ")
    return len(tokenizer.encode(full)) - len(tokenizer.encode(prompt))


def encode_option(tokenizer, template, sample, candidate, demos: Sequence = (),
                  max_length: int = 2048) -> tuple[list[int], int]:
    """Token ids of demonstrations + prompt + ``candidate``'s answer text, and how many of them are the answer."""
    full = template.verbalize(sample, candidate).strip(" ")
    ids = tokenizer.encode(_with_demos(demo_text(template, demos), full))[-max_length:]
    option_len = max(option_length(tokenizer, template, sample, candidate), 1)
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
    demos_text = demo_text(template, demos)
    if sample.candidates is not None:
        texts = [template.verbalize(sample, c) for c in sample.candidates]
    elif reserve:
        return len(tokenizer.encode(_with_demos(demos_text, template.encode(sample).strip(" ")))) + reserve
    else:
        texts = [template.verbalize(sample, first_answer(sample.correct_candidate))]
    return max(len(tokenizer.encode(_with_demos(demos_text, t.strip(" ")))) for t in texts)


def count_cut(tokenizer, template, samples: Sequence, max_length: int, demos: Sequence = (), reserve: int = 0) -> int:
    """How many of ``samples`` have a row longer than ``max_length`` tokens, i.e. lose their left end."""
    return sum(longest_row(tokenizer, template, s, demos, reserve) > max_length for s in samples)
