"""Entry point: zero-shot / in-context evaluation, MeZO or regular fine-tuning (full, LoRA, XGBLoRA, prefix) of a
causal LM.

    python large_models/run.py --task_name SST2 --model_name smollm2-135m --data_dir ../shared/data \
        --trainer zo --xgblora --xgblora_steps_per_iteration 50 --max_steps 200 ...

Writes one result JSON per train set (eval and dev metrics, boosting history, the resolved configuration).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from transformers import set_seed
from transformers.trainer_utils import IntervalStrategy

from mezo_engine.checkpoint import (RESUMABLE_EXIT, CheckpointError, RunStateCallback, StopOnSignal,
                                    resolve_resume)
from large_models.arguments import (ArgumentError, Arguments, default_config, launched_world_size,
                                    parse_args)
from mezo_engine.data import TrainCollator, count_cut, prompt_feature, training_feature
from mezo_engine import distributed
from mezo_engine.evaluation import EvalConfig, evaluate_sharded
from mezo_engine.models import ModelError, load_model_and_tokenizer, position_limit
from mezo_engine.placement import placement
from mezo_engine import resources
from mezo_engine.results import ResultPathError, check_result_path, config_hash, publish_result, run_name
from mezo_engine.objectives import objective_for
from large_models.tasks import DataError, get_task, per_example_demo_seeds
from mezo_engine.head import HeadError
from mezo_engine.linear_probe import ProbeError
from mezo_engine.modes import Mode, ModeError, mode_for, prepare_head, sample_batches
from mezo_engine.trainer import BestModelCallback, DivergenceError, MezoTrainer, mutable_parameters

logger = logging.getLogger("run")
REPO_ROOT = Path(__file__).resolve().parent.parent


def result_path(args: Arguments, set_seed_: int, many_sets: bool) -> Path:
    """``--result_file`` (with ``-trainset<k>`` before ``.json`` for several train sets), or by default
    ``<result_dir>/<task>-<model>-<tag>-<hash>[-trainset<k>].json``, the hash covering every setting that changes the
    result and differs from its default (see results.NOT_IN_HASH). Call it before anything rewrites ``args``."""
    if args.result_file:
        path = Path(args.result_file)
        return path.with_name(f"{path.stem}-trainset{set_seed_}{path.suffix}") if many_sets else path
    digest = config_hash(args.to_dict(), args.keep_best_model, default_config())
    name = run_name(args.task_name, args.model_name, args.tag, digest, set_seed_ if many_sets else None)
    return Path(args.result_dir or REPO_ROOT / "result") / f"{name}.json"


def run_output_dir(args: Arguments, path: Path, many_sets: bool) -> str:
    """The result path without ``.json`` (one folder per distinct run), or ``--output_dir`` if given (with a
    subfolder per train set when there are several)."""
    if not args.output_dir_given:
        return str(path.with_suffix(""))
    return str(Path(args.output_dir) / path.stem) if many_sets else args.output_dir


def cap_max_length(args: Arguments, model) -> None:
    """Lower ``--max_length`` to the model's position limit (longer inputs would crash the embedding)."""
    limit = position_limit(model.config)
    if limit is not None and args.max_length > limit:
        logger.warning("--max_length %d is more than this model's %d positions: using %d", args.max_length, limit,
                       limit)
        args.max_length = limit


def count_cut_prompts(args: Arguments, task, tokenizer, train_samples, eval_samples) -> dict:
    """How many training and evaluation examples are longer than ``--max_length`` (they lose their left end)."""
    demos = [] if args.learns else train_samples
    reserve = args.max_new_tokens if task.generation else 0
    cut = {"train": count_cut(tokenizer, task.template, train_samples if args.learns else [],
                              args.max_length, reserve=args.max_new_tokens if args.non_diff else 0),
           "eval": count_cut(tokenizer, task.template, [] if args.no_eval else eval_samples,
                             args.max_length, demos, reserve)}
    for split, n in cut.items():
        if n:
            logger.warning("%d %s prompt(s) are longer than --max_length %d tokens and lose their left end", n,
                           split, args.max_length)
    return cut


