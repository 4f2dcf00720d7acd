"""How this app configures the engine's causal-LM scoring pipeline from its own flags.

The engine's candidate scoring, generation, objectives and linear probe (``mezo_engine.evaluation``,
``objectives``, ``linear_probe``) read no flag: they take an explicit ``EvalConfig``, objective or value. This
module is the one place that turns ``Arguments`` (``--scoring``, ``--sfc`` / ``--icl_sfc``, ``--max_length``, the
generation flags, ``--non_diff``, ``--train_as_classification``, ``--only_train_option``) into them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from large_models.arguments import Arguments
from mezo_engine import linear_probe
from mezo_engine.evaluation import EvalConfig, evaluate_sharded
from mezo_engine.objectives import AnswerLoss, F1Objective, Objective


def eval_config(args: Arguments) -> EvalConfig:
    """Evaluation settings (batching, generation, ``--scoring``, ``--sfc`` / ``--icl_sfc``) of the run."""
    calibration = "sfc" if args.sfc else "icl_sfc" if args.icl_sfc else "none"
    return EvalConfig(batch_size=args.per_device_eval_batch_size, max_length=args.max_length,
                      max_new_tokens=args.max_new_tokens, sampling=args.sampling, temperature=args.temperature,
                      num_beams=args.num_beams, top_k=args.top_k, top_p=args.top_p, eos_token=args.eos_token,
                      progress=not args.disable_tqdm, scoring=args.scoring, calibration=calibration)


def objective_for(args: Arguments, tokenizer, task) -> Objective:
    """The objective ``args`` ask for: ``F1Objective`` with ``--non_diff`` (generation tasks, checked when the
    arguments were parsed), else ``AnswerLoss`` with ``--train_as_classification`` / ``--only_train_option``."""
    if args.non_diff:
        if task is not None and not task.generation:  # parse_args refuses it; this guards programmatic use
            raise ValueError(f"--non_diff: task {task.name} has no generated answer to score")
        return F1Objective(tokenizer, eval_config(args))
    return AnswerLoss(args.train_as_classification, args.only_train_option)


def dev_evaluator(args: Arguments, tokenizer, task, dev_samples: Sequence) -> Callable | None:
    """The trainer's dev evaluation, ``model -> {metric: value}``: ``task``'s metric on ``dev_samples`` by
    candidate scoring or generation, shared between the ranks (not under FSDP, whose forwards run in step on every
    rank). None without dev samples."""
    if not dev_samples:
        return None
    cfg, shard = eval_config(args), not args.fsdp

    def evaluate(model) -> dict[str, float]:
        return {task.metric: evaluate_sharded(model, tokenizer, task, dev_samples, (), cfg, shard)[task.metric]}
    return evaluate


def probe(args: Arguments, task, model, tokenizer, train_samples: Sequence) -> Callable[[], dict]:
    """``--linear_probing``'s fit on ``train_samples`` (``linear_probe.linear_probe``), for ``modes.prepare_head``
    to call after it unties the head."""
    return lambda: linear_probe.linear_probe(model, tokenizer, task, train_samples, args.lp_early_stopping,
                                             args.per_device_eval_batch_size, args.max_length)
