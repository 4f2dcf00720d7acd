"""A whole benchmark run: the settings resolved for the device, memory first, then the timed rounds of each variant,
the ratios, the JSON and the printed table."""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch

from bench import memory, report, scoring, step
from bench.harness import LoadMeter, Samples, meta, release, run_rounds, summarise
from bench.masked_lm import MASKED_LM_NAMES
from bench.ratios import compute_ratios
from bench.workload import DTYPES, TASKS, VARIANTS, Context, build_model, make_batch, make_context, variant_model

ROOT = Path(__file__).resolve().parents[2]


def _resolve_masked_lm(args: argparse.Namespace) -> None:
    args.model = args.model or ("tiny-roberta" if args.quick else "roberta-large-config")
    args.examples = args.examples or 64
    if args.model not in MASKED_LM_NAMES:
        raise SystemExit(f"--masked-lm: --model must be one of {', '.join(MASKED_LM_NAMES)}")


def _resolve_variants(args: argparse.Namespace) -> None:
    if isinstance(args.variants, str):
        args.variants = tuple(v for v in args.variants.split(",") if v)
    if unknown := set(args.variants) - set(VARIANTS):
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {','.join(VARIANTS)}")


def resolve(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Fill in the defaults that depend on the device and on --quick; return the device and dtype."""
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.masked_lm:
        _resolve_masked_lm(args)
    if args.quick:
        args.model = args.model or "tiny"
        args.repeats, args.warmup, args.mem_steps = min(args.repeats, 3), min(args.warmup, 1), min(args.mem_steps, 2)
        args.threads = args.threads or 1  # a tiny model gains nothing from threads, and spinning ones cost
    args.model = args.model or ("opt-1.3b-config" if device.type == "cuda" else "smollm2-135m-config")
    if args.dtype == "auto":
        args.dtype = "bf16" if device.type == "cuda" else "fp32"
    args.examples = args.examples or TASKS[args.task].examples
    if args.trainer_step_model and (args.task != "sst2" or not args.data_dir):
        raise SystemExit("--trainer-step-model: needs --task sst2 and --data-dir (the real SST-2 files)")
    _resolve_variants(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    return device, DTYPES[args.dtype]


def time_variant(variant: str, ctx: Context) -> Samples:
    """Build the model of ``variant`` and time all of its measurements in interleaved rounds."""
    model = variant_model(variant, ctx)
    batch = make_batch(ctx.features, ctx.pad_id, ctx.device)
    cases = step.zo_cases(variant, model, batch, ctx) | step.trainer_case(variant, model, batch, ctx)
    plain = model if variant == "full" else build_model(ctx.args.model, ctx.dtype, ctx.device, ctx.args.seed)
    cases.update(step.ref_case(variant, model, plain, ctx))
    if variant == "full":
        cases.update(scoring.eval_cases(model, ctx))
    if variant == "xgblora":
        cases.update(step.merge_case(model, ctx))
    samples = run_rounds(cases, ctx.args.warmup, ctx.args.repeats, ctx.sync, desc=f"timing {variant}")
    del model, plain, batch, cases
    release(ctx.device)
    return samples


def _real_trainer_samples(ctx: Context) -> Samples:
    """``--trainer-step-model``: the Trainer's step with real weights, in an output folder that is then removed."""
    with tempfile.TemporaryDirectory() as out_dir:
        return run_rounds(step.trainer_step_cases(ctx.args, out_dir), ctx.args.warmup, ctx.args.repeats, ctx.sync,
                          desc="timing the trainer's step")


def run_benchmark(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """Memory first (children must not share the CPU with timed rounds), then the timed rounds per variant."""
    ctx = make_context(args, device, dtype)
    load = LoadMeter()
    peaks = memory.measure_memory(ctx)
    samples: Samples = {}
    for variant in args.variants:
        samples.update(time_variant(variant, ctx))
    if args.trainer_step_model:
        samples.update(_real_trainer_samples(ctx))
    times = summarise(samples)
    states = {v: memory.optimizer_state_bytes(v, ctx) for v in args.variants if v in ("full", "lora")}
    specs = report.ratio_specs(args.variants, TASKS[args.task].candidates, trainer_step=bool(args.trainer_step_model))
    ratios = compute_ratios(specs, times, peaks)
    result = {"meta": {**meta(args, device), "load": load.report()}, "times": times, "memory": peaks,
              "ratios": ratios, "zo_optimizer_state": states}
    result["table"] = report.table_rows(times, peaks, ratios, states)
    return result


def write_result(args: argparse.Namespace, result: dict, out: Path, device: torch.device) -> dict:
    """Write the JSON to ``out`` and print the run's line and the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    load = result["meta"]["load"]
    print(f"\n{args.model} / {args.task} x{args.examples} / {device.type} {result['meta']['device_name']} / "
          f"{args.dtype} / {args.threads} threads / other processes ~{load.get('other_processes_cores', math.nan):.2f}"
          f" cores\n")
    print(report.markdown(result["table"]))
    print(f"\nwrote {out}")
    return result
