"""``--int8``: the int8 frozen base on the CPU (``--load_int8``, mezo_engine/int8.py) against float32, with real
weights (``--trainer-step-model``) and a real SST-2 batch (``--data-dir``).

* the ZO step as the Trainer runs it (``training_step`` then ``optimizer.step()``, ZO-SGD) with the base in int8
  over the same step in float32, per adapter variant (LoRA r=8: target <= 0.6; XGBLoRA rank 1, whose adapted
  layers stay float32 for its merges: information);
* the kernels on the model's MLP shapes at the batch's token count: the two linears (hidden -> intermediate ->
  hidden) in int8 over float32, for the engine's kernel (activations per row, ``torch._int_mm``) and the ones it
  was chosen over: torch's ``quantize_dynamic`` (fbgemm, activations per tensor to 7 bits; faster, and far less
  accurate on SmolLM2: ``scripts/int8_check.py``), and torchao's ``quantize_`` with
  ``Int8DynamicActivationInt8WeightConfig`` when torchao is importable (``pip install torchao``).

Cases of a variant run in interleaved rounds (``harness.run_rounds``), so machine load hits both sides alike."""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import torch
from torch import nn

from bench import report, step
from bench.harness import LoadMeter, Samples, meta, run_rounds, summarise
from bench.ratios import Ratio, compute_ratios
from mezo_engine import int8

MODES = {"lora": ("--lora",), "xgblora": step.XGBLORA_FLAGS}
STEP_TARGET = {"lora": 0.6, "xgblora": None}


def _step_case(trainer) -> callable:
    """The Trainer's ZO step on its whole training set as one batch, a fresh seed each call."""
    features, collate = list(trainer.train_dataset), trainer.data_collator

    def one_step() -> None:
        trainer.state.global_step += 1
        trainer.training_step(trainer.model, collate(features))
        trainer.optimizer.step()
    return one_step


def step_cases(args: argparse.Namespace, variant: str, out_dir: str) -> tuple[Samples, dict, tuple[int, int, int]]:
    """Time the ZO step of ``variant`` with a float32 and an int8 base; return the samples, both models' weight
    bytes (``weight_bytes``), and the MLP's shape at the batch (hidden, intermediate, tokens)."""
    cases, sizes = {}, {}
    for base, extra in (("float32", ()), ("int8", ("--load_int8",))):
        trainer, _ = step.real_trainer(args, out_dir, MODES[variant], extra)
        cases[f"int8_bench_step_{base}/{variant}"] = _step_case(trainer)
        sizes[base] = weight_bytes(trainer.model)
    config, batch = trainer.model.config, trainer.data_collator(list(trainer.train_dataset))
    intermediate = getattr(config, "intermediate_size", None) or config.ffn_dim  # LLaMA's name, OPT's
    tokens = sum(batch[k].numel() for k in ("prompt_ids", "answer_ids", "input_ids") if k in batch)  # padded
    shape = (config.hidden_size, intermediate, int(tokens))
    samples = run_rounds(cases, args.warmup, args.repeats, lambda: None, desc=f"int8 step {variant}")
    return samples, sizes, shape


