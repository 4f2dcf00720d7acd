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
h. (info) the extra memory of the ZO momentum and ZO-Adam state (``zo_optim``) for full-parameter and LoRA
   training: the bytes of the state tensors after one step, against the bytes of the trainable parameters;
i. full-parameter ``--zo_perturb out_of_place`` (``zo_out_of_place.zo_step``: hooks form W + eps z as each module
   runs): its step over the in-place step (target <= 1.1), and its peak memory over the inference peak plus the
   largest single weight (target <= 1).

``--masked-lm`` measures the masked-LM path of ``medium_models`` instead: on a RoBERTa config (random weights), a
batch of SST-2-shaped prompts (64 rows of 32 to 48 tokens, one mask each, upstream's batch size), one forward of
the label-word loss (``medium_models.scoring.LabelLoss``: encoder, MLM head on the mask rows only) against one
ZO step with it (``zo.zo_step``, adapters folded as the trainer runs them) -> step / (2 forwards), per variant.

Times are medians over ``--repeats`` rounds after ``--warmup`` rounds; in each round every measurement of a model
runs once, in turn, so a change of machine load hits all of them alike. Prints a markdown table and writes JSON
(``--out``, default ``result/benchmark-<device>.json``). ``--quick`` uses a tiny config and finishes in seconds.

    python scripts/benchmark.py --model smollm2-135m-config
    python scripts/benchmark.py --model opt-125m-config
    python scripts/benchmark.py --device cuda --model opt-1.3b-config --dtype bf16
    python scripts/benchmark.py --masked-lm --model roberta-base-config --threads 1
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("full", "lora", "xgblora")
MEMORY_CASES = ("full:infer", "full:zo", "full:naive", "full:zo_oop", "lora:infer", "lora:zo")
# The budget of the out-of-place step's peak: the inference peak plus the largest single weight (derived, not run).
OOP_BUDGET = "full:infer_plus_largest_weight"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------------------------
# Models and workloads


def _model_configs() -> dict[str, Callable]:
    """Name -> a function building the transformers config (imported lazily: no work at import time)."""
    from transformers import LlamaConfig, OPTConfig

    def opt(hidden: int, layers: int, heads: int, ffn: int) -> OPTConfig:
        return OPTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=ffn,
                         word_embed_proj_dim=hidden, vocab_size=50272, max_position_embeddings=2048,
                         do_layer_norm_before=True, dropout=0.0, pad_token_id=1, bos_token_id=2, eos_token_id=2)

    return {
        "tiny": lambda: LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=260, max_position_embeddings=1024,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2),
        "smollm2-135m-config": lambda: LlamaConfig(
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
            rope_theta=100000.0, rms_norm_eps=1e-5, pad_token_id=2, bos_token_id=1, eos_token_id=2),
        "opt-125m-config": lambda: opt(768, 12, 12, 3072),
        "opt-1.3b-config": lambda: opt(2048, 24, 32, 8192),
        "opt-2.7b-config": lambda: opt(2560, 32, 32, 10240),
        "opt-6.7b-config": lambda: opt(4096, 32, 32, 16384),
        "opt-13b-config": lambda: opt(5120, 40, 40, 20480),
    }


MODEL_NAMES = ("tiny", "smollm2-135m-config", "opt-125m-config", "opt-1.3b-config", "opt-2.7b-config",
               "opt-6.7b-config", "opt-13b-config")


def _masked_lm_configs() -> dict[str, Callable]:
    """``--masked-lm``: RoBERTa configs (random weights), as ``_model_configs``."""
    from transformers import RobertaConfig

    def roberta(hidden: int, layers: int, heads: int) -> RobertaConfig:
        return RobertaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=4 * hidden, vocab_size=50265, max_position_embeddings=514,
                             type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    return {"tiny-roberta": lambda: roberta(32, 2, 4), "roberta-base-config": lambda: roberta(768, 12, 12),
            "roberta-large-config": lambda: roberta(1024, 24, 16)}


MASKED_LM_NAMES = ("tiny-roberta", "roberta-base-config", "roberta-large-config")


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
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(_model_configs()[name](), dtype=dtype)
    return model.eval()


def attach_variant(model, variant: str, args: argparse.Namespace):
    """The model as it trains in ``variant``: all parameters, LoRA r=8 on q/v, or rank-1 boosters on q/v."""
    if variant == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from mezo_engine import lora

    rank = args.lora_r if variant == "lora" else args.xgblora_rank
    model = lora.attach_lora(model, r=rank, alpha=args.lora_alpha).eval()
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():  # B != 0, as after the first step: a fresh B = 0 adapter would not be folded at all
        for _, layer in lora.lora_layers(model):
            B = lora._lora_AB(layer)[1]
            B.copy_(1e-3 * torch.randn(B.shape, generator=gen))
    return model


def make_features(work: Workload, vocab: int, seed: int) -> list:
    """Random training examples: a prompt per example and a row per candidate (prompt + answer token), the
    prompt marked as shared, as ``data.encode_candidates`` marks it."""
    from mezo_engine.data import Feature

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
    from mezo_engine.data import TrainCollator

    return {k: v.to(device) for k, v in TrainCollator(pad_id, shared)(features).items()}


# ----------------------------------------------------------------------------------------------------------------
# The step as this repository takes it, and as upstream MeZO wrote it


