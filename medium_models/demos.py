"""Prompt-based fine-tuning with demonstrations (``--few_shot_type prompt-demo``), as LM-BFF and MeZO's medium
models build them.

* **Template.** After the query's own template come one demonstration per label, each the template without
  ``*cls*``, its sentences renumbered after the query's and its ``*mask*`` replaced by that label's word
  (``demo_template``; LM-BFF's ``auto_demo``). SST-2: ``*cls**sent_0*_It_was*mask*.*sep+**sent_1*_It_was*label_0*
  .*sep+**sent_2*_It_was*label_1*.*sep+*``.
* **Choice.** For each label, one training example of that label drawn at random (``choose``); a training query
  is never its own demonstration. A regression's examples are grouped by the half of the range their score falls
  in (``LmBffTask.demo_label``).
* **Training** draws new demonstrations every time an example is used: each epoch's draw comes from a generator
  seeded with the run seed, the epoch and the example (``DemoDataset``), so a resumed run sees what an unbroken
  one would have seen.
* **Evaluation** scores every dev and test example with ``--num_sample`` (16) draws and averages: the label-word
  logits for a classification, the predicted scores for a regression (``scoring.predict``'s copies).
* **Length.** Sentence limits apply per sentence as without demonstrations (sentence 0 ``--first_sent_limit``,
  every other, the demonstrations' first sentences too, ``--other_sent_limit``); with ``--double_demo`` (the
  task's default for sst-5, as MeZO's run_fewshot.sh) the length limit doubles; what is still too long is cut as
  any prompt, its tail first (``--truncate_head``: its front).

LM-BFF's regression keeps one demonstration only: its template loop runs over ``num_labels``, 1 for STS-B, so the
demonstration drawn from the high half is drawn and never shown. Here a regression shows one demonstration from
each half, the low one with the first label word and the high one with the second.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from transformers import TrainerCallback

from mezo_engine.tasks import DataError


def demo_template(template: str, num_labels: int) -> str:
    """``template`` followed by one demonstration per label (LM-BFF's ``auto_demo``; see the module docstring)."""
    body = template.replace("*cls*", "")
    sentences = 2 if "_1" in body else 1
    out = template
    for label in range(num_labels):
        part = body
        for i in range(sentences):
            part = part.replace(f"_{i}", f"_{sentences * (label + 1) + i}")
        out += part.replace("*mask*", f"*label_{label}*")
    return out


def by_label(task, samples: Sequence) -> list[list[int]]:
    """The indices of ``samples`` of each label group (``task.demo_label``), in label order."""
    groups = [[] for _ in task.labels]
    for i, sample in enumerate(samples):
        groups[task.demo_label(sample.correct_candidate)].append(i)
    return groups


def choose(groups: list[list[int]], rng: random.Random, exclude: int | None = None) -> list[int]:
    """One index per label group, drawn with ``rng``, never ``exclude`` (a training query itself)."""
    chosen = []
    for label, members in enumerate(groups):
        pool = [i for i in members if i != exclude]
        if not pool:
            raise DataError(f"no training example of label group {label} besides the query itself to show as a "
                            f"demonstration (--few_shot_type prompt-demo needs one of every label)")
        chosen.append(rng.choice(pool))
    return chosen


def augmented_texts(query, demos: Sequence) -> list[str]:
    """The query's sentences followed by each demonstration's, the order ``demo_template`` numbers them in."""
    return [*query.data["texts"], *(text for demo in demos for text in demo.data["texts"])]


def draw(seed: int, *keys) -> random.Random:
    """A generator for one draw of demonstrations, seeded by the run seed and ``keys`` (split, epoch, example,
    copy): the same draw whenever the same example is asked for again."""
    return random.Random("-".join(str(k) for k in (seed, *keys)))


class DemoDataset(torch.utils.data.Dataset):
    """The training prompts with demonstrations drawn anew each epoch (``epoch``, set by ``EpochCallback``)."""

    def __init__(self, size: int, build: Callable[[int, random.Random], object], seed: int):
        self.size, self.build, self.seed, self.epoch = size, build, seed, 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        if not 0 <= i < self.size:
            raise IndexError(i)
        return self.build(i, draw(self.seed, "train", self.epoch, i))


class EpochCallback(TrainerCallback):
    """Tells a ``DemoDataset`` the epoch about to start (a resumed run: the epoch its checkpoint was in)."""

    def __init__(self, dataset: DemoDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.epoch = int((state.epoch or 0) + 1e-6)  # state.epoch: epochs done, a fraction mid-epoch


SEGMENT_TYPES = 10  # LM-BFF's and MeZO's BERT segment-embedding rows (resize_token_type_embeddings)


def widen_segments(model, needed: int, generator: torch.Generator) -> bool:
    """Give a BERT-style model ``SEGMENT_TYPES`` segment (token type) embedding rows when its prompts use more
    segments than it has (demonstrations: one per ``*sep+*``), as upstream resizes them: the old rows kept, the new
    ones drawn as ``nn.Embedding`` initialises them, standard normal (here from ``generator``). True if it did."""
    embeddings = model.base_model.embeddings.token_type_embeddings
    if needed <= embeddings.num_embeddings:
        return False
    if needed > SEGMENT_TYPES:
        raise DataError(f"the prompts use {needed} segments; upstream's BERT prompts have at most {SEGMENT_TYPES}")
    weight = torch.randn(SEGMENT_TYPES, embeddings.embedding_dim, generator=generator)
    weight = weight.to(embeddings.weight.dtype).to(embeddings.weight.device)
    weight[:embeddings.num_embeddings] = embeddings.weight.detach()
    wider = torch.nn.Embedding.from_pretrained(weight, freeze=not embeddings.weight.requires_grad)
    model.base_model.embeddings.token_type_embeddings = wider
    model.config.type_vocab_size = SEGMENT_TYPES
    return True
