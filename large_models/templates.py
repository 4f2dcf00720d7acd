"""Prompt templates: how a sample becomes text, with and without its answer.

The prompt strings and label words are MeZO's (``large_models/templates.py`` of princeton-nlp/MeZO).
Every template keeps one invariant that the scorer relies on: ``verbalize(sample, c)`` starts with exactly
``encode(sample)``, so the answer's tokens are the tokens of ``verbalize`` beyond those of ``encode``.

Candidate templates also define MeZO's SFC calibration prompt (``encode_sfc``, surface-form competition,
Holtzman et al. 2021, arXiv 2104.08315): what is left of the prompt once the input is taken away, so that
``log p(answer | prompt) - log p(answer | calibration prompt)`` discounts answers that are likely whatever the
input. ``calibration()`` gives it as a template of its own, so the one scoring path scores it.

A template reads only ``sample.data`` (a dict of the task's fields).
"""
from __future__ import annotations

from typing import Any


class Template:
    """Base class: ``encode`` gives the prompt, ``verbalize`` the prompt followed by one answer."""

    def encode(self, sample: Any) -> str:
        """The prompt without any answer."""
        raise NotImplementedError

    def answer_text(self, sample: Any, candidate: Any) -> str:
        """The text appended to ``encode(sample)`` for ``candidate``."""
        raise NotImplementedError

    def verbalize(self, sample: Any, candidate: Any) -> str:
        """The prompt followed by the answer text for ``candidate``."""
        return self.encode(sample) + self.answer_text(sample, candidate)

    def demonstration(self, sample: Any, candidate: Any) -> str:
        """The text of ``sample`` shown as an in-context demonstration with answer ``candidate``."""
        return self.verbalize(sample, candidate)

    def encode_sfc(self, sample: Any) -> str:
        """The SFC calibration prompt: the prompt without the input (MeZO's ``encode_sfc``)."""
        raise ValueError(f"{type(self).__name__} has no SFC calibration prompt (--sfc / --icl_sfc calibrate the "
                         f"candidate scores of classification and multiple-choice tasks only)")

    def answer_text_sfc(self, sample: Any, candidate: Any) -> str:
        """The text appended to ``encode_sfc(sample)`` for ``candidate``; the ordinary answer text by default."""
        return self.answer_text(sample, candidate)

    def calibration(self) -> "CalibrationTemplate":
        """This template's SFC calibration prompt as a template (see CalibrationTemplate)."""
        return CalibrationTemplate(self)


class CalibrationTemplate(Template):
    """The SFC calibration prompt of ``base`` as a template: ``encode`` is ``base.encode_sfc``, the answers are
    ``base.answer_text_sfc``; demonstrations (``--icl_sfc``) are still shown in ``base``'s ordinary form."""

    def __init__(self, base: Template):
        self.base = base

    def encode(self, sample: Any) -> str:
        return self.base.encode_sfc(sample)

    def answer_text(self, sample: Any, candidate: Any) -> str:
        return self.base.answer_text_sfc(sample, candidate)

    def demonstration(self, sample: Any, candidate: Any) -> str:
        return self.base.demonstration(sample, candidate)


class VerbalizerTemplate(Template):
    """A classification template whose candidates are label ids mapped to words.

    ``separator`` goes between the prompt and the label word.
    """

    verbalizer: dict[int, str] = {}
    separator: str = ""

    def answer_text(self, sample: Any, candidate: Any) -> str:
        return self.separator + self.verbalizer[candidate]

    def encode_sfc(self, sample: Any) -> str:
        """MeZO's calibration prompt for the PromptSource templates (RTE, CB, WiC, WSC, MultiRC): empty, the
        label word alone."""
        return ""


class SST2Template(VerbalizerTemplate):
    """``<sentence> It was`` + `` great`` / `` terrible``."""

    verbalizer = {0: "terrible", 1: "great"}
    separator = " "

    def encode(self, sample: Any) -> str:
        return f"{sample.data['sentence'].strip()} It was"

    def encode_sfc(self, sample: Any) -> str:
        return " It was"


class RTETemplate(VerbalizerTemplate):
    """PromptSource-style RTE prompt; 0 (entailment) is ``Yes``."""

    verbalizer = {0: "Yes", 1: "No"}

    def encode(self, sample: Any) -> str:
        premise, hypothesis = sample.data["premise"], sample.data["hypothesis"]
        return f'{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n'


class CBTemplate(VerbalizerTemplate):
    """PromptSource-style CB prompt; entailment/contradiction/neutral are Yes/No/Maybe."""

    verbalizer = {0: "Yes", 1: "No", 2: "Maybe"}

    def encode(self, sample: Any) -> str:
        premise, hypothesis = sample.data["premise"], sample.data["hypothesis"]
        return f'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n'


