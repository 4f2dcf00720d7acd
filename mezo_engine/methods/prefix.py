"""Prefix tuning (``--prefix_tuning``) as MeZO runs it: its flags, checks and mode. The prefix itself (keys and
values put into the KV cache by a forward pre-hook) is ``mezo_engine/prefix.py``."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mezo_engine import prefix
from mezo_engine.methods.ft import Method, Mode
from mezo_engine.models import position_limit

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
DRIVER = {"flag": "prefix_tuning", "defaults": "prefix",
          "driver_args": ["--num_prefix", "{NUM_PREFIX:5}", "--no_reparam", "--prefix_init_by_real_act"],
          "untrained": "nothing would train the prefix"}


@dataclass
class PrefixFlags:
    prefix_tuning: bool = field(default=False, metadata={
        "help": "Prefix tuning: train --num_prefix key/value vectors in front of every attention layer; nothing else "
                "trains. MeZO's advice: zo LR 1e-2 or 1e-3 with --zo_eps 1e-1; regular training LR 1e-2."})
    num_prefix: int = field(default=5, metadata={"help": "Prefix tuning: number of prefix positions."})
    no_reparam: bool = field(default=True, metadata={
        "help": "Prefix tuning: train the prefix keys and values directly (MeZO's default). --no_reparam False: "
                "compute them with per-layer MLPs from shared embeddings (the reparameterisation trick)."})
    prefix_init_by_real_act: bool = field(default=True, metadata={
        "help": "Prefix tuning: start the prefix from the keys and values the model computes for --num_prefix "
                "random vocabulary tokens (drawn with --seed); False: standard normal. Needs --no_reparam."})


def problems(args):
    """Yield one message per bad prefix-tuning flag value."""
    if not args.prefix_tuning:
        return
    for flag in ("xgblora", "lora"):
        if getattr(args, flag):
            yield (f"--prefix_tuning: cannot be combined with --{flag}; one training mode at a time "
                   f"(drop --prefix_tuning or --{flag})")
    if args.num_prefix < 1:
        yield f"--num_prefix {args.num_prefix}: must be >= 1"
    if args.prefix_init_by_real_act and not args.no_reparam:
        yield ("--prefix_init_by_real_act with --no_reparam False: real activations set the prefix keys and "
               "values directly, which the reparameterisation computes instead; pass --no_reparam, or "
               "--prefix_init_by_real_act False")


def model_problems(args, config):
    """The prefix flags against the model's config, before it loads: ``--num_prefix`` within its positions (the
    prefix occupies them when its keys and values are computed, and a learned position table ends there)."""
    limit = position_limit(config)
    if args.prefix_tuning and limit is not None and args.num_prefix > limit:
        yield f"--num_prefix {args.num_prefix}: more than this model's {limit} positions"


class PrefixMode(Mode):
    """Prefix tuning (``--prefix_tuning``, ``prefix.py``): ``--num_prefix`` key/value vectors in front of every
    attention layer train, the model stays frozen; saves only the prefix (``out/prefix``)."""

    name = "prefix"
    frozen_base = True  # trains beside the base weights, which may then be 8-bit (--load_int8)

    def prepare(self, model, objective=None, batches=None):
        a = self.args
        return prefix.attach_prefix(model, a.num_prefix, reparam=not a.no_reparam,
                                    init_by_real_act=a.prefix_init_by_real_act,
                                    generator=torch.Generator().manual_seed(a.seed))

    def save(self, model, tokenizer, out):
        prefix.save_prefix(model, out / "prefix")  # the base model is unchanged; prefix.load_prefix puts it back


METHOD = Method(PrefixMode, problems, flags=PrefixFlags, model_problems=model_problems)