def model_placement(args: Arguments) -> str:
    """Where the model goes (``placement.placement``): split over the devices unless ``--no_auto_device``, one
    device per rank under torchrun, the CPU for FSDP (which places the shards) or without CUDA."""
    return placement(args.no_auto_device, launched_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                     torch.cuda.is_available(), fsdp=bool(args.fsdp))


def eval_config(args: Arguments) -> EvalConfig:
    """Evaluation settings (batching, generation, --scoring, --sfc / --icl_sfc) of the run."""
    return EvalConfig.from_args(args)


def one_demo_set_per_example(args: Arguments) -> bool:
    """MeZO's in-context default: ``--trainer none`` with neither ``--train_set_seed`` nor ``--num_train_sets``
    draws a separate demonstration set for each evaluation example."""
    return not args.learns and args.train_set_seed is None and not args.num_train_sets


def eval_subset(task, valid: list, seed: int, num: int | None) -> list:
    """The ``--num_eval`` evaluation examples, drawn as MeZO draws them: with the train set's seed."""
    return task.sample_subset(valid, seed=seed, num=num) if num else valid


def train_pool(args: Arguments, task, valid: list) -> list:
    """The examples train/dev sets and demonstrations are drawn from: the train split, the validation split
    itself with ``--train_from_validation``, none with ``--num_train 0``."""
    if not args.num_train:
        return []
    return valid if args.train_from_validation else task.load("train", args.data_dir)


def eval_pool(valid: list, train_set: list, from_validation: bool) -> list:
    """The validation examples evaluation may draw from: all of them, or with ``--train_from_validation`` those
    not drawn into the train/dev set (``train_set``), in their original order."""
    if not from_validation:
        return valid
    drawn = {id(s) for s in train_set}
    return [s for s in valid if id(s) not in drawn]


def validation_split(valid: list, pool: list, from_validation: bool) -> dict | None:
    """For the result JSON: how ``--train_from_validation`` divided the validation split (None when off)."""
    if not from_validation:
        return None
    return {"validation_examples": len(valid), "drawn_for_train_and_dev": len(valid) - len(pool),
            "eval_pool": len(pool)}


def train_set_seeds(args: Arguments) -> list[int]:
    if one_demo_set_per_example(args):
        return [0]  # one run; its eval subset is drawn with seed 0
    if args.train_set_seed is not None:
        return [args.train_set_seed]
    return list(range(args.num_train_sets)) if args.num_train_sets else [0]


def build_callbacks(args: Arguments, task, mode: Mode, run_state: RunStateCallback,
                    comm: distributed.CommCounter | None = None) -> list:
    """The mode's callbacks and the run's own; the stateful ones are registered with ``run_state``. ``comm``
    counts the stop-flag all-reduce under torchrun."""
    stateful = mode.callbacks(run_state.record)
    if args.keep_best_model:
        stateful["best"] = BestModelCallback(f"eval_{task.metric}")
    run_state.stateful = stateful
    return [*stateful.values(), run_state, StopOnSignal(args.save_on_interrupt, comm)]


def training_shares_prompts(args: Arguments, features) -> bool:
    """Whether the training loss runs each prompt once (``--scoring shared``; not for an LM loss on every token).
    Examples whose rows do not share their prompt exactly are scored by rows; their count is logged."""
    shared = args.scoring == "shared" and (args.train_as_classification or args.only_train_option)
    unshared = sum(f.prompt is None for f in features)
    if shared and unshared:
        logger.info("%d of %d training examples are scored by rows: their prompt tokens are not a prefix of every "
                    "candidate row (a BPE merge across the boundary, or a row cut by --max_length)", unshared,
                    len(features))
    return shared


def training_features(args: Arguments, task, tokenizer, train_samples) -> list:
    """What the objective needs of each training example: its candidate rows (data.Feature), or with
    ``--non_diff`` its prompt without the answer and its gold answers (data.PromptFeature)."""
    if args.non_diff:
        return [prompt_feature(tokenizer, task.template, s, args.max_length - args.max_new_tokens)
                for s in train_samples]
    return [training_feature(tokenizer, task.template, s, args.train_as_classification, args.max_length)
            for s in train_samples]


