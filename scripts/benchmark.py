"""Benchmark of the MeZO step against inference, and against the upstream ("naive") way of writing it.

Runs on whatever device is present, on real architectures with random weights built from their configs (nothing
is downloaded), at the batch shapes of real tasks. Everything is measured in one process run, side by side:

a. one inference forward of the training loss (``scoring.batch_loss`` under ``no_grad``, as the trainer's loss);
b. one ZO step (``zo.zo_step`` with that loss) for full-parameter, LoRA (r=8 on q/v) and XGBLoRA (rank-1
   boosters on q/v) training                                                              -> b / (2a);
c. the same step written the upstream way: ``torch.manual_seed`` then ``torch.normal`` per parameter and
   out-of-place ``param.data = param.data + scale * z * eps``, z regenerated four times (+1, -2, +1, update),
   and full-vocabulary log-softmax at every position                                       -> naive / ours;
d. peak memory of ZO training over peak memory of inference at the same batch (CUDA: max_memory_allocated;
   CPU: peak RSS of separate child processes of this script, counted from after the model is built);
e. ``lora.merge_and_reinit`` on the XGBLoRA model over one forward;
f. batched candidate scoring (``evaluation.score_rows``) over one-row-at-a-time scoring of the same rows;
g. the trainer's fused ZO-SGD step (``MezoTrainer.training_step`` then ``optimizer.step()``, as the Trainer's loop
   runs them, default ``--zo_optimizer sgd``) over the raw ``zo.zo_step`` call on the same batch;
h. (info) the extra memory of the ZO momentum and ZO-Adam state (``zo_methods``) for full-parameter and LoRA
   training: the bytes of the state tensors after one step, against the bytes of the trainable parameters;
i. full-parameter ``--zo_perturb out_of_place`` (``zo_out_of_place.zo_step``: hooks form W + eps z as each module
   runs): its step over the in-place step (target <= 1.1), and its peak memory over the inference peak plus the
   largest single weight (target <= 1).

``--int8`` measures the int8 frozen base on the CPU (``--load_int8``) against float32 instead: the Trainer's ZO-LoRA
and ZO-XGBLoRA steps with real weights (``--trainer-step-model``) on a real SST-2 batch (``--data-dir``), int8 base
over float32 base (LoRA's target <= 0.6), and the int8 kernels on that model's MLP shapes (``bench/int8.py``).

``--methods-memory`` measures the peak memory of each ZO method instead: the Trainer's real step of every method
(``--zo_optimizer``; LoRA r=8 and full-parameter, real weights of ``--trainer-step-model``, SST-2 from
``--data-dir``) over the peak of inference on the rows one of its forwards runs (B; batched FZOO with LoRA:
(N + 1) B), each case in a child process counted from after the trainer is built (``bench/methods_memory.py``).

``--activation-reuse`` measures the ZO step whose forwards share what lies below the lowest perturbed block
(``--zo_reuse_activations``) with real weights (``--trainer-step-model``, ``--data-dir``): head tuning with an untied
head (target <= 0.6x two forwards of the training loss on the same batch) and LoRA on the upper third of the
blocks, each with and without reuse (``bench/reuse.py``).

``--masked-lm`` measures the masked-LM path of ``medium_models`` instead: on a RoBERTa config (random weights), a
batch of SST-2-shaped prompts (64 rows of 32 to 48 tokens, one mask each, upstream's batch size), one forward of
the label-word loss (``medium_models.scoring.LabelLoss``: encoder, MLM head on the mask rows only) against one
ZO step with it (``zo.zo_step``, adapters folded as the trainer runs them) -> step / (2 forwards), per variant.

Times are medians over ``--repeats`` rounds after ``--warmup`` rounds; in each round every measurement of a model
runs once, in turn, so a change of machine load hits all of them alike. Prints a markdown table and writes JSON
(``--out``, default ``result/benchmark-<device>.json``). ``--quick`` uses a tiny config and finishes in seconds.

The measurements live in the package ``scripts/bench/`` (one module per case: ``step``, ``out_of_place``,
``memory``, ``scoring``, ``masked_lm``; the timing ``harness``); this file is its command line. Every step covers
the parameters the trainer's zo step perturbs, with its weight decay and cache choice (``mezo_engine.zo_params``).

    python scripts/benchmark.py --model smollm2-135m-config
    python scripts/benchmark.py --model opt-125m-config
    python scripts/benchmark.py --device cuda --model opt-1.3b-config --dtype bf16
    python scripts/benchmark.py --masked-lm --model roberta-base-config --threads 1
    python scripts/benchmark.py --int8 --trainer-step-model smollm2-135m --data-dir ../shared/data --threads 1
    python scripts/benchmark.py --activation-reuse --trainer-step-model smollm2-135m --data-dir ../shared/data \
        --threads 1
    python scripts/benchmark.py --methods-memory --trainer-step-model smollm2-135m --data-dir ../shared/data \
        --threads 1 --mem-jobs 1
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import int8, masked_lm, memory, methods_memory, reuse, suite
from bench.masked_lm import MASKED_LM_NAMES
from bench.workload import DTYPES, MODEL_NAMES, TASKS, VARIANTS, make_context

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--masked-lm", action="store_true",
                   help="time medium_models' masked-LM ZO step instead (--model: a RoBERTa config; --examples 64)")
    p.add_argument("--int8", action="store_true",
                   help="time the ZO step with an int8 base (--load_int8 on the CPU) against float32, real weights "
                        "(--trainer-step-model) and SST-2 (--data-dir), and the int8 kernels (--variants lora,xgblora)")
    p.add_argument("--activation-reuse", action="store_true",
                   help="time the ZO step with --zo_reuse_activations (head tuning untied, LoRA on upper blocks) "
                        "against two forwards and against no reuse, real weights (--trainer-step-model, --data-dir)")
    p.add_argument("--reuse-variants", default="head,lora_upper", help="--activation-reuse: comma-separated variants")
    p.add_argument("--methods-memory", action="store_true",
                   help="peak memory of each ZO method's real Trainer step (--trainer-step-model, --data-dir) over "
                        "the peak of inference on as many rows, LoRA and full-parameter, a child process per case")
    p.add_argument("--fzoo-num-queries", type=int, default=8,
                   help="--methods-memory: FZOO's N (run.py's --fzoo_num_queries); its LoRA step runs (N + 1) B rows")
    p.add_argument("--model", choices=MODEL_NAMES + MASKED_LM_NAMES, default=None,
                   help="config to build (default: smollm2-135m-config on CPU, opt-1.3b-config on CUDA)")
    p.add_argument("--task", choices=sorted(TASKS), default="sst2", help="batch shape of a real task")
    p.add_argument("--examples", type=int, default=None, help="examples per batch (default: the task's, 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of full,lora,xgblora")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds; medians are reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--mem-steps", type=int, default=3, help="iterations per memory measurement")
    p.add_argument("--mem-jobs", type=int, default=2,
                   help="memory child processes at a time (CPU; with --methods-memory on any device, and 0: every "
                        "case in this process, in turn)")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=1e-7)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--xgblora-rank", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trainer-step-model", default=None,
                   help="also time the Trainer's ZO-XGBLoRA step with these real weights (e.g. smollm2-135m) on a "
                        "real SST-2 batch from --data-dir, against REF on that batch")
    p.add_argument("--data-dir", default=None, help="task data for --trainer-step-model (e.g. ../shared/data)")
    p.add_argument("--quick", action="store_true", help="tiny config, 3 repeats, 1 thread: finishes in seconds")
    p.add_argument("--out", default=None, help="JSON path (default: result/benchmark-<device>.json)")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Parse, resolve, run (a memory child, ``--int8``, ``--methods-memory``, ``--masked-lm`` or the benchmark),
    write the JSON and print the table."""
    args = parse_args(argv)
    device, dtype = suite.resolve(args)
    if args.memory_child:
        measured = (methods_memory.measure_here(args.memory_child, args) if args.methods_memory
                    else memory.measure_memory_here(args.memory_child, make_context(args, device, dtype)))
        print(json.dumps(measured))
        return {}
    if args.methods_memory:
        out = Path(args.out or ROOT / "result" / f"benchmark-methods-memory-{device.type}.json")
        return methods_memory.write_methods_memory(args, methods_memory.run_methods_memory(args, device), out)
    if args.activation_reuse:
        out = Path(args.out or ROOT / "result" / f"benchmark-reuse-{device.type}.json")
        return reuse.write_reuse(args, reuse.run_reuse(args, device), out)
    if args.int8:
        out = Path(args.out or ROOT / "result" / "benchmark-int8-cpu.json")
        return int8.write_int8(args, int8.run_int8(args, device), out)
    if args.masked_lm:
        out = Path(args.out or ROOT / "result" / f"benchmark-masked-lm-{device.type}.json")
        return masked_lm.write_masked_lm(args, masked_lm.run_masked_lm(args, device, dtype), out, device)
    out = Path(args.out or ROOT / "result" / f"benchmark-{device.type}.json")
    return suite.write_result(args, suite.run_benchmark(args, device, dtype), out, device)


if __name__ == "__main__":
    main()
