"""The models and batches the benchmark runs: real architectures with random weights built from their configs
(nothing is downloaded), at the batch shapes of real tasks, trained as the trainer trains them."""
from __future__ import annotations

import argparse
import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

from bench.harness import synchronizer
from mezo_engine import lora
from mezo_engine.data import Feature, TrainCollator
from mezo_engine.scoring import batch_loss

VARIANTS = ("full", "lora", "xgblora")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODEL_NAMES = ("tiny", "smollm2-135m-config", "opt-125m-config", "opt-1.3b-config", "opt-2.7b-config",
               "opt-6.7b-config", "opt-13b-config")


def _opt(hidden: int, layers: int, heads: int, ffn: int) -> OPTConfig:
    return OPTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=ffn,
                     word_embed_proj_dim=hidden, vocab_size=50272, max_position_embeddings=2048,
                     do_layer_norm_before=True, dropout=0.0, pad_token_id=1, bos_token_id=2, eos_token_id=2)


def model_configs() -> dict[str, Callable]:
    """Name -> a function building the transformers config (built on demand: no work at import time)."""
    return {
        "tiny": lambda: LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=260, max_position_embeddings=1024,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2),
        "smollm2-135m-config": lambda: LlamaConfig(
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
            rope_theta=100000.0, rms_norm_eps=1e-5, pad_token_id=2, bos_token_id=1, eos_token_id=2),
        "opt-125m-config": lambda: _opt(768, 12, 12, 3072),
        "opt-1.3b-config": lambda: _opt(2048, 24, 32, 8192),
        "opt-2.7b-config": lambda: _opt(2560, 32, 32, 10240),
        "opt-6.7b-config": lambda: _opt(4096, 32, 32, 16384),
        "opt-13b-config": lambda: _opt(5120, 40, 40, 20480),
    }


@dataclass(frozen=True)
class Workload:
    """A task's training batch shape: examples x candidates rows of about ``length`` tokens."""

    examples: int
    candidates: int
    min_len: int
    max_len: int
    option_len: int = 1


TASKS = {
    "sst2": Workload(examples=16, candidates=2, min_len=32, max_len=48),  # ~40 tokens, 2 label words
    "multirc": Workload(examples=16, candidates=2, min_len=360, max_len=440),  # ~400 tokens, Yes / No
    "cb": Workload(examples=16, candidates=3, min_len=60, max_len=100),  # ~80 tokens, Yes / No / Maybe
}


def build_model(name: str, dtype: torch.dtype, device: torch.device, seed: int):
    """A causal LM with random weights from the named config, in eval mode on ``device``."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_configs()[name](), dtype=dtype)
    return model.eval()


def attach_variant(model, variant: str, args: argparse.Namespace):
    """The model as it trains in ``variant``: all parameters, LoRA r=8 on q/v, or rank-1 boosters on q/v."""
    if variant == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    rank = args.lora_r if variant == "lora" else args.xgblora_rank
    model = lora.attach_lora(model, r=rank, alpha=args.lora_alpha).eval()
    make_live(model, torch.Generator().manual_seed(args.seed))
    return model


@torch.no_grad()
def make_live(model, gen: torch.Generator) -> None:
    """B != 0 on every adapter, as after the first step: a fresh B = 0 adapter would not be folded at all."""
    for _, layer in lora.lora_layers(model):
        for adapter in layer.active_adapters:  # PEFT's own attributes: lora.py manages one adapter a layer
            B = layer.lora_B[adapter].weight
            B.copy_(1e-3 * torch.randn(B.shape, generator=gen))


def make_features(work: Workload, vocab: int, seed: int) -> list:
    """Random training examples: a prompt per example and a row per candidate (prompt + answer token), the
    prompt marked as shared, as ``data.encode_candidates`` marks it."""
    gen = torch.Generator().manual_seed(seed)
    answers = torch.randint(4, vocab, (work.candidates, work.option_len), generator=gen).tolist()
    features = []
    for _ in range(work.examples):
        length = int(torch.randint(work.min_len, work.max_len + 1, (1,), generator=gen))
        prompt = torch.randint(4, vocab, (length - work.option_len,), generator=gen).tolist()
        gold = int(torch.randint(work.candidates, (1,), generator=gen))
        features.append(Feature([prompt + a for a in answers], [work.option_len] * work.candidates, gold, prompt))
    return features


def make_batch(features: list, pad_id: int, device: torch.device, shared: bool = True) -> dict:
    """The trainer's collated batch (``data.TrainCollator``; ``shared`` False: upstream's rows) on ``device``."""
    return {k: v.to(device) for k, v in TrainCollator(pad_id, shared)(features).items()}


def loss_fn_for(model, batch: dict, fold: bool = False) -> Callable[[], float]:
    """The trainer's ZO loss: ``batch_loss`` (classification over candidates) under no_grad, as a float; with
    ``fold`` the adapters run folded into the weights (``lora.folded_adapters``, as ``--zo_fold_adapters``)."""
    def loss() -> float:
        with torch.no_grad(), lora.folded_adapters(model) if fold else contextlib.nullcontext():
            return batch_loss(model, batch, as_classification=True).item()

    return loss


def plain_loss_fn_for(model, batch: dict) -> Callable[[], float]:
    """The trainer's loss with the adapter switched off (PEFT's ``disable_adapter``): the plain model's forward on
    the same weights in memory as the adapter forwards it is compared with."""
    def loss() -> float:
        with torch.no_grad(), model.disable_adapter():
            return batch_loss(model, batch, as_classification=True).item()

    return loss


@dataclass
class Context:
    """What every measurement needs: parsed arguments, device, dtype, the batch and a step-seed counter."""

    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    features: list
    pad_id: int
    seeds: Iterator[int]

    @property
    def sync(self) -> Callable[[], None]:
        return synchronizer(self.device)


def make_context(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Context:
    """The context of a resolved run: ``args.examples`` random examples of the task's shape."""
    config = model_configs()[args.model]()
    work = TASKS[args.task]
    work = Workload(args.examples, work.candidates, work.min_len, work.max_len, work.option_len)
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    features = make_features(work, config.vocab_size, args.seed)
    return Context(args, device, dtype, features, pad_id, itertools.count(1))


def variant_model(variant: str, ctx: Context):
    """A fresh model of ``ctx``'s config as it trains in ``variant``."""
    return attach_variant(build_model(ctx.args.model, ctx.dtype, ctx.device, ctx.args.seed), variant, ctx.args)