def build_trainer(args: Arguments, task, model, tokenizer, train_samples, dev_samples) -> MezoTrainer:
    """Prepare ``model`` for the run's mode (adapters attached, only its parameters trainable) and return a ready
    MezoTrainer with its objective and callbacks."""
    features = training_features(args, task, tokenizer, train_samples)
    collator = TrainCollator(tokenizer.pad_token_id, shared=training_shares_prompts(args, features))
    mode, objective = mode_for(args), objective_for(args, tokenizer, task)

    def batches():  # drawn only by a mode that needs them (LoRA-GA's gradient estimate)
        return sample_batches(features, collator, args.per_device_train_batch_size, args.lora_ga_batches, args.seed)
    try:
        model = mode.prepare(model, objective, batches)
    except ModeError as err:
        raise ArgumentError(str(err)) from err
    run_state = RunStateCallback(model, args.model_name, {}, store_base=mode.stores_base())
    comm = distributed.CommCounter()  # the zo loss all-reduces and the stop flag, under torchrun
    if not dev_samples and args.eval_strategy != IntervalStrategy.NO:
        logger.warning("no dev examples (--num_dev 0): evaluation during training is off")
        args.eval_strategy = IntervalStrategy.NO
    return MezoTrainer(model=model, args=args, train_dataset=features, eval_dataset=dev_samples or None,
                       data_collator=collator, processing_class=tokenizer,
                       callbacks=build_callbacks(args, task, mode, run_state, comm), task=task,
                       dev_samples=dev_samples, eval_config=eval_config(args), mode=mode, objective=objective,
                       comm=comm)


def _callback(trainer, cls):
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, cls))


def train(args: Arguments, task, model, tokenizer, train_samples, dev_samples) -> tuple[MezoTrainer, dict, str]:
    """Fine-tune ``model`` on ``train_samples`` (resuming if asked); returns the trainer (``trainer.model`` is the
    trained model), a summary for the result JSON and the status: ``completed``, ``interrupted at step N`` or
    ``diverged at step N``."""
    trainer = build_trainer(args, task, model, tokenizer, train_samples, dev_samples)
    checkpoint = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    if checkpoint:
        _callback(trainer, RunStateCallback).restore(trainer.model, checkpoint)
    stopper = _callback(trainer, StopOnSignal)
    stopper.install()
    status, summary = "completed", {}
    first_step, started = checkpoint_step(checkpoint), time.time()
    try:
        output = trainer.train(resume_from_checkpoint=checkpoint)
        summary = {"train_loss": output.training_loss, "global_step": output.global_step}
    except DivergenceError as err:
        logger.error("%s", err)
        status, summary["error"] = f"diverged at step {err.step}", str(err)
    finally:
        stopper.restore_handlers()
    summary.update(resources.training_speed(time.time() - started, first_step, trainer.state.global_step))
    if stopper.stopped and status == "completed":
        status = f"interrupted at step {stopper.stopped[1]}"
        summary["signal"] = stopper.stopped[0]
    return trainer, train_summary(trainer, summary), status


