"""The step cases: our ZO step (b.), its tensor work alone, upstream's step (c.), the trainer's fused step (g.), REF
(two plain-model forwards over upstream's rows), XGBLoRA's merge (e.), and the Trainer's step with real weights.

Every step covers the parameters the trainer's step perturbs, with its weight-decay flags and cache choice
(``mezo_engine.zo_params``)."""
from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable

import torch
from transformers import HfArgumentParser

from bench import out_of_place
from bench.harness import ForwardClock, Inner, with_inner
from bench.ratios import Ratio
from bench.upstream import naive_loss_fn_for, naive_step
from bench.workload import Context, loss_fn_for, make_batch, plain_loss_fn_for
from large_models import run
from large_models.arguments import Arguments
from large_models.tasks import get_task
from mezo_engine import lora, zo
from mezo_engine.data import TrainCollator
from mezo_engine.modes import prepare_head
from mezo_engine.models import load_model_and_tokenizer
from mezo_engine.objectives import AnswerLoss
from mezo_engine.trainer import MezoTrainer
from mezo_engine.zo_params import ZOParams, zo_params

Cases = dict[str, Callable[[], object]]

# ZO step / REF targets at 2 candidates (SST-2 shapes) and 3 (CB shapes); full-parameter only for SST-2.
REF_TARGETS = {"full": 0.85, "lora": 0.60, "xgblora": 0.60}
REF_TARGETS_3 = {"full": None, "lora": 0.45, "xgblora": 0.45}
STEP_TARGETS = {"full": 1.25, "lora": 1.10, "xgblora": 1.10}


def zo_step_fn(zp: ZOParams, loss_fn: Callable[[], float], ctx: Context) -> Callable[[], object]:
    """Our step (``zo.zo_step``) over ``zp`` with a fresh seed each call, the benchmark's eps, lr and weight decay."""
    a = ctx.args
    return lambda: zo.zo_step(zp.params, loss_fn, seed=next(ctx.seeds), eps=a.eps, lr=a.lr,
                              weight_decay=a.weight_decay, decay=zp.decay, cache=zp.cache)


def zo_cases(variant: str, model, batch: dict, ctx: Context) -> Cases:
    """Forward, our step, our step's tensor work alone (no forwards), upstream's forward and upstream's step; for
    full-parameter training the out-of-place step, for an adapter the folded forward (what the zo step runs).

    The steps also report how long their own two forwards took inside them (``Inner``).
    """
    a, zp = ctx.args, zo_params(model)
    loss = loss_fn_for(model, batch)
    naive_loss = naive_loss_fn_for(model, make_batch(ctx.features, ctx.pad_id, ctx.device, shared=False))
    folded = loss_fn_for(model, batch, fold=variant != "full")  # what the trainer's zo step runs
    clock, naive_clock = ForwardClock(folded, ctx.sync), ForwardClock(naive_loss, ctx.sync)

    def upstream() -> Inner:
        naive_step(list(zip(zp.names, zp.params)), naive_clock, next(ctx.seeds), a.eps, a.lr, a.weight_decay)
        return naive_clock.take()

    first = {f"zo_step_oop/{variant}": out_of_place.step_case(model, zp, clock, ctx)} if variant == "full" else {
        f"forward_folded/{variant}": folded}
    return first | {f"forward/{variant}": loss, f"zo_step/{variant}": with_inner(zo_step_fn(zp, clock, ctx), clock),
                    f"zo_overhead/{variant}": zo_step_fn(zp, lambda: 0.0, ctx), f"naive_forward/{variant}": naive_loss,
                    f"naive_step/{variant}": upstream}


def zo_trainer(model, ctx: Context) -> MezoTrainer:
    """A ``MezoTrainer`` for ``--trainer zo`` with the benchmark's eps, lr and weight decay, its ZO optimizer made."""
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


