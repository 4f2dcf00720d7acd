"""Head tuning (``--head_tuning``): only the LM head trains. Also the LM-head flags that act before any training
(``--untie_emb``, ``--linear_probing``: ``modes.prepare_head``). The head operations are ``mezo_engine/head.py``."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mezo_engine import head
from mezo_engine.methods.ft import Method, Mode

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
DRIVER = {"flag": "head_tuning", "defaults": "full", "untrained": "nothing would train the head"}

logger = logging.getLogger(__name__)


@dataclass
class HeadFlags:
    head_tuning: bool = field(default=False, metadata={
        "help": "Train only the LM head (--trainer zo or regular; MeZO's flag, default off). If the head is tied "
                "to the input embeddings (OPT, GPT-2, SmolLM2, ...) and --untie_emb is not given, the shared weight "
                "trains, so the input embeddings change too (as upstream; with regular training its gradient "
                "comes from the head's use alone)."})
    untie_emb: bool = field(default=False, metadata={
        "help": "Give the LM head its own copy of the tied input embedding weight (MeZO's flag, default off); a "
                "saved model keeps them apart."})
    linear_probing: bool = field(default=False, metadata={
        "help": "Linear probing (MeZO's flag, default off): fit a logistic regression (LogisticRegressionCV) from "
                "the LM head's input to each gold answer token of the training examples and write it into those "
                "tokens' rows of the head, untied first (automatically). --trainer none: the probe is all the "
                "training; zo or regular: training starts from it (upstream MeZO stopped after the probe). "
                "Not for generation tasks."})
    lp_early_stopping: bool = field(default=False, metadata={
        "help": "Linear probing with tol 0.01 and at most 1000 iterations instead of 1e-4 and 5000 (MeZO's flag, "
                "default off)."})


def problems(args):
    """Yield one message per bad head flag value."""
    for flag in ("lora", "xgblora", "prefix_tuning"):
        if args.head_tuning and getattr(args, flag):
            yield f"--head_tuning and --{flag}: choose one (--head_tuning trains the LM head alone)"
    if args.lp_early_stopping and not args.linear_probing:
        yield "--lp_early_stopping: needs --linear_probing"


class HeadMode(Mode):
    """Head tuning (``--head_tuning``): only the LM head trains; a head tied to the input embeddings trains the
    shared weight (so the embeddings change too) unless ``--untie_emb`` untied it first (``head.py``)."""

    name = "head"

    def prepare(self, model, objective=None, batches=None):
        self.trainable = head.train_head_only(model)
        logger.info("head tuning: only %s train%s", ", ".join(self.trainable),
                    " (tied to the input embeddings, which change with it)" if head.is_tied(model) else "")
        return model

    def summary(self, callbacks):
        return {"trainable": self.trainable + [n for n in self.also_trained if n not in self.trainable]}


METHOD = Method(HeadMode, problems, flags=HeadFlags)
