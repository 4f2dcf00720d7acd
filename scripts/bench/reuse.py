"""``--activation-reuse``: the ZO step with its forwards sharing what lies below the lowest perturbed block
(``--zo_reuse_activations``, mezo_engine/activation_reuse.py), real weights (``--trainer-step-model``) and a real
SST-2 batch (``--data-dir``), against two forwards of the training loss on the same collated batch (the benchmark's
row b: what a ZO step's two forwards cost without sharing).

Variants: ``head``, ZO head tuning with the head untied from the embeddings (``--head_tuning --untie_emb``; the
whole body is shared; target step <= 0.6x two forwards); ``lora_upper``, LoRA r=8 on the upper third of the blocks
(``--lora --lora_layers <2/3 of the blocks>-<last>``; information). Each variant's step runs with reuse and without
it (``--zo_reuse_activations False``), in the same interleaved rounds as the two forwards."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench import report, step
from bench.harness import LoadMeter, meta, run_rounds, summarise
from bench.ratios import Ratio, compute_ratios
from mezo_engine.models import load_config
from mezo_engine.trainer import zo_optimizer

VARIANTS = ("head", "lora_upper")
TARGET = {"head": 0.6, "lora_upper": None}


def variant_flags(variant: str, blocks: int) -> tuple[str, ...]:
    """run.py's flags of ``variant`` on a model of ``blocks`` blocks."""
    if variant == "head":
        return ("--head_tuning", "--untie_emb")
    return ("--lora", "--lora_layers", f"{2 * blocks // 3}-{blocks - 1}")


def _cases(trainers: dict, batch: dict, variant: str) -> dict:
    """The step with and without reuse, and two forwards of the training loss, all on ``batch``."""
    def step_of(trainer):
        def one_step() -> None:
            trainer.state.global_step += 1
            trainer.training_step(trainer.model, batch)
            trainer.optimizer.step()
        return one_step

    plain = trainers["recompute"]
    mode = plain._run_mode()

    def two_forwards() -> None:
        for _ in range(2):
            with torch.no_grad(), mode.forward_context(plain.model):
                plain.compute_loss(plain.model, batch).item()
    return {f"reuse_bench_step_reuse/{variant}": step_of(trainers["reuse"]),
            f"reuse_bench_step_recompute/{variant}": step_of(plain),
            f"reuse_bench_two_forwards/{variant}": two_forwards}


def ratios(variants: tuple[str, ...]) -> list[Ratio]:
    out = []
    for v in variants:
        out.append(Ratio(f"reuse_step_over_two_forwards/{v}", f"t:reuse_bench_step_reuse/{v}",
                         f"t:reuse_bench_two_forwards/{v}", 1.0, "<=" if TARGET[v] else "", TARGET[v] or 0.0,
                         f"ZO step with reuse / 2 forwards of the training loss, same batch ({v})"))
        out.append(Ratio(f"recompute_step_over_two_forwards/{v}", f"t:reuse_bench_step_recompute/{v}",
                         f"t:reuse_bench_two_forwards/{v}", 1.0, "", 0.0,
                         f"ZO step without reuse / 2 forwards ({v})"))
        out.append(Ratio(f"reuse_over_recompute/{v}", f"t:reuse_bench_step_reuse/{v}",
                         f"t:reuse_bench_step_recompute/{v}", 1.0, "", 0.0, f"ZO step, reuse / without ({v})"))
    return out


def run_reuse(args: argparse.Namespace, device: torch.device) -> dict:
    """Each variant's cases in interleaved rounds; the ratios, the table and where each variant's cut fell."""
    if not (args.trainer_step_model and args.data_dir):
        raise SystemExit("--activation-reuse: needs --trainer-step-model (e.g. smollm2-135m) and --data-dir")
    load, samples, cuts = LoadMeter(), {}, {}
    variants = tuple(v for v in args.reuse_variants.split(",") if v)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--reuse-variants: unknown {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}")
    blocks = load_config(args.trainer_step_model).num_hidden_layers
    with tempfile.TemporaryDirectory() as out_dir:
        for variant in variants:
            flags = variant_flags(variant, blocks)
            trainers = {name: step.real_trainer(args, out_dir, flags, extra)[0]
                        for name, extra in (("reuse", ()), ("recompute", ("--zo_reuse_activations", "False")))}
            batch = trainers["reuse"].data_collator(list(trainers["reuse"].train_dataset))
            reuse = trainers["reuse"]._reuse(trainers["reuse"].model)
            cut = reuse.cut(zo_optimizer(trainers["reuse"].optimizer).zo_params())
            samples.update(run_rounds(_cases(trainers, batch, variant), args.warmup, args.repeats, lambda: None,
                                      desc=f"reuse {variant}"))
            cuts[variant] = {"flags": list(flags), "cut": None if cut is None else {"kind": cut.kind, "first": cut.first},
                             "replays": reuse.replays}
            del trainers
    times = summarise(samples)
    found = compute_ratios(ratios(variants), times, {})
    return {"meta": {**meta(args, device), "load": load.report()}, "times": times, "ratios": found, "cuts": cuts,
            "table": report.table_rows(times, {}, found)}


def write_reuse(args: argparse.Namespace, result: dict, out: Path) -> dict:
    """Write the JSON to ``out``; print the table and where each variant's cut fell."""
    report.write_and_print(args, result, out, "activation reuse")
    for variant, info in result["cuts"].items():
        print(f"\n{variant}: {' '.join(info['flags'])}: cut {info['cut']}, {info['replays']} forwards replayed")
    print(f"\nwrote {out}")
    return result