class WICTemplate(VerbalizerTemplate):
    """PromptSource-style WiC prompt; 1 (same meaning) is ``Yes``."""

    verbalizer = {0: "No", 1: "Yes"}

    def encode(self, sample: Any) -> str:
        d = sample.data
        return (f'Does the word "{d["word"]}" have the same meaning in these two sentences? Yes, No?\n'
                f'{d["sentence1"]}\n{d["sentence2"]}\n')


class WSCTemplate(VerbalizerTemplate):
    """PromptSource-style WSC prompt; the pronoun (span 2) is lower-cased."""

    verbalizer = {0: "No", 1: "Yes"}

    def encode(self, sample: Any) -> str:
        d = sample.data
        return (f'{d["text"]}\nIn the previous sentence, does the pronoun "{d["span2_text"].lower()}" '
                f'refer to {d["span1_text"]}? Yes or No?\n')


class MultiRCTemplate(VerbalizerTemplate):
    """PromptSource-style MultiRC prompt: is this answer to the question correct?"""

    verbalizer = {0: "No", 1: "Yes"}

    def encode(self, sample: Any) -> str:
        d = sample.data
        return (f'{d["paragraph"]}\nQuestion: {d["question"]}\n'
                f'I found this answer "{d["answer"]}". Is that correct? Yes or No?\n')


class BoolQTemplate(Template):
    """MeZO's BoolQTemplateV3: passage, capitalised question with ``?``, newline, then ``Yes``/``No``.

    The candidates are the answer words themselves.
    """

    def encode(self, sample: Any) -> str:
        question = sample.data["question"]
        if not question.endswith("?"):
            question += "?"
        question = question[0].upper() + question[1:]
        return f"{sample.data['passage']} {question}\n"

    def answer_text(self, sample: Any, candidate: Any) -> str:
        return str(candidate)

    def encode_sfc(self, sample: Any) -> str:
        return ""


class CopaTemplate(Template):
    """``<premise without final period> because|so <choice>``; candidates are the choice texts.

    The choice's first word is lower-cased unless it is ``I`` (MeZO's "correct" capitalisation).
    """

    connectors = {"cause": " because ", "effect": " so "}

    def _connector(self, sample: Any) -> str:
        question = sample.data["question"]
        if question not in self.connectors:
            raise ValueError(f"COPA question must be 'cause' or 'effect', got {question!r}")
        return self.connectors[question]

    def encode(self, sample: Any) -> str:
        premise = sample.data["premise"].rstrip()
        if premise.endswith("."):
            premise = premise[:-1]
        return premise + self._connector(sample)

    def answer_text(self, sample: Any, candidate: Any) -> str:
        words = str(candidate).split(" ")
        if words[0] != "I":
            words[0] = words[0].lower()
        return " ".join(words)

    def encode_sfc(self, sample: Any) -> str:
        """The connective alone (``so`` / ``because``), without its spaces."""
        return self._connector(sample).strip()

    def answer_text_sfc(self, sample: Any, candidate: Any) -> str:
        return " " + self.answer_text(sample, candidate)


def _first(candidate: Any) -> str:
    """A candidate that is a list of gold answers stands for its first one."""
    if isinstance(candidate, (list, tuple)):
        return candidate[0]
    return candidate


class ReCoRDTemplate(Template):
    """MeZO's ReCoRDTemplateGPT3: highlights become ``- `` bullets, the answer fills the query's placeholder."""

    def _passage(self, sample: Any) -> str:
        return sample.data["passage"].replace("@highlight\n", "- ")

    def encode(self, sample: Any) -> str:
        return f"{self._passage(sample)}\n-"

    def encode_sfc(self, sample: Any) -> str:
        """The bullet alone; the answer is the filled-in query, as in ``answer_text``."""
        return "-"

    def answer_text(self, sample: Any, candidate: Any) -> str:
        return " " + sample.data["query"].replace("@placeholder", _first(candidate))


class SQuADTemplate(Template):
    """MeZO's SQuADv2Template (used for SQuAD v1.1): title, context, question, ``Answer:``.

    The answer is followed by a newline, which teaches the model to stop there.
    """

    def encode(self, sample: Any) -> str:
        d = sample.data
        return f"Title: {d['title']}\nContext: {d['context']}\nQuestion: {d['question'].strip()}\nAnswer:"

    def answer_text(self, sample: Any, candidate: Any) -> str:
        return f" {_first(candidate)}\n"


class DROPTemplate(Template):
    """MeZO's DROPTemplate: passage, question, ``Answer:``; the answer ends with a newline."""

    def encode(self, sample: Any) -> str:
        d = sample.data
        return f"Passage: {d['context']}\nQuestion: {d['question'].strip()}\nAnswer:"

    def answer_text(self, sample: Any, candidate: Any) -> str:
        return f" {_first(candidate)}\n"
