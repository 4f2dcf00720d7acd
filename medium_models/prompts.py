"""LM-BFF prompts as token ids: a template (``*cls**sent_0*_It_was*mask*.*sep+*``) filled with an example's
sentences, the position of the mask, and the label words' token ids.

The template language is LM-BFF's: parts between ``*``; ``cls``, ``sep``, ``sep+`` (a separator that starts the
next segment), ``mask``, ``bos``, ``eos`` are special tokens; ``sent_i`` is sentence ``i``, with the variants
``+sent_i`` (a space before it), ``sent-_i`` (its last character dropped), ``sentl_i`` / ``sentu_i`` (its first
character lower / upper case) and their combinations (``+sentl-_i``, ...); ``label_i`` is the word of label ``i``
(in a template with demonstrations); any other part is text, ``_`` standing for a space. Each part is tokenised on
its own and the ids are joined, as LM-BFF does.

A label word is scored at the mask as one token: ``" " + word`` (a word starting with ``<``, ``[``, ``.`` or
``,`` as it is) must be a single token of the tokenizer, else the run is refused.

**Causal LMs** take the same prompt up to the mask: the ids end with the text before the mask and the label word
is scored as the next token. The text after the mask (``.`` and the separator for SST-2; ``,`` and the second
sentence for the NLI and paraphrase templates) is dropped: the model never sees it, which for the sentence-pair
tasks means it sees only the first sentence. A template whose mask comes before every sentence (trec's
``*cls**mask*:*+sent_0**sep+*``) is refused for a causal LM. Special tokens the tokenizer lacks (a causal LM's
``cls`` and ``sep``) are left out, as LM-BFF leaves out GPT-2's ``cls``.

**Lengths**: sentence 0 is cut to ``first_sent_limit`` tokens and every other sentence to ``other_sent_limit``
(MeZO's per-task limits). A masked LM's prompt still longer than ``max_length`` is then cut as upstream (LM-BFF's
and MeZO's ``tokenize_multipart_input``): its tail goes, the closing separator first (``truncate_head``: its front
goes instead). A cut that removes the mask is refused (upstream asserts the mask survives). A causal LM's prompt
ends at the scored position, which a tail cut would remove, so it loses tokens from the end of its longest sentence
instead until it fits.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

SPECIAL = {"cls": "cls_token_id", "sep": "sep_token_id", "sep+": "sep_token_id", "mask": "mask_token_id",
           "bos": "bos_token_id", "eos": "eos_token_id"}
SENTENCE = re.compile(r"^(\+?)sent([lu]?)(-?)_(\d+)$")
LABEL = re.compile(r"^label_(\d+)$")  # a demonstration's label word (``demos.demo_template``)


class PromptError(ValueError):
    """A template or label word this tokenizer or model cannot use; the message names it and what to change."""


@dataclass
class Encoded:
    """One prompt: its token ids, the index of the scored position, and (for BERT) segment ids.

    Masked LM: ``position`` is the mask token's index. Causal LM: the ids end before the mask and ``position`` is
    the last index, whose logits predict the label word."""

    ids: list[int]
    position: int
    token_type_ids: list[int] | None = None
    cut: bool = False  # tokens were removed to fit max_length


@dataclass
class Part:
    """A template part as token ids: ``sentence`` is its sentence index (None for the template's own tokens)."""

    ids: list[int]
    segment: int
    sentence: int | None = None
    mask: bool = False


def split_template(template: str) -> list[str]:
    """The parts of ``template`` (the pieces between ``*``, empty ones left out); exactly one must be ``mask``."""
    parts = [p for p in template.split("*") if p]
    if parts.count("mask") != 1:
        raise PromptError(f"template {template!r}: {parts.count('mask')} *mask* parts; a prompt needs exactly one")
    return parts


def sentence_text(part: str, texts: list[str]) -> tuple[int, str] | None:
    """(sentence index, text) of a ``sent`` part, LM-BFF's variants applied; None for any other part."""
    match = SENTENCE.match(part)
    if not match:
        return None
    space, case, drop_last, index = match.groups()
    index = int(index)
    if index >= len(texts):
        raise PromptError(f"template part *{part}*: the example has {len(texts)} sentence(s)")
    text = texts[index]
    if case:
        text = (text[:1].lower() if case == "l" else text[:1].upper()) + text[1:]
    if drop_last:
        text = text[:-1]
    return index, " " + text if space else text


def template_parts(tokenizer, template: str, texts: list[str], causal: bool,
                   label_ids: Sequence[int] = ()) -> list[Part]:
    """The template filled with ``texts`` as token-id parts, in order (a causal LM's parts stop at the mask); a
    ``label_i`` part is the token ``label_ids[i]``."""
    parts, segment = [], 0
    for name in split_template(template):
        if label := LABEL.match(name):
            parts.append(Part([label_ids[int(label.group(1))]], segment))
            continue
        if name == "mask" and causal:
            return parts + [Part([], segment, mask=True)]
        if name in SPECIAL:
            token = getattr(tokenizer, SPECIAL[name])
            if token is None and name == "mask":
                raise PromptError("the tokenizer has no mask token: a masked LM's prompt needs one")
            if token is not None:
                parts.append(Part([token], segment, mask=name == "mask"))
            segment += name == "sep+"
            continue
        sentence = sentence_text(name, texts)
        text = sentence[1] if sentence else name.replace("_", " ")
        parts.append(Part(tokenizer.encode(text, add_special_tokens=False), segment,
                          sentence[0] if sentence else None))
    return parts


def limit_sentences(parts: list[Part], first: int | None, other: int | None) -> None:
    """Cut sentence 0 to ``first`` tokens and the others to ``other`` (None: no limit), in place."""
    for part in parts:
        limit = first if part.sentence == 0 else other
        if part.sentence is not None and limit is not None:
            part.ids = part.ids[:limit]


def fit(parts: list[Part], max_length: int) -> bool:
    """A causal LM's cut: remove tokens from the end of the longest sentence until the parts fit ``max_length``;
    True if any went. Raises PromptError when the template's own tokens alone are too long."""
    cut = False
    while sum(len(p.ids) for p in parts) > max_length:
        longest = max((p for p in parts if p.sentence is not None and p.ids), key=lambda p: len(p.ids), default=None)
        if longest is None:
            raise PromptError(f"the template's own tokens are longer than max_length {max_length}")
        longest.ids.pop()
        cut = True
    return cut


def encode(tokenizer, template: str, texts: list[str], causal: bool, max_length: int,
           first_limit: int | None = None, other_limit: int | None = None, segments: bool = False,
           truncate_head: bool = False, label_ids: Sequence[int] = ()) -> Encoded:
    """The prompt of an example with sentences ``texts`` (see the module docstring); ``segments``: also return
    segment ids (BERT's token_type_ids), which step up after every ``sep+``; ``truncate_head``: a masked LM's
    prompt longer than ``max_length`` loses its front rather than its tail; ``label_ids``: the label words' token
    ids for a template with demonstrations (``*label_i*``)."""
    parts = template_parts(tokenizer, template, texts, causal, label_ids)
    limit_sentences(parts, first_limit, other_limit)
    cut = fit(parts, max_length) if causal else False
    ids, types, position = [], [], None
    for part in parts:
        if part.mask:
            position = len(ids) if not causal else len(ids) - 1
        ids += part.ids
        types += [part.segment] * len(part.ids)
    encoded = Encoded(ids, position, types if segments else None, cut)
    return encoded if causal else truncate(encoded, max_length, truncate_head)


def truncate(encoded: Encoded, max_length: int, head: bool) -> Encoded:
    """A masked LM's prompt cut to ``max_length`` tokens as upstream cuts it: the tail goes (``head``: the front);
    refuses a cut that removes the mask."""
    excess = len(encoded.ids) - max_length
    if excess <= 0:
        return encoded
    keep = slice(excess, None) if head else slice(None, max_length)
    position = encoded.position - excess if head else encoded.position
    if not 0 <= position < max_length:
        raise PromptError(f"the prompt is {len(encoded.ids)} tokens; cutting its {'front' if head else 'end'} to "
                          f"--max_seq_length {max_length} removes the mask (upstream stops on this too); raise "
                          f"--max_seq_length or lower --first_sent_limit / --other_sent_limit"
                          + ("" if head else ", or give --truncate_head"))
    types = encoded.token_type_ids[keep] if encoded.token_type_ids is not None else None
    return Encoded(encoded.ids[keep], position, types, cut=True)


def check_causal_template(template: str) -> str:
    """The text a causal LM does not see (the parts after the mask, as written); refuses a template whose mask
    comes before every sentence."""
    parts = split_template(template)
    at = parts.index("mask")
    if not any(SENTENCE.match(p) for p in parts[:at]):
        raise PromptError(f"template {template!r} puts the mask before every sentence: a causal LM would score the "
                          f"label word with no input; give --template with the mask after the input")
    return "*" + "**".join(parts[at + 1:]) + "*" if at + 1 < len(parts) else ""


def label_word_ids(tokenizer, words: list[str]) -> list[int]:
    """The token id of each label word (``" " + word``, or the word itself if it starts with ``< [ . ,``);
    refuses a word that is not one token, and two labels with the same token."""
    ids = []
    for word in words:
        text = word if word[:1] in ("<", "[", ".", ",") else " " + word
        tokens = tokenizer.tokenize(text)
        if len(tokens) != 1:
            raise PromptError(f"label word {word!r}: {text!r} is {len(tokens)} tokens for this tokenizer ({tokens}); "
                              f"a label word must be a single token (choose others with --mapping)")
        ids.append(tokenizer.convert_tokens_to_ids(tokens[0]))
    if len(set(ids)) != len(ids):
        raise PromptError(f"label words {words}: two labels share a token ({ids})")
    return ids