def checkpoint_step(checkpoint: str | None) -> int:
    """The step a run resumes from: the N of its ``checkpoint-N`` folder (0 for a fresh start)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else 0


def train_summary(trainer, summary: dict) -> dict:
    """``summary`` plus the log history and what the mode and the best-model callback recorded."""
    summary["log_history"] = trainer.state.log_history
    stateful = _callback(trainer, RunStateCallback).stateful
    summary.update(trainer.mode.summary(stateful))
    if "best" in stateful:
        summary["best_dev"] = {"value": stateful["best"].best, "step": stateful["best"].best_step}
    summary["ranks"] = distributed.gather(rank_checksums(trainer.model, summary))
    summary["collectives"] = {"calls": trainer.comm.calls, "bytes": trainer.comm.bytes}
    return summary


def rank_checksums(model, summary: dict) -> dict:
    """This rank's sha256 of the parameters training can change (``trainer.mutable_parameters``: trainable ones,
    adapters, merged-into base weights) and of its training record (mode summary, logged losses). Gathered from
    every rank into the result, so that equal digests show the ranks ended bit-identical."""
    record = {k: v for k, v in summary.items() if k not in ("log_history", "ranks", "collectives", "train_s",
                                                            "steps_per_s")}  # timings differ between ranks
    record["losses"] = [h["loss"] for h in summary.get("log_history", []) if "loss" in h]
    text = json.dumps(record, sort_keys=True, default=str)
    return {"rank": distributed.rank(), "params_sha256": distributed.tensors_sha256(mutable_parameters(model).items()),
            "record_sha256": hashlib.sha256(text.encode()).hexdigest()}


def save(args: Arguments, model, tokenizer, trainer: MezoTrainer | None = None) -> None:
    """Save the trained model (``--save_model``) from rank 0 only: under torchrun every rank holds the same one.
    Under FSDP every rank takes part in gathering the full state dict, which rank 0 writes (the Trainer's own
    ``save_model``; ``--fsdp`` is full-parameter training, so this is the whole model)."""
    out = Path(args.output_dir)
    if args.fsdp and trainer is not None:
        trainer.save_model(str(out / "model"))
    elif distributed.is_main():
        mode_for(args).save(model, tokenizer, out)
    logger.info("saved the trained model to %s", args.output_dir)


def publish(path: Path, result: dict, overwrite: bool) -> Path:
    """``results.publish_result`` on rank 0; the other ranks write nothing and get ``path`` back."""
    return publish_result(path, result, overwrite) if distributed.is_main() else path


def log_predictions(task, samples, predictions) -> None:
    """--verbose: each prompt's end, the gold answer and the prediction."""
    for sample, pred in zip(samples, predictions):
        logger.info("...%s | gold %r | predicted %r", task.template.encode(sample)[-120:].replace("\n", " "),
                    pred.correct_candidate, pred.predicted_candidate)


def run_one(args: Arguments, task, train_set, eval_samples, set_seed_: int | None, path: Path, output_dir: str,
            demo_sets: list | None = None, split: dict | None = None) -> dict:
    """Train (if asked) and evaluate one train set. ``set_seed_`` None with ``demo_sets``: MeZO's in-context mode,
    one demonstration set per evaluation example (``demo_sets[i]`` for ``eval_samples[i]``). ``split``: how
    ``--train_from_validation`` divided the validation split, recorded in the result."""
    args.output_dir = output_dir
    set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model_name, args.torch_dtype, args.load_int8,
                                                model_placement(args))
    cap_max_length(args, model)
    num_dev = args.num_dev or 0
    train_samples = train_set[:len(train_set) - num_dev]
    dev_samples = train_set[len(train_set) - num_dev:] if args.learns and num_dev else []
    result = {"task": args.task_name, "model": args.model_name, "trainer": args.trainer, "mode": args.mode,
              "tag": args.tag, "train_set_seed": set_seed_, "eval_seed": set_seed_ or 0,
              "demonstrations": "one set per eval example" if demo_sets is not None else "one set",
              "num_train": len(demo_sets[0]) if demo_sets else len(train_samples),
              "num_dev": len(dev_samples), "num_eval": len(eval_samples), "train_from_validation": split,
              "prompts_cut": count_cut_prompts(args, task, tokenizer, train_samples, eval_samples),
              "world_size": distributed.world_size()}
    start = time.time()
    result["status"] = "completed"
    if head_summary := prepare_head(args, task, model, tokenizer, train_samples):
        result["head"] = head_summary
    trainer = None
    if args.trainer != "none":
        trainer, result["train"], result["status"] = train(args, task, model, tokenizer, train_samples, dev_samples)
        model = trainer.model
    if result["status"] != "completed":
        return stopped_run(args, result, path, model, tokenizer, start, trainer)
    cfg, shard = eval_config(args), not args.fsdp  # FSDP's forwards must run in step on every rank: no sharding
    if not args.no_eval:
        demos = demo_sets if demo_sets is not None else [] if args.learns else train_samples
        scored = evaluate_sharded(model, tokenizer, task, eval_samples, demos, cfg, shard)
        result["eval"] = {task.metric: scored[task.metric]}
        result["eval_predictions"] = [p.predicted_candidate for p in scored["predictions"]]
        if args.verbose:
            log_predictions(task, eval_samples, scored["predictions"])
    if dev_samples:
        dev = evaluate_sharded(model, tokenizer, task, dev_samples, [], cfg, shard)
        result["dev"] = {task.metric: dev[task.metric]}
    result["runtime_s"] = round(time.time() - start, 2)
    result["resources"] = resources.usage(time.time() - start)
    result["config"] = args.to_dict()
    if args.save_model:
        save(args, model, tokenizer, trainer)
    written = publish(path, result, args.overwrite)
    if written != path:
        logger.error("another run completed %s while this one ran; this run's result is in %s", path, written)
    logger.info("eval %s, dev %s -> %s", result.get("eval"), result.get("dev"), written)
    return result