def trainer_case(variant: str, model, batch: dict, ctx: Context) -> Cases:
    """The trainer's default zo step on ``batch``: ``training_step`` (the fused ZO-SGD step, adapters folded) and
    the Trainer loop's ``optimizer.step()`` after it, with a fresh seed each call as the raw step gets."""
    trainer = zo_trainer(model, ctx)

    def step() -> None:
        trainer.state.global_step = next(ctx.seeds)
        trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()

    return {f"trainer_step/{variant}": step}


def ref_case(variant: str, model, plain, ctx: Context) -> Cases:
    """REF: two forwards of the plain model (no adapter) over upstream's row layout, trimmed logits, as the loss;
    for an adapter variant also the adapter model's forward with the adapter off, over the trainer's batch, timed
    in the same rounds as the adapter's forwards (a ratio against a forward timed in another variant's rounds, or
    on another copy of the weights, would mix their loads and memory placement)."""
    loss = loss_fn_for(plain, make_batch(ctx.features, ctx.pad_id, ctx.device, shared=False))
    cases = {f"ref/{variant}": lambda: (loss(), loss())}
    if variant != "full":
        cases[f"forward_plain/{variant}"] = plain_loss_fn_for(model, make_batch(ctx.features, ctx.pad_id, ctx.device))
    return cases


def merge_case(model, ctx: Context) -> Cases:
    """XGBLoRA's booster merge: W += s B A for every booster, fresh A, B = 0."""
    gen = torch.Generator().manual_seed(ctx.args.seed)
    return {"merge/xgblora": lambda: lora.merge_and_reinit(model, generator=gen)}


XGBLORA_FLAGS = ("--xgblora", "--xgblora_steps_per_iteration", "1000")


def _trainer_flags(args: argparse.Namespace, out_dir: str, mode: tuple[str, ...] = XGBLORA_FLAGS) -> list[str]:
    """run.py's flags for the Trainer's ZO step in ``mode`` (default XGBLoRA) on ``args.examples`` real SST-2
    examples."""
    size = str(args.examples)
    return ["--model_name", args.trainer_step_model, "--task_name", "SST2", "--data_dir", args.data_dir,
            "--trainer", "zo", *mode, "--num_train", size,
            "--train_set_seed", "0", "--per_device_train_batch_size", size, "--train_as_classification",
            "--learning_rate", "1e-4", "--zo_eps", "1e-3", "--max_steps", "1000", "--output_dir", out_dir,
            "--disable_tqdm", "True", "--report_to", "none", "--seed", str(args.seed)]


def real_trainer(args: argparse.Namespace, out_dir: str, mode: tuple[str, ...] = XGBLORA_FLAGS,
                 extra: tuple[str, ...] = ()) -> tuple[MezoTrainer, object]:
    """The MezoTrainer run.py builds for a ZO step in ``mode`` (its flags, then ``extra``) with the real weights of
    ``--trainer-step-model`` on ``args.examples`` SST-2 training examples from ``--data-dir``; and the tokenizer."""
    targs = run.parse_args(_trainer_flags(args, out_dir, mode) + list(extra))
    task = get_task("SST2")
    samples = task.sample_train_sets(task.load("train", args.data_dir), args.examples, None, [0])[0]
    model, tokenizer = load_model_and_tokenizer(args.trainer_step_model)
    prepare_head(targs, model)  # --untie_emb, as run.py does before it builds the trainer
    trainer = run.build_trainer(targs, task, model, tokenizer, samples, [])
    trainer.create_optimizer_and_scheduler(num_training_steps=targs.max_steps)
    return trainer, tokenizer


