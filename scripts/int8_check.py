"""How close the int8 frozen base (``--load_int8`` on the CPU, mezo_engine/int8.py) scores to float32, and what
requantising a merge would lose.

1. Scores: every candidate's mean answer log-probability (zero-shot, as run.py scores SST-2) of the first
   ``--num-eval`` validation sentences (all 872 by default), by the model in float32 and by the same model with
   its frozen linear layers in int8 (LM head float32, as ``--trainer none --load_int8`` runs it). Prints the mean
   and largest absolute difference of the log-probabilities, how often the two predict the same label, and both
   accuracies.
2. Requantising a merge: XGBLoRA merges ``delta = s B A`` into its adapted layers. The engine keeps those layers
   in float32; the alternative would requantise ``W + delta`` to int8 after every merge. On the model's real
   adapted weights (q_proj and v_proj of every block), rank-1 deltas of random direction scaled to the
   per-module norms of a real run's merges in their order (``--merges``: a result JSON of an XGBLoRA run; each
   merge's ``delta_norm`` over the square root of its module count), this prints the error requantising adds
   after the first merge, ``|Q(W8 + delta) - (W8 + delta)| / |delta|`` (W8: the int8 weight the model holds), and
   after the last, requantised after every merge against summed in float32: the distance over the norm of the
   merged sum, and the share of that sum that survives; medians and extremes over the modules.
3. The kernels' error, layer by layer: on the first ``--batch-size`` prompts, every frozen linear layer's output
   relative to float32 for the engine's kernel (activations quantised per row), torch's ``quantize_dynamic``
   (fbgemm; the same weight grid, activations per tensor to 7 bits) and the int8 weight with float32 activations
   (the weight's share of the error).

    python scripts/int8_check.py --model smollm2-135m --data-dir ../shared/data --threads 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from large_models.tasks import get_task
from mezo_engine import int8
from mezo_engine.evaluation import EvalConfig, candidate_scores
from mezo_engine.models import load_model_and_tokenizer

ROOT = Path(__file__).resolve().parents[1]
STUDY_MERGES = ROOT / "docs/study/sst2-zo/MODE=xgblora,XGBLORA_STEPS=100,EPS=1e-2,LR=1e-3,SEED=0-77525a79.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="--model_name of run.py (alias, directory, .gguf)")
    p.add_argument("--data-dir", required=True, help="task data with SST-2/dev.tsv (e.g. ../shared/data)")
    p.add_argument("--num-eval", type=int, default=None, help="first N validation sentences (default: all)")
    p.add_argument("--batch-size", type=int, default=16, help="sentences scored per batch")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--merges", default=str(STUDY_MERGES), help="result JSON of an XGBLoRA run: its merges' norms")
    p.add_argument("--targets", default="q_proj,v_proj", help="adapted layers whose weights requantising would hit")
    p.add_argument("--seed", type=int, default=0, help="seed of the random delta directions")
    p.add_argument("--out", default=str(ROOT / "result" / "int8-check.json"), help="JSON path")
    return p.parse_args(argv)


# ---- 1. scores -------------------------------------------------------------------------------------------------
def score(model, tokenizer, samples: list, batch_size: int) -> tuple[list[list[float]], float]:
    """Every candidate's mean answer log-probability per sample (zero-shot, shared prompts), and the seconds."""
    start = time.perf_counter()
    cfg = EvalConfig(batch_size=batch_size, progress=False)
    scores = candidate_scores(model, tokenizer, get_task("SST2").template, samples, (), cfg)
    return scores, time.perf_counter() - start


def compare_scores(float_scores: list, int8_scores: list, gold: list[int]) -> dict:
    """Mean and largest |difference| of the log-probabilities, prediction agreement, both accuracies."""
    diffs = [abs(a - b) for fs, qs in zip(float_scores, int8_scores) for a, b in zip(fs, qs)]
    pick = [[max(range(len(s)), key=s.__getitem__) for s in scores] for scores in (float_scores, int8_scores)]
    n = len(gold)
    return {"sentences": n, "candidates": len(diffs), "mean_abs_logprob_diff": statistics.fmean(diffs),
            "max_abs_logprob_diff": max(diffs), "prediction_agreement": sum(a == b for a, b in zip(*pick)) / n,
            "accuracy_float32": sum(p == g for p, g in zip(pick[0], gold)) / n,
            "accuracy_int8": sum(p == g for p, g in zip(pick[1], gold)) / n}


# ---- 2. requantising a merge -------------------------------------------------------------------------------------
def merge_norms(path: str) -> list[float]:
    """Per-module Frobenius norm of each merge of an XGBLoRA result: delta_norm / sqrt(modules)."""
    merges = json.loads(Path(path).read_text())["train"]["boosting"]["merges"]
    return [m["delta_norm"] / m["modules"] ** 0.5 for m in merges if m["modules"]]


def _dequantised(weight: torch.Tensor) -> torch.Tensor:
    q, scale = int8.quantize_weight(weight)
    return q.float() * scale[:, None]