class RunStopped(Exception):
    """Training stopped early (a signal or divergence); the result JSON says so. ``exit_code`` for run.py."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code  # RESUMABLE_EXIT after a signal, 1 after divergence


def stopped_run(args: Arguments, result: dict, path: Path, model, tokenizer, start: float, trainer=None):
    """Write the result of a run that did not complete (no evaluation) and raise RunStopped."""
    result["runtime_s"] = round(time.time() - start, 2)
    result["resources"] = resources.usage(time.time() - start)
    result["config"] = args.to_dict()
    signal_name = result["train"].get("signal")
    if signal_name in ("SIGUSR1", "SIGINT"):  # --save_on_interrupt: save the model as trained so far
        save(args, model, tokenizer, trainer)
    written = publish(path, result, args.overwrite)
    if signal_name:
        raise RunStopped(f"{result['status']} ({signal_name}); checkpoint in {args.output_dir}, result in "
                         f"{written}; re-run with --resume_from_checkpoint auto to continue", RESUMABLE_EXIT)
    raise RunStopped(f"run.py: error: {result['train']['error']}; result in {written}", 1)


def start_ranks(args: Arguments) -> None:
    """Under torchrun: join the process group now (accelerate's state, set up as the Trainer sets it up), so that
    evaluation-only runs share their work between the ranks and only rank 0 writes."""
    if launched_world_size() > 1:
        logger.info("rank %s of %d on %s", os.environ.get("RANK"), launched_world_size(), args.device)


def main(argv: list[str] | None = None) -> list[dict]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    start_ranks(args)
    try:
        seeds = train_set_seeds(args)
        paths = [result_path(args, s, len(seeds) > 1) for s in seeds]
        out_dirs = [run_output_dir(args, p, len(seeds) > 1) for p in paths]
        for path in paths:  # before any data or model is loaded, so a bad path costs nothing
            check_result_path(path, args.overwrite)
        task = get_task(args.task_name)
        valid = task.load("validation", args.data_dir)
        train = train_pool(args, task, valid)
        if one_demo_set_per_example(args):
            eval_samples = eval_subset(task, valid, 0, args.num_eval)
            demo_seeds = per_example_demo_seeds(len(valid), args.num_eval)[:len(eval_samples)]
            demo_sets = [task.sample_subset(train, s, args.num_train) if train else [] for s in demo_seeds]
            return [run_one(args, task, [], eval_samples, None, paths[0], out_dirs[0], demo_sets)]
        train_sets = task.sample_train_sets(train, args.num_train, args.num_dev, seeds) if train else [[]] * len(seeds)
        pools = [eval_pool(valid, ts, args.train_from_validation) for ts in train_sets]
        if not (args.no_eval or all(pools)):
            raise DataError(f"--train_from_validation: --num_train {args.num_train} + --num_dev {args.num_dev or 0} "
                            f"took all {len(valid)} validation examples; none is left to evaluate on")
        return [run_one(args, task, ts, eval_subset(task, pool, s, args.num_eval), s, p, o,
                        split=validation_split(valid, pool, args.train_from_validation))
                for ts, pool, s, p, o in zip(train_sets, pools, seeds, paths, out_dirs)]
    except (ArgumentError, FileNotFoundError, ResultPathError, DataError, ModelError, CheckpointError,
            ProbeError, HeadError) as err:
        sys.exit(f"run.py: error: {err}")
    except RunStopped as stop:
        if stop.exit_code != RESUMABLE_EXIT:
            sys.exit(str(stop))
        logger.warning("%s", stop)
        sys.exit(stop.exit_code)


if __name__ == "__main__":
    main()