def weight_bytes(model: nn.Module) -> dict:
    """Bytes of the model's parameters and buffers (int8 weights and their scales included), tied weights once."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return {"bytes": total, "int8_layers": sum(isinstance(m, int8.Int8Linear) for m in model.modules())}


# ---- the kernels ---------------------------------------------------------------------------------------------------
def _fbgemm_per_tensor(linear: nn.Linear):
    """torch's ``quantize_dynamic`` (fbgemm, deprecated for torchao): per-channel int8 weight, activations
    quantised per tensor to 7 bits."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    return quantize_dynamic(nn.Sequential(linear), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def _torchao(linear: nn.Linear):
    """torchao's dynamic int8 linear (``quantize_`` with ``Int8DynamicActivationInt8WeightConfig``)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    module = nn.Sequential(nn.Linear(linear.in_features, linear.out_features, bias=False))
    module[0].weight.data.copy_(linear.weight)
    quantize_(module, Int8DynamicActivationInt8WeightConfig())
    return module


KERNELS = {"engine_per_row": int8.Int8Linear.from_linear, "fbgemm_per_tensor": _fbgemm_per_tensor}


def kernel_cases(hidden: int, intermediate: int, tokens: int, seed: int) -> dict:
    """The MLP's two linears (hidden -> intermediate, intermediate -> hidden) on ``tokens`` rows, per kernel."""
    gen = torch.Generator().manual_seed(seed)
    linears = [nn.Linear(hidden, intermediate, bias=False), nn.Linear(intermediate, hidden, bias=False)]
    for lin in linears:
        lin.weight.data.normal_(0, 0.02, generator=gen)
    inputs = [torch.randn(tokens, lin.in_features, generator=gen) for lin in linears]
    kernels = dict(KERNELS) | ({"torchao": _torchao} if importlib.util.find_spec("torchao") else {})
    built = {"float32": linears} | {name: [make(lin) for lin in linears] for name, make in kernels.items()}

    def case(fns):
        def run() -> None:
            with torch.no_grad():
                for fn, x in zip(fns, inputs):
                    fn(x)
        return run
    return {f"int8_bench_mlp/{name}": case(fns) for name, fns in built.items()}


def ratios(variants: tuple[str, ...], kernels: list[str]) -> list[Ratio]:
    """The step ratios per variant (LoRA's with its target), then each kernel over float32."""
    out = [Ratio(f"int8_step_over_float32/{v}", f"t:int8_bench_step_int8/{v}", f"t:int8_bench_step_float32/{v}",
                 1.0, "<=" if STEP_TARGET[v] else "", STEP_TARGET[v] or 0.0,
                 f"ZO-{v} step, int8 base / float32 base (real weights, SST-2 batch)") for v in variants]
    return out + [Ratio(f"int8_mlp_over_float32/{k}", f"t:int8_bench_mlp/{k}", "t:int8_bench_mlp/float32", 1.0, "",
                        0.0, f"MLP's two linears, {k} int8 / float32") for k in kernels]


def run_int8(args: argparse.Namespace, device: torch.device) -> dict:
    """The step of each adapter variant, then the kernels on the model's MLP shapes; ratios and the table."""
    if device.type != "cpu" or not (args.trainer_step_model and args.data_dir):
        raise SystemExit("--int8: CPU only, and needs --trainer-step-model (e.g. smollm2-135m) and --data-dir")
    load, samples, sizes = LoadMeter(), {}, {}
    variants = tuple(v for v in args.variants if v in MODES)
    if not variants:
        raise SystemExit(f"--int8: --variants needs one of {', '.join(MODES)}")
    with tempfile.TemporaryDirectory() as out_dir:
        for variant in variants:
            got, sizes[variant], (hidden, intermediate, tokens) = step_cases(args, variant, out_dir)
            samples.update(got)
    kernels = kernel_cases(hidden, intermediate, tokens, args.seed)
    samples.update(run_rounds(kernels, args.warmup, args.repeats, lambda: None, desc="int8 kernels"))
    times = summarise(samples)
    specs = ratios(variants, [k.split("/")[1] for k in kernels if not k.endswith("float32")])
    found = compute_ratios(specs, times, {})
    return {"meta": {**meta(args, device), "load": load.report(), "mlp_tokens": tokens}, "times": times,
            "ratios": found, "weights": sizes, "table": report.table_rows(times, {}, found)}


def write_int8(args: argparse.Namespace, result: dict, out: Path) -> dict:
    """Write the JSON to ``out``; print the run's line, the table and the weight bytes."""
    report.write_and_print(args, result, out, "int8 base")
    for variant, sizes in result["weights"].items():
        print(f"\n{variant}: weights {sizes['float32']['bytes'] / 2**20:.0f} MiB in float32, "
              f"{sizes['int8']['bytes'] / 2**20:.0f} MiB with {sizes['int8']['int8_layers']} int8 layers")
    print(f"\nwrote {out}")
    return result