def requantisation(weight: torch.Tensor, norms: list[float], gen: torch.Generator) -> dict:
    """A run of merges into the int8 weight ``W8`` of ``weight``: rank-1 deltas of random direction with the
    Frobenius norms ``norms``, added in float32 (what the engine does) or requantised after each merge. Returns the
    first merge's requantisation error over |delta|, and after the last merge the requantised weight's distance
    from the float one over |sum of deltas| and the share of that sum it kept."""
    w8 = _dequantised(weight)
    exact, requantised, first = w8.clone(), w8.clone(), None
    for norm in norms:
        delta = torch.randn(weight.shape[0], 1, generator=gen) @ torch.randn(1, weight.shape[1], generator=gen)
        delta *= norm / delta.norm()
        exact += delta
        requantised = _dequantised(requantised + delta)
        first = first if first is not None else ((requantised - exact).norm() / norm).item()
    total = exact - w8
    return {"first": first, "final": ((requantised - exact).norm() / total.norm()).item(),
            "kept": ((requantised - w8) * total).sum().item() / total.norm().item() ** 2}


def requantisation_table(model, norms: list[float], targets: list[str], seed: int) -> dict:
    """``requantisation`` on every target layer of ``model`` with the merge norms ``norms``: medians, extremes."""
    gen = torch.Generator().manual_seed(seed)
    weights = [m.weight.detach() for n, m in model.named_modules()
               if n.rsplit(".", 1)[-1] in targets and isinstance(m, torch.nn.Linear)]
    runs = [requantisation(w, norms, gen) for w in weights]
    column = {k: [r[k] for r in runs] for k in ("first", "final", "kept")}
    return {"modules": len(weights), "merges": len(norms), "delta_norm_per_module_median": statistics.median(norms),
            "weight_norm_median": statistics.median(float(w.norm()) for w in weights),
            "first_merge_error_over_delta_median": statistics.median(column["first"]),
            "last_merge_error_over_merged_sum_median": statistics.median(column["final"]),
            "last_merge_error_over_merged_sum_max": max(column["final"]),
            "merged_sum_kept_median": statistics.median(column["kept"]), "merged_sum_kept_min": min(column["kept"])}


# ---- 3. the kernels' error, layer by layer ----------------------------------------------------------------------
def _fbgemm_per_tensor(linear: torch.nn.Linear):
    """torch's ``quantize_dynamic`` (fbgemm): the same int8 weight grid, activations per tensor to 7 bits."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    return quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear: per_channel_dynamic_qconfig},
                            dtype=torch.qint8)


def _weight_only(linear: torch.nn.Linear):
    """The int8 weight de-quantised, float32 activations: the weight's share of the error alone."""
    return lambda x: torch.nn.functional.linear(x, _dequantised(linear.weight), linear.bias)


KERNELS = {"engine_per_row": int8.Int8Linear.from_linear, "fbgemm_per_tensor": _fbgemm_per_tensor,
           "weight_only": _weight_only}


def kernel_errors(model, tokenizer, samples: list) -> dict:
    """For every frozen linear layer of the float32 ``model`` on the prompts of ``samples`` (one batch), the
    relative error ``|y_int8 - y| / |y|`` over the real tokens, per kernel: median and largest over the layers."""
    texts = [get_task("SST2").template.encode(s) for s in samples]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    real = batch["attention_mask"].bool().reshape(-1)  # a layer may see (batch, length, n) or (batch * length, n)
    errors: dict[str, list[float]] = {k: [] for k in KERNELS}

    def hook(module, inputs, output):
        x, y = inputs[0].reshape(real.numel(), -1)[real], output.reshape(real.numel(), -1)[real]
        bare = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        bare.load_state_dict(module.state_dict())  # without this hook, which quantize_dynamic would carry over
        for name, make in KERNELS.items():
            errors[name].append(float((make(bare)(x) - y).norm() / y.norm()))
    handles = [model.get_submodule(n).register_forward_hook(hook) for n in int8.frozen_linears(model)]
    with torch.no_grad():
        model(**batch)
    for handle in handles:
        handle.remove()
    return {k: {"median": statistics.median(v), "max": max(v), "layers": len(v)} for k, v in errors.items()}


def main(argv: list[str] | None = None) -> dict:
    """Score in float32, quantise, score in int8; the requantisation table on the float weights; print, write."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    samples = get_task("SST2").load("validation", args.data_dir)[:args.num_eval]
    model, tokenizer = load_model_and_tokenizer(args.model, torch.float32, where="cpu")
    model.requires_grad_(False)
    requant = requantisation_table(model, merge_norms(args.merges), args.targets.split(","), args.seed)
    kernels = kernel_errors(model, tokenizer, samples[:args.batch_size])
    float_scores, float_s = score(model, tokenizer, samples, args.batch_size)
    report = int8.quantize_frozen_linears_(model)
    int8_scores, int8_s = score(model, tokenizer, samples, args.batch_size)
    gold = [s.candidates.index(s.correct_candidate) for s in samples]
    result = {"model": args.model, "threads": torch.get_num_threads(), "int8_layers": report.layers,
              "kept_float": report.kept_float, "scores": compare_scores(float_scores, int8_scores, gold),
              "scoring_seconds": {"float32": float_s, "int8": int8_s}, "requantising_merges": requant,
              "kernel_errors": kernels}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "kept_float"}, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
