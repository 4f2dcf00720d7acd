"""Communication of one data-parallel training step: the ZO step's scalar all-reduces against DDP backprop's
gradient all-reduce, for the same model, batch and trainable set.

Two processes on this machine (gloo, spawned here), each with its own share of a random SST-2-shaped batch
(``scripts/benchmark.py``'s workloads and models, random weights from real configs):

* ZO: ``--steps`` ZO-SGD steps as ``MezoTrainer`` runs them under torchrun: the loss closure averages the ranks'
  losses with their batch weights (``distributed.weighted_mean``, counted by a ``CommCounter``), plus the
  trainer's per-step stop-signal agreement (``max_over_ranks``). The ranks' parameters are compared bit for bit
  after the steps.
* DDP: the same model wrapped in ``DistributedDataParallel`` (as accelerate wraps it for ``--trainer regular``),
  ``--steps`` SGD steps; a DDP communication hook (``register_comm_hook``) counts the bytes of every gradient
  bucket it all-reduces, then all-reduces it as DDP's default hook does.

Bytes are what one rank hands to the collectives per step (a ring all-reduce moves about twice that over the
wire). Also listed, from the parameter counts: DDP's one-time broadcast of the model state when it wraps the
model, and its gradient buckets' memory. ``--analytic`` adds rows for larger configs from their parameter counts
alone (built on the meta device; nothing is run).

    python scripts/benchmark_comm.py                                   # tiny config, measured
    python scripts/benchmark_comm.py --model smollm2-135m-config --variants lora xgblora
    python scripts/benchmark_comm.py --analytic smollm2-135m-config opt-13b-config
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    """scripts/benchmark.py as a module (its models, variants and workloads)."""
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _setup(rank: int, args) -> tuple:
    """This rank's model (variant attached), trainable parameters and batch (its own examples)."""
    bench = _bench()
    config = bench._model_configs()[args.model]()
    model = bench.attach_variant(bench.build_model(args.model, torch.float32, torch.device("cpu"), 0),
                                 args.variant, args)
    params = [p for p in model.parameters() if p.requires_grad]
    features = bench.make_features(bench.TASKS["sst2"], config.vocab_size, seed=1000 + rank)
    return model, params, bench.make_batch(features, config.pad_token_id, torch.device("cpu"))


def zo_bytes(rank: int, args) -> dict:
    """Bytes per ZO step through the trainer's collectives, and whether the ranks end bit-identical."""
    from mezo_engine import distributed, zo
    from mezo_engine.objectives import AnswerLoss
    model, params, batch = _setup(rank, args)
    objective, counter = AnswerLoss(as_classification=True), distributed.CommCounter()
    weight = objective.weight(batch)

    def loss_fn() -> float:
        with torch.no_grad():
            return distributed.weighted_mean(objective(model, batch).item(), weight, counter)
    for step in range(args.steps):
        zo.zo_step(params, loss_fn, zo.step_seed(0, step), 1e-3, 1e-5, cache=args.variant != "full")
        distributed.max_over_ranks(0.0, counter)  # StopOnSignal's agreement after every step
    digests = distributed.gather(distributed.tensors_sha256((str(i), p) for i, p in enumerate(params)))
    return {"zo_bytes_per_step": counter.bytes / args.steps, "zo_calls_per_step": counter.calls / args.steps,
            "ranks_identical": len(set(digests)) == 1}


def ddp_bytes(rank: int, args) -> dict:
    """Bytes per backprop step in DDP's gradient all-reduce (counted by a communication hook)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    from mezo_engine.objectives import AnswerLoss
    model, params, batch = _setup(rank, args)
    ddp = DistributedDataParallel(model)
    sent = {"bytes": 0, "buckets": 0}

    def counting_hook(state, bucket):
        buffer = bucket.buffer()
        sent["bytes"] += buffer.numel() * buffer.element_size()
        sent["buckets"] += 1
        return default_hooks.allreduce_hook(None, bucket)
    ddp.register_comm_hook(None, counting_hook)
    optimizer, objective = torch.optim.SGD(params, lr=1e-5), AnswerLoss(as_classification=True)
    for _ in range(args.steps):
        optimizer.zero_grad()
        objective(ddp, batch).backward()
        optimizer.step()
    return {"ddp_bytes_per_step": sent["bytes"] / args.steps, "ddp_buckets_per_step": sent["buckets"] / args.steps}


def state_bytes(model) -> dict:
    """Parameter counts and the bytes DDP broadcasts once (parameters and buffers) and keeps as gradient buckets."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    unique = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    return {"trainable_params": sum(p.numel() for p in trainable),
            "grad_bytes": sum(p.numel() * p.element_size() for p in trainable),
            "ddp_broadcast_bytes_once": sum(t.numel() * t.element_size() for t in unique)}


def _worker(rank: int, world: int, init: str, out: str, args) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.manual_seed(0)
    result = {**zo_bytes(rank, args), **ddp_bytes(rank, args)}
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def measure(args) -> dict:
    """One measured row: two spawned gloo ranks for ``args.model`` / ``args.variant``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        mp.spawn(_worker, args=(2, str(Path(tmp) / "init"), str(out), args), nprocs=2)
        measured = json.loads(out.read_text())
    return {"model": args.model, "variant": args.variant, "measured": True, **measured, **analytic(args)}


def analytic(args) -> dict:
    """Parameter counts of ``args.model`` / ``args.variant`` built on the meta device (no memory, no compute)."""
    bench = _bench()
    model = bench.attach_variant(bench.build_model(args.model, torch.float32, torch.device("meta"), 0),
                                 args.variant, args)
    return state_bytes(model)


def markdown(rows: list[dict]) -> str:
    head = ("| model | variant | trainable params | ZO bytes / step | DDP gradient bytes / step | DDP / ZO | "
            "DDP one-time broadcast | ranks bit-identical (ZO) |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        ddp = r.get("ddp_bytes_per_step", r["grad_bytes"])
        zo_ = r.get("zo_bytes_per_step", 40)
        note = "" if r["measured"] else " (from counts)"
        lines.append(f"| {r['model']} | {r['variant']} | {r['trainable_params']:,} | {zo_:g}{note} | "
                     f"{ddp:,.0f}{note} | {ddp / zo_:,.0f} | {r['ddp_broadcast_bytes_once']:,} | "
                     f"{r.get('ranks_identical', '-')} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--variants", nargs="+", default=["full", "lora", "xgblora"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--analytic", nargs="*", default=[], help="configs to list from parameter counts only")
    parser.add_argument("--out", default=str(ROOT / "result" / "benchmark-comm.json"))
    args = parser.parse_args(argv)
    args.lora_r, args.xgblora_rank, args.lora_alpha, args.seed = 8, 1, 16, 0  # benchmark.py's attach_variant
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for variant in args.variants:
        args.variant = variant
        rows.append(measure(args))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    for model in args.analytic:
        for variant in args.variants:
            ns = argparse.Namespace(**{**vars(args), "model": model, "variant": variant})
            rows.append({"model": model, "variant": variant, "measured": False, **analytic(ns)})
    print(markdown(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
