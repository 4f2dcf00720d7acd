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
    return DEMO_SEPARATOR.join(template.demonstration(d, first_answer(d.correct_candidate)).strip()
                               for d in demos).strip()


def first_answer(candidate):
    """Generation tasks store every gold answer; training and demonstrations use the first."""
    return candidate[0] if isinstance(candidate, (list, tuple)) else candidate


def _with_demos(demos_text: str, text: str) -> str:
    """MeZO's layout: demonstrations, a blank line, the example; leading whitespace and end spaces dropped."""
    return (demos_text + DEMO_SEPARATOR + text).lstrip().strip(" ")


def _prompt_text(template, sample, demos_text: str) -> str:
    """The demonstrations and the sample's prompt (no answer), in MeZO's layout."""
    return _with_demos(demos_text, template.encode(sample).strip(" "))


def encode_prompt(tokenizer, template, sample, demos: Sequence = (), max_length: int = 2048) -> list[int]:
    """Token ids of the demonstrations followed by the sample's prompt (no answer), cut on the left."""
    return tokenizer.encode(_prompt_text(template, sample, demo_text(template, demos)))[-max_length:]


def option_lengths(tokenizer, template, sample, candidates: Sequence) -> list[int]:
    """How many tokens each candidate's answer adds to the prompt, counted as MeZO counts them.

    Both texts lose their end spaces (``strip(" ")``, never newlines) and are encoded without demonstrations:
    a prompt that ends in a space (COPA's ``" so "``) must not keep that space, or a tokenizer that merges a
    leading space into the next word would count the answer one token short.
    """
    prompt_len = len(tokenizer.encode(template.encode(sample).strip(" ")))
    return [len(tokenizer.encode(template.verbalize(sample, c).strip(" "))) - prompt_len for c in candidates]


def encode_option(tokenizer, template, sample, candidate, demos: Sequence = (),
                  max_length: int = 2048) -> tuple[list[int], int]:
    """Token ids of demonstrations + prompt + ``candidate``'s answer text, and how many of them are the answer."""
    feature = encode_candidates(tokenizer, template, sample, [candidate], demos, 0, max_length)
    return feature.rows[0], feature.option_lens[0]


@dataclass
class Feature:
    """One example's candidate rows (classification: one per candidate; LM loss: the gold row only).

    ``rows[i]`` is demonstrations + prompt + candidate ``i``'s answer, whose last ``option_lens[i]`` tokens are the
    answer. ``prompt`` is the row without its answer when that is the same for every row (then the prompt can be
    run once and every answer scored from it); None when sharing would not be exact: a BPE merge across the
    prompt/answer boundary, or a row cut on the left by ``max_length``.
    """

    rows: list[list[int]]
    option_lens: list[int]
    gold: int  # index of the gold row in ``rows``
    prompt: list[int] | None = None


def shared_prompt(prompt: list[int], rows: Sequence[Sequence[int]], option_lens: Sequence[int],
                  truncated: bool) -> list[int] | None:
    """``prompt`` if every row is exactly ``prompt`` followed by its answer tokens, else None."""
    if truncated or not prompt or any(list(r[:len(r) - n]) != prompt for r, n in zip(rows, option_lens)):
        return None
    return prompt


def encode_candidates(tokenizer, template, sample, candidates: Sequence, demos: Sequence = (), gold: int = 0,
                      max_length: int = 2048) -> Feature:
    """The rows of ``candidates`` for ``sample`` (see Feature), answer spans from ``option_lengths``."""
    demos_text = demo_text(template, demos)
    full = [tokenizer.encode(_with_demos(demos_text, template.verbalize(sample, c).strip(" "))) for c in candidates]
    rows = [r[-max_length:] for r in full]
    lens = [min(max(n, 1), len(r) - 1) for n, r in zip(option_lengths(tokenizer, template, sample, candidates), rows)]
    prompt = tokenizer.encode(_prompt_text(template, sample, demos_text))
    return Feature(rows, lens, gold, shared_prompt(prompt, rows, lens, any(len(r) > max_length for r in full)))


def training_feature(tokenizer, template, sample, as_classification: bool, max_length: int) -> Feature:
    """Every candidate (``as_classification``) or the gold answer alone (LM loss on the answer)."""
    gold_answer = first_answer(sample.correct_candidate)
    if as_classification:
        return encode_candidates(tokenizer, template, sample, sample.candidates, (),
                                 sample.candidates.index(gold_answer), max_length)
    return encode_candidates(tokenizer, template, sample, [gold_answer], (), 0, max_length)


@dataclass
class PromptFeature:
    """A generation example for a non-differentiable objective (``--non_diff``): the prompt without its answer
    (the model generates the answer) and every gold answer, for the F1."""

    prompt: list[int]
    answers: list[str]


def prompt_feature(tokenizer, template, sample, max_length: int) -> PromptFeature:
    """The prompt of ``sample`` (no demonstrations), cut on the left to ``max_length`` tokens, and its gold answers."""
    gold = sample.correct_candidate
    return PromptFeature(encode_prompt(tokenizer, template, sample, (), max_length),
                         list(gold) if isinstance(gold, (list, tuple)) else [gold])