def trainer_step_cases(args: argparse.Namespace, out_dir: str) -> Cases:
    """The ZO-XGBLoRA step as the Trainer runs it (``MezoTrainer.training_step`` on a freshly collated batch) with
    real weights (``--trainer-step-model``) and a real SST-2 batch (``--data-dir``), and REF on that batch: two
    forwards of the plain model (a second copy without an adapter) over upstream's row layout."""
    trainer, tokenizer = real_trainer(args, out_dir)
    plain, _ = load_model_and_tokenizer(args.trainer_step_model)
    features, collate = list(trainer.train_dataset), trainer.data_collator
    rows = make_batch(features, tokenizer.pad_token_id, next(plain.parameters()).device, shared=False)
    ref = loss_fn_for(plain, rows)
    # ZO-LoRA's +eps/-eps pair as two forwards and as one forward of 2B rows (--zo_pair_batched), same batch
    lora_trainers = {name: real_trainer(args, out_dir, ("--lora",), extra)[0]
                     for name, extra in (("lora", ()), ("lora_pair_batched", ("--zo_pair_batched",)))}
    cases = {f"real_trainer_step/{name}": (lambda t=t: t.training_step(t.model, collate(features)))
             for name, t in lora_trainers.items()}
    return {"real_trainer_step/xgblora": lambda: trainer.training_step(trainer.model, collate(features)),
            **cases, "ref/real": lambda: (ref(), ref())}


def _variant_ratios(v: str) -> list[Ratio]:
    return [Ratio(f"zo_step_over_two_forwards/{v}", f"t:zo_step/{v}", f"t:forward/{v}", 2.0, "<=",
                  STEP_TARGETS[v], f"b: ZO step / 2 forwards ({v})"),
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


def _ref_ratio(v: str, candidates: int) -> Ratio:
    target = REF_TARGETS[v] if candidates == 2 else (REF_TARGETS_3[v] if candidates == 3 else None)
    return Ratio(f"zo_step_over_ref/{v}", f"t:zo_step/{v}", f"t:ref/{v}", 1.0, "<=" if target else "",
                 target or 0.0, f"ZO step / REF: 2 plain-model forwards over {candidates}-candidate rows ({v})")


def _adapter_ratios(v: str) -> list[Ratio]:
    return [Ratio(f"adapter_forward_over_plain/{v}", f"t:forward/{v}", f"t:forward_plain/{v}", 1.0, "", 0.0,
                  f"{v} forward (PEFT's adapter path) / adapter off, same rounds"),
            Ratio(f"folded_forward_over_plain/{v}", f"t:forward_folded/{v}", f"t:forward_plain/{v}", 1.0, "<=", 1.05,
                  f"{v} forward under zo (folded) / adapter off, same rounds")]


def ratios(variants: tuple[str, ...], candidates: int = 2) -> list[Ratio]:
    """b., b'., c., g. per variant, then ZO step / REF per variant, then the adapters' forwards."""
    out = [r for v in variants for r in _variant_ratios(v)]
    out += [_ref_ratio(v, candidates) for v in variants]
    return out + [r for v in ("lora", "xgblora") if v in variants for r in _adapter_ratios(v)]


def late_ratios(variants: tuple[str, ...], trainer_step: bool) -> list[Ratio]:
    """The Trainer's step with real weights against REF (with ``--trainer-step-model``), and e. (the merge)."""
    out = []
    if trainer_step:
        out.append(Ratio("real_trainer_step_over_ref/xgblora", "t:real_trainer_step/xgblora", "t:ref/real", 1.0,
                         "<=", 0.70, "the Trainer's ZO-XGBLoRA step, real weights and SST-2 batch / REF on that batch"))
        out.append(Ratio("pair_batched_over_two_forwards/lora", "t:real_trainer_step/lora_pair_batched",
                         "t:real_trainer_step/lora", 1.0, "", 0.0,
                         "the Trainer's ZO-LoRA step, +eps/-eps as one forward of 2B rows / as two forwards"))
    if "xgblora" in variants:
        out.append(Ratio("merge_over_forward/xgblora", "t:merge/xgblora", "t:forward/xgblora", 1.0, "<", 1.0,
                         "e: merge_and_reinit / one forward (xgblora)"))
    return out