def trainable(model) -> tuple[list[str], list[torch.nn.Parameter], list[bool], bool]:
    """Names, parameters, weight-decay flags and the cache choice, exactly as ``MezoTrainer.training_step``."""
    from transformers.trainer_pt_utils import get_parameter_names

    from mezo_engine.trainer import CACHE_FRACTION

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decay_names = set(get_parameter_names(model, [torch.nn.LayerNorm], patterns))
    total = sum(p.numel() for p in model.parameters())
    cache = sum(p.numel() for _, p in named) <= CACHE_FRACTION * total
    return [n for n, _ in named], [p for _, p in named], [n in decay_names for n, _ in named], cache


def loss_fn_for(model, batch: dict, fold: bool = False) -> Callable[[], float]:
    """The trainer's ZO loss: ``batch_loss`` (classification over candidates) under no_grad, as a float; with
    ``fold`` the adapters run folded into the weights (``lora.folded_adapters``, as ``--zo_fold_adapters``)."""
    import contextlib

    from mezo_engine import lora
    from mezo_engine.scoring import batch_loss

    def loss() -> float:
        with torch.no_grad(), lora.folded_adapters(model) if fold else contextlib.nullcontext():
            return batch_loss(model, batch, as_classification=True).item()

    return loss


def naive_loss_fn_for(model, batch: dict) -> Callable[[], float]:
    """Upstream's loss: full logits, full-vocabulary log-softmax at every position, then gather the answers."""
    from mezo_engine.scoring import classification_loss, position_ids

    ids, mask = batch["input_ids"], batch["attention_mask"]
    width = ids.shape[1]
    option = torch.arange(width - 1, device=ids.device)[None, :] >= (width - 1 - batch["option_len"])[:, None]

    def loss() -> float:
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).logits
            shift_logits = logits[..., :-1, :].contiguous()
            log_probs = F.log_softmax(shift_logits, dim=-1)  # in the model's dtype, as upstream
            picked = torch.gather(log_probs, -1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            scores = (picked * option).sum(-1) / option.sum(-1)
            return classification_loss(scores, batch["group"], batch["gold_row"]).item()

    return loss


@torch.no_grad()
def naive_perturb(params: list[torch.nn.Parameter], seed: int, scaling_factor: float, eps: float) -> None:
    """Upstream ``zo_perturb_parameters``: reseed the global RNG, draw z per parameter, add out of place."""
    torch.manual_seed(seed)
    for param in params:
        z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
        param.data = param.data + scaling_factor * z * eps


@torch.no_grad()
def naive_update(named: list[tuple[str, torch.nn.Parameter]], seed: int, grad: float, lr: float, wd: float) -> None:
    """Upstream ``zo_update``: z drawn a fourth time, out-of-place SGD with weight decay except biases / norms."""
    torch.manual_seed(seed)
    for name, param in named:
        z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
        if "bias" not in name and "layer_norm" not in name and "layernorm" not in name:
            param.data = param.data - lr * (grad * z + wd * param.data)
        else:
            param.data = param.data - lr * (grad * z)


def naive_step(named: list[tuple[str, torch.nn.Parameter]], loss_fn: Callable[[], float], seed: int, eps: float,
               lr: float, wd: float) -> float:
    """Upstream ``zo_step`` + ``zo_update``: +eps, forward, -2eps, forward, +eps, update; returns the first loss."""
    params = [p for _, p in named]
    naive_perturb(params, seed, 1.0, eps)
    loss1 = loss_fn()
    naive_perturb(params, seed, -2.0, eps)
    loss2 = loss_fn()
    grad = (loss1 - loss2) / (2 * eps)
    naive_perturb(params, seed, 1.0, eps)
    naive_update(named, seed, grad, lr, wd)
    return loss1


# ----------------------------------------------------------------------------------------------------------------
# Timing


def synchronizer(device: torch.device) -> Callable[[], None]:
    """torch.cuda.synchronize on CUDA, nothing elsewhere."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


@dataclass(frozen=True)
class Inner:
    """What a step case returns: the wall and CPU seconds its own loss calls (its forwards) took inside it."""

    wall: float
    cpu: float


class ForwardClock:
    """A loss function that adds up the wall and CPU time of its calls, to split a step into forwards and rest."""

    def __init__(self, fn: Callable[[], float], sync: Callable[[], None]):
        self.fn, self.sync, self.wall, self.cpu = fn, sync, 0.0, 0.0

    def __call__(self) -> float:
        self.sync()
        wall, cpu = time.perf_counter(), time.process_time()
        value = self.fn()
        self.sync()
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        return value

    def take(self) -> Inner:
        """The time spent since the last take, and reset."""
        out = Inner(self.wall, self.cpu)
        self.wall = self.cpu = 0.0
        return out


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds (all threads of this process) and result of one call of ``fn``, device drained.

    With one thread and an otherwise idle core, CPU time is close to wall time; where other processes share the
    cores it is less disturbed by them. The wall time is the primary measurement.
    """
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu, out


Samples = dict[str, dict[str, list[float]]]


def _record(samples: Samples, key: str, wall: float, cpu: float) -> None:
    entry = samples.setdefault(key, {"wall": [], "cpu": []})
    entry["wall"].append(wall)
    entry["cpu"].append(cpu)


def run_rounds(cases: dict[str, Callable[[], object]], warmup: int, repeats: int, sync: Callable[[], None],
               desc: str) -> Samples:
    """Each round runs every case once, in turn; returns {case: {"wall": [...], "cpu": [...]}} of timed rounds.

    A case that returns an ``Inner`` also records, as "<kind>_forwards/<variant>", the time of its own forwards.
    """
    samples: Samples = {}
    for r in tqdm(range(warmup + repeats), desc=desc, leave=False):
        for key, fn in cases.items():
            wall, cpu, out = timed(fn, sync)
            if r < warmup:
                continue
            _record(samples, key, wall, cpu)
            if isinstance(out, Inner):
                _record(samples, key.replace("/", "_forwards/", 1), out.wall, out.cpu)
    return samples


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


def zo_cases(variant: str, model, batch: dict, ctx: Context) -> dict[str, Callable[[], object]]:
    """Forward, our step, our step's tensor work alone (no forwards), upstream's forward and upstream's step.

    The two steps also report how long their own two forwards took inside them (``Inner``).
    """
    from mezo_engine import zo, zo_out_of_place

    a = ctx.args
    names, params, decay, cache = trainable(model)
    named = list(zip(names, params))
    rows_batch = make_batch(ctx.features, ctx.pad_id, ctx.device, shared=False)  # upstream's layout
    loss, naive_loss = loss_fn_for(model, batch), naive_loss_fn_for(model, rows_batch)
    folded = loss_fn_for(model, batch, fold=variant != "full")  # what the trainer's zo step runs
    clock, naive_clock = ForwardClock(folded, ctx.sync), ForwardClock(naive_loss, ctx.sync)

    def ours(fn: Callable[[], float]) -> object:
        zo.zo_step(params, fn, seed=next(ctx.seeds), eps=a.eps, lr=a.lr, weight_decay=a.weight_decay, decay=decay,
                   cache=cache)
        return clock.take() if fn is clock else None

    def upstream() -> Inner:
        naive_step(named, naive_clock, next(ctx.seeds), a.eps, a.lr, a.weight_decay)
        return naive_clock.take()

    def out_of_place() -> Inner:
        zo_out_of_place.zo_step(model, params, clock, next(ctx.seeds), a.eps, a.lr, a.weight_decay, decay)
        return clock.take()

    variant_cases = {f"zo_step_oop/{variant}": out_of_place} if variant == "full" else {
        f"forward_folded/{variant}": folded}
    return variant_cases | {
        f"forward/{variant}": loss,
        f"zo_step/{variant}": lambda: ours(clock),
        f"zo_overhead/{variant}": lambda: ours(lambda: 0.0),
        f"naive_forward/{variant}": naive_loss,
        f"naive_step/{variant}": upstream,
    }


def zo_trainer(model, ctx: Context):
    """A ``MezoTrainer`` for ``--trainer zo`` with the benchmark's eps, lr and weight decay, its ZO optimizer made."""
    import tempfile

    from transformers import HfArgumentParser

    from large_models.arguments import Arguments
    from mezo_engine.data import TrainCollator
    from mezo_engine.objectives import AnswerLoss
    from mezo_engine.trainer import MezoTrainer

    a = ctx.args
    flags = ["--trainer", "zo", "--num_train", "1", "--train_as_classification", "--learning_rate", str(a.lr),
             "--zo_eps", str(a.eps), "--weight_decay", str(a.weight_decay), "--seed", str(a.seed),
             "--lr_scheduler_type", "constant", "--report_to", "none", "--disable_tqdm", "True",
             "--output_dir", tempfile.gettempdir(), *(["--use_cpu", "True"] if ctx.device.type == "cpu" else [])]
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(args=flags)
    trainer = MezoTrainer(model=model, args=args, train_dataset=ctx.features, data_collator=TrainCollator(ctx.pad_id),
                          objective=AnswerLoss(as_classification=True), evaluator=None)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    return trainer


def trainer_case(variant: str, model, batch: dict, ctx: Context) -> dict[str, Callable[[], object]]:
    """The trainer's default zo step on ``batch``: ``training_step`` (the fused ZO-SGD step, adapters folded) and
    the Trainer loop's ``optimizer.step()`` after it, with a fresh seed each call as the raw step gets."""
    trainer = zo_trainer(model, ctx)

    def step() -> None:
        trainer.state.global_step = next(ctx.seeds)
        trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()

    return {f"trainer_step/{variant}": step}


def optimizer_state_bytes(variant: str, ctx: Context) -> dict[str, int]:
    """Bytes of the trainable parameters of ``variant`` and of the ZO momentum and ZO-Adam state after one step
    (lr 0: the parameters stay as they are)."""
    from mezo_engine.zo_optim import ZOAdam, ZOSGDMomentum

    model = attach_variant(build_model(ctx.args.model, ctx.dtype, ctx.device, ctx.args.seed), variant, ctx.args)
    params = trainable(model)[1]
    out = {"trainable_params": sum(p.numel() for p in params), "trainable_tensors": len(params),
           "trainable_bytes": sum(p.numel() * p.element_size() for p in params)}
    for name, cls in (("momentum", ZOSGDMomentum), ("adam", ZOAdam)):
        opt = cls(params, lr=0.0)
        opt.add_estimate([(1, 1.0)])
        opt.step()
        out[f"{name}_bytes"] = sum(v.numel() * v.element_size() for state in opt.state.values()
                                   for v in state.values() if torch.is_tensor(v))
        del opt
    del model, params
    _release(ctx.device)
    return out


def eval_cases(model, ctx: Context) -> dict[str, Callable[[], object]]:
    """The project's batched evaluation (``evaluation.score_features``: shared prefix, ``--eval_batch_size``
    examples a batch) and upstream's, one row at a time, of the same examples."""
    from mezo_engine.evaluation import score_features, score_rows

    rows = [r for f in ctx.features for r in f.rows]
    lens = [n for f in ctx.features for n in f.option_lens]
    size = ctx.args.eval_batch_size
    return {"eval_batched": lambda: score_features(model, ctx.features, ctx.pad_id, size),
            "eval_single": lambda: upstream_row_scores(model, rows, lens, ctx.device),
            "eval_single_trimmed": lambda: score_rows(model, rows, lens, ctx.pad_id, batch_size=1)}


@torch.inference_mode()
def upstream_row_scores(model, rows: list, option_lens: list, device: torch.device) -> list[float]:
    """Upstream MeZO's evaluation forward, one row per call: full logits, log-softmax over the vocabulary at
    every position (in the model's dtype), the answer tokens' entries picked out and averaged."""
    scores = []
    for row, n in zip(rows, option_lens):
        ids = torch.tensor([row], device=device)
        log_probs = F.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
        picked = log_probs[torch.arange(ids.shape[1] - 1, device=device), ids[0, 1:]]
        scores.append(picked[-n:].mean().item())
    return scores


def ref_case(variant: str, model, plain, ctx: Context) -> dict[str, Callable[[], object]]:
    """REF: two forwards of the plain model (no adapter) over upstream's row layout, trimmed logits, as the loss;
    for an adapter variant also the adapter model's forward with the adapter off, over the trainer's batch, timed
    in the same rounds as the adapter's forwards (a ratio against a forward timed in another variant's rounds, or
    on another copy of the weights, would mix their loads and memory placement)."""
    rows_batch = make_batch(ctx.features, ctx.pad_id, ctx.device, shared=False)
    loss = loss_fn_for(plain, rows_batch)
    cases = {f"ref/{variant}": lambda: (loss(), loss())}
    if variant != "full":
        cases[f"forward_plain/{variant}"] = plain_loss_fn_for(model, make_batch(ctx.features, ctx.pad_id, ctx.device))
    return cases


def plain_loss_fn_for(model, batch: dict) -> Callable[[], float]:
    """The trainer's loss with the adapter switched off (PEFT's ``disable_adapter``): the plain model's forward on
    the same weights in memory as the adapter forwards it is compared with."""
    from mezo_engine.scoring import batch_loss

    def loss() -> float:
        with torch.no_grad(), model.disable_adapter():
            return batch_loss(model, batch, as_classification=True).item()

    return loss


def merge_case(model, ctx: Context) -> dict[str, Callable[[], object]]:
    """XGBLoRA's booster merge: W += s B A for every booster, fresh A, B = 0."""
    from mezo_engine import lora

    gen = torch.Generator().manual_seed(ctx.args.seed)
    return {"merge/xgblora": lambda: lora.merge_and_reinit(model, generator=gen)}


def trainer_step_cases(args: argparse.Namespace, out_dir: str) -> dict[str, Callable[[], object]]:
    """The ZO-XGBLoRA step as the Trainer runs it (``MezoTrainer.training_step`` on a freshly collated batch) with
    real weights (``--trainer-step-model``) and a real SST-2 batch (``--data-dir``), and REF on that batch: two
    forwards of the plain model (a second copy without an adapter) over upstream's row layout."""
    from large_models import run
    from mezo_engine.models import load_model_and_tokenizer
    from large_models.tasks import get_task

    size = args.examples
    targs = run.parse_args([
        "--model_name", args.trainer_step_model, "--task_name", "SST2", "--data_dir", args.data_dir,
        "--trainer", "zo", "--xgblora", "--xgblora_steps_per_iteration", "1000", "--num_train", str(size),
        "--train_set_seed", "0", "--per_device_train_batch_size", str(size), "--train_as_classification",
        "--learning_rate", "1e-4", "--zo_eps", "1e-3", "--max_steps", "1000", "--output_dir", out_dir,
        "--disable_tqdm", "True", "--report_to", "none", "--seed", str(args.seed)])
    task = get_task("SST2")
    samples = task.sample_train_sets(task.load("train", args.data_dir), size, None, [0])[0]
    model, tokenizer = load_model_and_tokenizer(args.trainer_step_model)
    plain, _ = load_model_and_tokenizer(args.trainer_step_model)
    trainer = run.build_trainer(targs, task, model, tokenizer, samples, [])
    trainer.create_optimizer_and_scheduler(num_training_steps=targs.max_steps)
    features, collate = list(trainer.train_dataset), trainer.data_collator
    rows = make_batch(features, tokenizer.pad_token_id, next(plain.parameters()).device, shared=False)
    ref = loss_fn_for(plain, rows)
    return {"real_trainer_step/xgblora": lambda: trainer.training_step(trainer.model, collate(features)),
            "ref/real": lambda: (ref(), ref())}


def time_variant(variant: str, ctx: Context) -> Samples:
    """Build the model of ``variant`` and time all of its measurements in interleaved rounds."""
    model = attach_variant(build_model(ctx.args.model, ctx.dtype, ctx.device, ctx.args.seed), variant, ctx.args)
    batch = make_batch(ctx.features, ctx.pad_id, ctx.device)
    cases = zo_cases(variant, model, batch, ctx) | trainer_case(variant, model, batch, ctx)
    plain = model if variant == "full" else build_model(ctx.args.model, ctx.dtype, ctx.device, ctx.args.seed)
    cases.update(ref_case(variant, model, plain, ctx))
    if variant == "full":
        cases.update(eval_cases(model, ctx))
    if variant == "xgblora":
        cases.update(merge_case(model, ctx))
    samples = run_rounds(cases, ctx.args.warmup, ctx.args.repeats, ctx.sync, desc=f"timing {variant}")
    del model, plain, batch, cases
    _release(ctx.device)
    return samples


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------------
# Peak memory


def _proc_status(field: str) -> int | None:
    """A ``/proc/self/status`` memory field in bytes, or None where there is no such file."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Return freed heap to the OS and reset the peak RSS (VmHWM) to the current RSS; False where unsupported."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_workload(variant: str, mode: str, ctx: Context):
    """The model and the function one training or inference iteration of ``variant`` runs."""
    from mezo_engine import zo, zo_out_of_place

    model = attach_variant(build_model(ctx.args.model, ctx.dtype, ctx.device, ctx.args.seed), variant, ctx.args)
    batch = make_batch(ctx.features, ctx.pad_id, ctx.device)
    names, params, decay, cache = trainable(model)
    loss, a = loss_fn_for(model, batch, fold=mode == "zo" and variant != "full"), ctx.args
    if mode == "infer":
        return model, loss
    if mode == "zo_oop":
        return model, lambda: zo_out_of_place.zo_step(model, params, loss, next(ctx.seeds), a.eps, a.lr,
                                                      a.weight_decay, decay)
    if mode == "naive":
        naive_loss = naive_loss_fn_for(model, make_batch(ctx.features, ctx.pad_id, ctx.device, shared=False))
        return model, lambda: naive_step(list(zip(names, params)), naive_loss, next(ctx.seeds), a.eps, a.lr,
                                         a.weight_decay)
    return model, lambda: zo.zo_step(params, loss, seed=next(ctx.seeds), eps=a.eps, lr=a.lr,
                                     weight_decay=a.weight_decay, decay=decay, cache=cache)


def measure_memory_here(case: str, ctx: Context) -> dict:
    """Peak memory of ``--mem-steps`` iterations of ``case`` ("variant:mode") in this process.

    CUDA: max_memory_allocated after reset_peak_memory_stats (weights included). CPU: the peak RSS since the model
    was built (VmHWM after a reset), and the whole-process peak (ru_maxrss) for reference.
    """
    variant, mode = case.split(":")
    model, fn = memory_workload(variant, mode, ctx)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        for _ in range(ctx.args.mem_steps):
            fn()
        torch.cuda.synchronize()
        out = {"peak_bytes": torch.cuda.max_memory_allocated(), "start_bytes": start,
               "method": "torch.cuda.max_memory_allocated"}
    else:
        reset = _reset_peak_rss()
        start = _proc_status("VmRSS")
        for _ in range(ctx.args.mem_steps):
            fn()
        process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = {"peak_bytes": _proc_status("VmHWM") if reset else process_peak, "start_bytes": start,
               "process_peak_bytes": process_peak,
               "method": "VmHWM since reset after build" if reset else "ru_maxrss (whole process)"}
    out["largest_weight_bytes"] = max(p.numel() * p.element_size() for p in model.parameters())
    del model, fn
    _release(ctx.device)
    return out


def _child_command(case: str, args: argparse.Namespace) -> list[str]:
    """This script, run as a memory child for ``case`` with the parent's settings."""
    keep = ["model", "task", "device", "dtype", "threads", "seed", "mem_steps", "eps", "lr", "weight_decay",
            "lora_r", "lora_alpha", "xgblora_rank", "examples"]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", case]
    for key in keep:
        value = getattr(args, key)
        if value is not None:
            cmd += ["--" + key.replace("_", "-"), str(value)]
    return cmd


def _run_child(case: str, args: argparse.Namespace) -> dict:
    proc = subprocess.run(_child_command(case, args), capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {case} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_memory(ctx: Context) -> dict[str, dict]:
    """Peak memory of every case: separate child processes on CPU (a few at a time), in this process on CUDA."""
    cases = [c for c in MEMORY_CASES if c.split(":")[0] in ctx.args.variants]
    if ctx.device.type == "cuda":
        return with_oop_budget({c: measure_memory_here(c, ctx) for c in tqdm(cases, desc="memory", leave=False)})
    with ThreadPoolExecutor(max(1, ctx.args.mem_jobs)) as pool:
        futures = {c: pool.submit(_run_child, c, ctx.args) for c in cases}
        return with_oop_budget({c: f.result() for c, f in tqdm(futures.items(), desc="memory", leave=False)})


def with_oop_budget(memory: dict[str, dict]) -> dict[str, dict]:
    """``memory`` and, where inference was measured, ``OOP_BUDGET``: its peak plus the model's largest weight."""
    infer = memory.get("full:infer")
    if infer is None:
        return memory
    budget = {"peak_bytes": infer["peak_bytes"] + infer["largest_weight_bytes"],
              "largest_weight_bytes": infer["largest_weight_bytes"],
              "method": "derived: the full:infer peak plus the largest single weight"}
    return {**memory, OOP_BUDGET: budget}


# ----------------------------------------------------------------------------------------------------------------
# Ratios, report


@dataclass(frozen=True)
class Ratio:
    """value = num / (factor * den); num and den name a time ("t:...") or a memory peak ("m:...")."""

    key: str
    num: str
    den: str
    factor: float = 1.0
    op: str = ""  # "<=", "<", ">=" or "" for information only
    threshold: float = 0.0
    label: str = ""


# ZO step / REF targets at 2 candidates (SST-2 shapes) and 3 (CB shapes); full-parameter only for SST-2.
REF_TARGETS = {"full": 0.85, "lora": 0.60, "xgblora": 0.60}
REF_TARGETS_3 = {"full": None, "lora": 0.45, "xgblora": 0.45}


def ratio_specs(variants: tuple[str, ...], candidates: int = 2, trainer_step: bool = False) -> list[Ratio]:
    """The measurements of the issue and their targets, for the variants that were run."""
    step_target = {"full": 1.25, "lora": 1.10, "xgblora": 1.10}
    out = []
    for v in variants:
        out += [Ratio(f"zo_step_over_two_forwards/{v}", f"t:zo_step/{v}", f"t:forward/{v}", 2.0, "<=",
                      step_target[v], f"b: ZO step / 2 forwards ({v})"),
                Ratio(f"zo_step_over_its_forwards/{v}", f"t:zo_step/{v}", f"t:zo_step_forwards/{v}", 1.0, "", 0.0,
                      f"b': ZO step / its own two forwards, same call ({v})"),
                Ratio(f"zo_overhead_over_two_forwards/{v}", f"t:zo_overhead/{v}", f"t:forward/{v}", 2.0, "", 0.0,
                      f"ZO step without forwards / 2 forwards ({v})"),
                Ratio(f"naive_over_ours/{v}", f"t:naive_step/{v}", f"t:zo_step/{v}", 1.0, ">=", 1.05,
                      f"c: naive step / our step ({v})"),
                Ratio(f"naive_forward_over_forward/{v}", f"t:naive_forward/{v}", f"t:forward/{v}", 1.0, "", 0.0,
                      f"full-logits forward / our forward ({v})"),
                Ratio(f"naive_step_over_its_forwards/{v}", f"t:naive_step/{v}", f"t:naive_step_forwards/{v}", 1.0,
                      "", 0.0, f"naive step / its own two forwards, same call ({v})"),
                Ratio(f"trainer_step_over_zo_step/{v}", f"t:trainer_step/{v}", f"t:zo_step/{v}", 1.0, "<=", 1.03,
                      f"g: trainer's fused ZO-SGD step / raw zo.zo_step ({v})")]
    for v in variants:
        target = REF_TARGETS[v] if candidates == 2 else (REF_TARGETS_3[v] if candidates == 3 else None)
        out.append(Ratio(f"zo_step_over_ref/{v}", f"t:zo_step/{v}", f"t:ref/{v}", 1.0, "<=" if target else "",
                         target or 0.0, f"ZO step / REF: 2 plain-model forwards over {candidates}-candidate rows ({v})"))
    for v in ("lora", "xgblora"):
        if v in variants:
            out.append(Ratio(f"adapter_forward_over_plain/{v}", f"t:forward/{v}", f"t:forward_plain/{v}", 1.0, "",
                             0.0, f"{v} forward (PEFT's adapter path) / adapter off, same rounds"))
            out.append(Ratio(f"folded_forward_over_plain/{v}", f"t:forward_folded/{v}", f"t:forward_plain/{v}", 1.0,
                             "<=", 1.05, f"{v} forward under zo (folded) / adapter off, same rounds"))
    for v in ("full", "lora"):
        if v in variants:
            out.append(Ratio(f"peak_memory_zo_over_inference/{v}", f"m:{v}:zo", f"m:{v}:infer", 1.0, "<=", 1.15,
                             f"d: ZO peak memory / inference peak ({v})"))
    if "full" in variants:
        out += [Ratio("peak_memory_naive_over_inference/full", "m:full:naive", "m:full:infer", 1.0, "", 0.0,
                      "naive ZO peak memory / inference peak (full)"),
                Ratio("zo_step_oop_over_zo_step/full", "t:zo_step_oop/full", "t:zo_step/full", 1.0, "<=", 1.1,
                      "i: out-of-place ZO step (--zo_perturb out_of_place) / in-place ZO step (full)"),
                Ratio("zo_step_oop_over_two_forwards/full", "t:zo_step_oop/full", "t:forward/full", 2.0, "", 0.0,
                      "out-of-place ZO step / 2 forwards (full)"),
                Ratio("peak_memory_oop_over_budget/full", "m:full:zo_oop", f"m:{OOP_BUDGET}", 1.0, "<=", 1.0,
                      "i: out-of-place ZO peak memory / (inference peak + largest single weight) (full)"),
                Ratio("peak_memory_oop_over_inference/full", "m:full:zo_oop", "m:full:infer", 1.0, "", 0.0,
                      "out-of-place ZO peak memory / inference peak (full)"),
                Ratio("eval_batched_speedup", "t:eval_single", "t:eval_batched", 1.0, ">=", 3.0,
                      "f: one row at a time (upstream's forward) / batched shared-prefix evaluation time"),
                Ratio("eval_batched_speedup_trimmed", "t:eval_single_trimmed", "t:eval_batched", 1.0, "", 0.0,
                      "one row at a time with trimmed logits / batched shared-prefix evaluation time")]
    if trainer_step:
        out.append(Ratio("real_trainer_step_over_ref/xgblora", "t:real_trainer_step/xgblora", "t:ref/real", 1.0,
                         "<=", 0.70,
                         "the Trainer's ZO-XGBLoRA step, real weights and SST-2 batch / REF on that batch"))
    if "xgblora" in variants:
        out.append(Ratio("merge_over_forward/xgblora", "t:merge/xgblora", "t:forward/xgblora", 1.0, "<", 1.0,
                         "e: merge_and_reinit / one forward (xgblora)"))
    return out


def lookup(ref: str, times: dict, memory: dict, field: str = "median") -> float:
    """The median wall time (or ``field`` of the time), or the peak bytes, that a ratio's num / den names."""
    kind, key = ref.split(":", 1)
    return times[key][field] if kind == "t" else memory[key]["peak_bytes"]


def passes(value: float, op: str, threshold: float) -> bool | None:
    if not op:
        return None
    return {"<=": value <= threshold, "<": value < threshold, ">=": value >= threshold}[op]


def compute_ratios(specs: list[Ratio], times: dict, memory: dict) -> dict[str, dict]:
    """Each ratio from the wall-time medians (or memory peaks); time ratios also from the CPU-time medians."""
    out = {}
    for s in specs:
        value = lookup(s.num, times, memory) / (s.factor * lookup(s.den, times, memory))
        out[s.key] = {"value": value, "num": s.num, "den": s.den, "factor": s.factor, "label": s.label,
                      "target": f"{s.op} {s.threshold:g}" if s.op else "", "pass": passes(value, s.op, s.threshold)}
        if s.num.startswith("t:"):
            cpu = lookup(s.num, times, memory, "cpu_median") / (s.factor * lookup(s.den, times, memory, "cpu_median"))
            out[s.key]["value_cpu_time"] = cpu
    return out


def state_rows(states: dict[str, dict]) -> list[dict]:
    """h: info rows, the extra memory of the ZO momentum and Adam state per variant."""
    rows = []
    for variant, s in states.items():
        for name, label in (("momentum", "ZO momentum"), ("adam", "ZO-Adam")):
            ratio = s[f"{name}_bytes"] / s["trainable_bytes"]
            rows.append({"measurement": f"h: {label} state, extra memory ({variant}; {ratio:.3f}x the "
                                        f"{s['trainable_params']:,} trainable parameters' bytes)",
                         "value": f"{s[f'{name}_bytes'] / 2**20:.2f} MiB", "cpu": "", "target": "(info)",
                         "result": ""})
    return rows


def table_rows(times: dict, memory: dict, ratios: dict, states: dict | None = None) -> list[dict]:
    """Rows of the markdown table: the ratios with targets first, the optimizer state, the raw times and peaks."""
    rows = [{"measurement": r["label"], "value": f"{r['value']:.3f}",
             "cpu": f"{r['value_cpu_time']:.3f}" if "value_cpu_time" in r else "", "target": r["target"] or "(info)",
             "result": "" if r["pass"] is None else ("pass" if r["pass"] else "FAIL")} for r in ratios.values()]
    rows += state_rows(states or {})
    rows += [{"measurement": f"time {k} (median of {len(v['samples'])})", "value": f"{v['median'] * 1e3:.1f} ms",
              "cpu": f"{v['cpu_median'] * 1e3:.1f} ms", "target": "", "result": ""} for k, v in times.items()]
    rows += [{"measurement": f"peak memory {k}", "value": f"{v['peak_bytes'] / 2**20:.0f} MiB", "cpu": "",
              "target": "", "result": ""} for k, v in memory.items()]
    return rows


def markdown(rows: list[dict]) -> str:
    """The table: value from wall time (or memory), the same from CPU time, target, pass/fail (on the value)."""
    lines = ["| measurement | value | value from CPU time | target | pass/fail |", "| --- | ---: | ---: | --- | --- |"]
    lines += [f"| {r['measurement']} | {r['value']} | {r['cpu']} | {r['target']} | {r['result']} |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Machine description and load


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return found.group(1).strip() if found else platform.machine()


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _own_cpu_seconds() -> float:
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


class LoadMeter:
    """Average number of cores that other processes kept busy while the benchmark ran (Linux)."""

    def __init__(self):
        self.start = (_busy_jiffies(), _own_cpu_seconds(), time.perf_counter(), os.getloadavg())

    def report(self) -> dict:
        (j0, own0, t0, load0), j1 = self.start, _busy_jiffies()
        out = {"loadavg_before": load0, "loadavg_after": os.getloadavg()}
        if j0 and j1:
            hz = os.sysconf("SC_CLK_TCK")
            other = (j1[0] - j0[0]) / hz - (_own_cpu_seconds() - own0)
            out["other_processes_cores"] = max(0.0, other / (time.perf_counter() - t0))
        return out


def meta(args: argparse.Namespace, device: torch.device) -> dict:
    import transformers

    return {"device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "model": args.model, "task": args.task, "examples": args.examples, "dtype": args.dtype,
            "repeats": args.repeats, "warmup": args.warmup, "mem_steps": args.mem_steps, "variants": args.variants,
            "eval_batch_size": args.eval_batch_size, "lora_r": args.lora_r, "xgblora_rank": args.xgblora_rank,
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}


# ----------------------------------------------------------------------------------------------------------------
# Entry points


# ----------------------------------------------------------------------------------------------------------------
# --masked-lm: medium_models' label-word loss at the mask


def masked_lm_batch(vocab: int, rows: int, seed: int) -> tuple[dict, list[int]]:
    """SST-2-shaped prompts: ``rows`` rows of 32 to 48 random tokens between <s> and </s>, a mask 3 tokens before
    the end, gold labels alternating; collated as ``medium_models`` collates them. Returns the batch and 2 label
    word ids."""
    from medium_models.scoring import Collator, Feature

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
    import contextlib

    from transformers import AutoModelForMaskedLM

    from medium_models.scoring import LabelLoss
    from mezo_engine import lora, zo

    torch.manual_seed(args.seed)
    with torch.device(device):
        model = AutoModelForMaskedLM.from_config(_masked_lm_configs()[args.model](), dtype=dtype).eval()
    model = attach_variant(model, variant, args)
    batch, label_ids = masked_lm_batch(model.config.vocab_size, args.examples, args.seed)
    batch = {k: v.to(device) for k, v in batch.items()}
    objective, (_, params, decay, cache), seeds = LabelLoss(label_ids, causal=False), trainable(model), itertools.count()

    def loss() -> float:
        with torch.no_grad(), lora.folded_adapters(model) if variant != "full" else contextlib.nullcontext():
            return objective(model, batch).item()
    return {f"mlm_forward/{variant}": loss,
            f"mlm_zo_step/{variant}": lambda: zo.zo_step(params, loss, next(seeds), args.eps, args.lr,
                                                         args.weight_decay, decay, cache)}


def run_masked_lm(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """``--masked-lm``: per variant, the ZO step over two forwards of the label-word loss (medians)."""
    rows = []
    for variant in args.variants:
        times = summarise(run_rounds(masked_lm_cases(variant, args, device, dtype), args.warmup, args.repeats,
                                     synchronizer(device), desc=f"masked LM {variant}"))
        forward, step = times[f"mlm_forward/{variant}"]["median"], times[f"mlm_zo_step/{variant}"]["median"]
        # Stored unrounded: the ratio is then exactly the quotient of the stored times; the table rounds.
        rows.append({"variant": variant, "forward_s": forward, "zo_step_s": step,
                     "step / 2 forwards": step / (2 * forward)})
    return {"meta": meta(args, device), "masked_lm": rows}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--masked-lm", action="store_true",
                   help="time medium_models' masked-LM ZO step instead (--model: a RoBERTa config; --examples 64)")
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
    p.add_argument("--mem-jobs", type=int, default=2, help="memory child processes at a time (CPU)")
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


def resolve(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Fill in the defaults that depend on the device and on --quick; return the device and dtype."""
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if args.masked_lm:
        args.model = args.model or ("tiny-roberta" if args.quick else "roberta-large-config")
        args.examples = args.examples or 64
        if args.model not in MASKED_LM_NAMES:
            raise SystemExit(f"--masked-lm: --model must be one of {', '.join(MASKED_LM_NAMES)}")
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
    if isinstance(args.variants, str):
        args.variants = tuple(v for v in args.variants.split(",") if v)
    if unknown := set(args.variants) - set(VARIANTS):
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    return device, DTYPES[args.dtype]


def make_context(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Context:
    config = _model_configs()[args.model]()
    work = TASKS[args.task]
    work = Workload(args.examples, work.candidates, work.min_len, work.max_len, work.option_len)
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    features = make_features(work, config.vocab_size, args.seed)
    return Context(args, device, dtype, features, pad_id, itertools.count(1))


def summarise(samples: Samples) -> dict[str, dict]:
    """Median, min, max and samples of the wall times; median and samples of the CPU times."""
    return {k: {"median": statistics.median(v["wall"]), "min": min(v["wall"]), "max": max(v["wall"]),
                "samples": v["wall"], "cpu_median": statistics.median(v["cpu"]), "cpu_samples": v["cpu"]}
            for k, v in samples.items()}


def run_benchmark(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """Memory first (children must not share the CPU with timed rounds), then the timed rounds per variant."""
    ctx = make_context(args, device, dtype)
    load = LoadMeter()
    memory = measure_memory(ctx)
    samples: Samples = {}
    for variant in args.variants:
        samples.update(time_variant(variant, ctx))
    if args.trainer_step_model:
        import tempfile
        with tempfile.TemporaryDirectory() as out_dir:
            samples.update(run_rounds(trainer_step_cases(args, out_dir), args.warmup, args.repeats, ctx.sync,
                                      desc="timing the trainer's step"))
    times = summarise(samples)
    states = {v: optimizer_state_bytes(v, ctx) for v in args.variants if v in ("full", "lora")}
    specs = ratio_specs(args.variants, TASKS[args.task].candidates, trainer_step=bool(args.trainer_step_model))
    ratios = compute_ratios(specs, times, memory)
    result = {"meta": {**meta(args, device), "load": load.report()}, "times": times, "memory": memory,
              "ratios": ratios, "zo_optimizer_state": states}
    result["table"] = table_rows(times, memory, ratios, states)
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, dtype = resolve(args)
    if args.memory_child:
        ctx = make_context(args, device, dtype)
        print(json.dumps(measure_memory_here(args.memory_child, ctx)))
        return {}
    if args.masked_lm:
        return write_masked_lm(args, run_masked_lm(args, device, dtype), device)
    result = run_benchmark(args, device, dtype)
    out = Path(args.out or ROOT / "result" / f"benchmark-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    load = result["meta"]["load"]
    print(f"\n{args.model} / {args.task} x{args.examples} / {device.type} {result['meta']['device_name']} / "
          f"{args.dtype} / {args.threads} threads / other processes ~{load.get('other_processes_cores', math.nan):.2f}"
          f" cores\n")
    print(markdown(result["table"]))
    print(f"\nwrote {out}")
    return result


def write_masked_lm(args: argparse.Namespace, result: dict, device: torch.device) -> dict:
    out = Path(args.out or ROOT / "result" / f"benchmark-masked-lm-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\n{args.model} masked LM x{args.examples} / {device.type} / {args.dtype} / {args.threads} threads\n")
    print("| variant | forward s | ZO step s | step / 2 forwards |\n| --- | ---: | ---: | ---: |")
    print("\n".join(f"| {r['variant']} | {r['forward_s']:.4f} | {r['zo_step_s']:.4f} | {r['step / 2 forwards']:.3f} |"
                    for r in result["masked_lm"]))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