def _pad(rows: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            span = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, span] = torch.tensor(r, dtype=torch.long)
            mask[i, span] = 1
    return ids, mask


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad ``rows`` into (input_ids, attention_mask)."""
    return _pad(rows, pad_id, left=True)


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``rows`` into (ids, mask)."""
    return _pad(rows, pad_id, left=False)


def collate_rows(rows: Sequence[Sequence[int]], option_lens: Sequence[int], pad_id: int) -> dict:
    ids, mask = pad_left(rows, pad_id)
    return {"input_ids": ids, "attention_mask": mask, "option_len": torch.tensor(list(option_lens), dtype=torch.long)}


def collate_candidates(features: Sequence[Feature], pad_id: int, shared: bool = True) -> dict:
    """Batch the candidate rows of ``features`` for ``scoring.candidate_logprobs``.

    Candidates are numbered in order over the batch (``group``: the example of each; ``gold_row``: the gold
    candidate of each example). With ``shared``, examples that have a common prompt go into the shared-prefix part
    (``prompt_ids``/``prompt_mask`` left-padded, one per example; ``answer_ids``/``answer_mask`` right-padded, one per
    candidate; ``answer_owner``: its prompt; ``shared_index``: its candidate number); every other row goes into
    the row part (``input_ids``/``attention_mask``/``option_len``, left-padded; ``row_index``).
    """
    group, gold, prompts, answers, owner, shared_index, rows, lens, row_index = ([] for _ in range(9))
    count = 0
    for i, f in enumerate(features):
        gold.append(count + f.gold)
        group.extend([i] * len(f.rows))
        if shared and f.prompt is not None:
            owner.extend([len(prompts)] * len(f.rows))
            prompts.append(f.prompt)
            answers.extend(r[len(r) - n:] for r, n in zip(f.rows, f.option_lens))
            shared_index.extend(range(count, count + len(f.rows)))
        else:
            rows.extend(f.rows)
            lens.extend(f.option_lens)
            row_index.extend(range(count, count + len(f.rows)))
        count += len(f.rows)
    batch = {"group": torch.tensor(group), "gold_row": torch.tensor(gold)}
    if prompts:
        batch["prompt_ids"], batch["prompt_mask"] = pad_left(prompts, pad_id)
        batch["answer_ids"], batch["answer_mask"] = pad_right(answers, pad_id)
        batch["answer_owner"], batch["shared_index"] = torch.tensor(owner), torch.tensor(shared_index)
    if rows:
        batch.update(collate_rows(rows, lens, pad_id))
        batch["row_index"] = torch.tensor(row_index)
    return batch


def collate_prompts(features: Sequence[PromptFeature], pad_id: int) -> dict:
    """Batch prompts for generation: ``input_ids``/``attention_mask`` left-padded, ``gold`` the lists of gold
    answers (a plain list, passed through to the objective untouched)."""
    ids, mask = pad_left([f.prompt for f in features], pad_id)
    return {"input_ids": ids, "attention_mask": mask, "gold": [list(f.answers) for f in features]}


class TrainCollator:
    """Batches training features: Features for the loss (``collate_candidates``; ``shared`` False keeps every row
    whole), PromptFeatures for a generation objective (``collate_prompts``)."""

    def __init__(self, pad_id: int, shared: bool = True):
        self.pad_id, self.shared = pad_id, shared

    def __call__(self, features: Sequence[Feature | PromptFeature]) -> dict:
        if isinstance(features[0], PromptFeature):
            return collate_prompts(features, self.pad_id)
        return collate_candidates(features, self.pad_id, self.shared)


def longest_row(tokenizer, template, sample, demos: Sequence = (), reserve: int = 0) -> int:
    """Tokens in the longest row ``sample`` gives before any cut: each candidate's row for classification; for
    generation the prompt plus ``reserve`` generated tokens (evaluation) or prompt plus gold answer (reserve 0)."""
    demos_text = demo_text(template, demos)
    if sample.candidates is not None:
        texts = [template.verbalize(sample, c) for c in sample.candidates]
    elif reserve:
        return len(tokenizer.encode(_prompt_text(template, sample, demos_text))) + reserve
    else:
        texts = [template.verbalize(sample, first_answer(sample.correct_candidate))]
    return max(len(tokenizer.encode(_with_demos(demos_text, t.strip(" ")))) for t in texts)


def count_cut(tokenizer, template, samples: Sequence, max_length: int, demos: Sequence = (), reserve: int = 0,
              demo_sets: Sequence | None = None) -> int:
    """How many of ``samples`` have a row longer than ``max_length`` tokens, i.e. lose their left end.
    ``demo_sets``: one demonstration set per sample (``demo_sets[i]`` before ``samples[i]``) instead of ``demos``."""
    per_sample = demo_sets if demo_sets is not None else [demos] * len(samples)
    return sum(longest_row(tokenizer, template, s, d, reserve) > max_length for s, d in zip(samples, per_sample))
