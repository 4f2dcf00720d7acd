"""``--masked-lm``: the masked-LM path of ``medium_models`` on a RoBERTa config (random weights): a batch of
SST-2-shaped prompts (one mask each), one forward of the label-word loss (``medium_models.scoring.LabelLoss``:
encoder, MLM head on the mask rows only) against one ZO step with it, per variant -> step / (2 forwards)."""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, RobertaConfig

from bench.harness import meta, run_rounds, summarise, synchronizer
from bench.workload import attach_variant
from medium_models.scoring import Collator, Feature, LabelLoss
from mezo_engine import lora, zo
from mezo_engine.zo_params import zo_params

MASKED_LM_NAMES = ("tiny-roberta", "roberta-base-config", "roberta-large-config")


def _roberta(hidden: int, layers: int, heads: int) -> RobertaConfig:
    return RobertaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=4 * hidden, vocab_size=50265, max_position_embeddings=514,
                         type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def masked_lm_configs() -> dict[str, Callable]:
    """RoBERTa configs (random weights), as ``workload.model_configs``."""
    return {"tiny-roberta": lambda: _roberta(32, 2, 4), "roberta-base-config": lambda: _roberta(768, 12, 12),
            "roberta-large-config": lambda: _roberta(1024, 24, 16)}


def masked_lm_batch(vocab: int, rows: int, seed: int) -> tuple[dict, list[int]]:
    """SST-2-shaped prompts: ``rows`` rows of 32 to 48 random tokens between <s> and </s>, a mask 3 tokens before
    the end, gold labels alternating; collated as ``medium_models`` collates them. Returns the batch and 2 label
    word ids."""
    gen = torch.Generator().manual_seed(seed)
    features = []
    for i in range(rows):
        length = int(torch.randint(32, 49, (1,), generator=gen))
        ids = [0, *torch.randint(4, vocab - 1, (length - 2,), generator=gen).tolist(), 2]
        ids[-3] = vocab - 1  # the mask token (RoBERTa's <mask> is its last id)
        features.append(Feature(ids, length - 3, i % 2))
    return Collator(pad_id=1, causal=False)(features), [vocab // 2, vocab // 2 + 1]


def masked_lm_cases(variant: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """One forward of the label-word loss and one ZO step with it, for ``variant`` on ``args.model``."""
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = AutoModelForMaskedLM.from_config(masked_lm_configs()[args.model](), dtype=dtype).eval()
    model = attach_variant(model, variant, args)
    batch, label_ids = masked_lm_batch(model.config.vocab_size, args.examples, args.seed)
    batch = {k: v.to(device) for k, v in batch.items()}
    objective, zp, seeds = LabelLoss(label_ids, causal=False), zo_params(model), itertools.count()

    def loss() -> float:
        with torch.no_grad(), lora.folded_adapters(model) if variant != "full" else contextlib.nullcontext():
            return objective(model, batch).item()
    return {f"mlm_forward/{variant}": loss,
            f"mlm_zo_step/{variant}": lambda: zo.zo_step(zp.params, loss, next(seeds), args.eps, args.lr,
                                                         args.weight_decay, zp.decay, zp.cache)}


def run_masked_lm(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """Per variant, the ZO step over two forwards of the label-word loss (medians)."""
    rows = []
    for variant in args.variants:
        times = summarise(run_rounds(masked_lm_cases(variant, args, device, dtype), args.warmup, args.repeats,
                                     synchronizer(device), desc=f"masked LM {variant}"))
        forward, step = times[f"mlm_forward/{variant}"]["median"], times[f"mlm_zo_step/{variant}"]["median"]
        # Stored unrounded: the ratio is then exactly the quotient of the stored times; the table rounds.
        rows.append({"variant": variant, "forward_s": forward, "zo_step_s": step,
                     "step / 2 forwards": step / (2 * forward)})
    return {"meta": meta(args, device), "masked_lm": rows}


def write_masked_lm(args: argparse.Namespace, result: dict, out: Path, device: torch.device) -> dict:
    """Write the JSON to ``out`` and print the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\n{args.model} masked LM x{args.examples} / {device.type} / {args.dtype} / {args.threads} threads\n")
    print("| variant | forward s | ZO step s | step / 2 forwards |\n| --- | ---: | ---: | ---: |")
    print("\n".join(f"| {r['variant']} | {r['forward_s']:.4f} | {r['zo_step_s']:.4f} | {r['step / 2 forwards']:.3f} |"
                    for r in result["masked_lm"]))
    print(f"\nwrote {out}")
    return result
