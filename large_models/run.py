"""Entry point: zero-shot / in-context evaluation, MeZO or regular fine-tuning (full, LoRA, XGBLoRA, prefix) of a
causal LM.

    python large_models/run.py --task_name SST2 --model_name smollm2-135m --data_dir ../shared/data \
        --trainer zo --xgblora --xgblora_steps_per_iteration 50 --max_steps 200 ...

Writes one result JSON per train set (eval and dev metrics, boosting history, the resolved configuration).
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from transformers import set_seed

from large_models.arguments import Arguments, default_config, parse_args
from large_models.pipeline import dev_evaluator, eval_config, objective_for, probe
from large_models.custom_task import task_for
from large_models.tasks import DataError, per_example_demo_seeds
from mezo_engine import distributed, run_config
from mezo_engine.arguments import ArgumentError
from mezo_engine.checkpoint import CheckpointError
from mezo_engine.data import TrainCollator, count_cut, prompt_feature, training_feature
from mezo_engine.evaluation import evaluate_sharded
from mezo_engine.head import HeadError
from mezo_engine.linear_probe import ProbeError
from mezo_engine.methods import model_problems
from mezo_engine.metrics import example_scores
from mezo_engine.models import (ModelError, check_before_loading, config_is_masked_lm, load_model_and_tokenizer,
                                position_limit)
from mezo_engine.modes import prepare_head, sample_batches
from mezo_engine.results import ResultPathError, check_result_path
from mezo_engine import runner
from mezo_engine.runner import (RunStopped, end_ranks, exit_stopped, finish, lock_output_dirs, model_placement,
                                release_output_dirs, run_output_dir, start_ranks, stopped_run)
from mezo_engine.status import Status
from mezo_engine.trainer import MezoTrainer

logger = logging.getLogger("run")
REPO_ROOT = Path(__file__).resolve().parent.parent


def result_path(args: Arguments, set_seed_: int, many_sets: bool) -> Path:
    """``runner.result_path`` with this app's defaults: ``<result_dir>/<task>-<model>-<tag>-<hash>.json``."""
    return runner.result_path(args, args.task_label, set_seed_, many_sets, default_config(), REPO_ROOT)


def capped_max_length(args: Arguments, model) -> int:
    """``--max_length`` lowered to the model's position limit (longer inputs would crash the embedding)."""
    limit = position_limit(model.config)
    if limit is not None and args.max_length > limit:
        logger.warning("--max_length %d is more than this model's %d positions: using %d", args.max_length, limit,
                       limit)
        return limit
    return args.max_length


def resolve(args: Arguments, model, output_dir: str, dev_samples: list) -> Arguments:
    """The run's arguments for one train set (``run_config.resolve``): its output folder, evaluation during
    training only with dev examples, ``--max_length`` capped to ``model``."""
    return run_config.resolve(args, output_dir, bool(dev_samples), max_length=capped_max_length(args, model))


def count_cut_prompts(args: Arguments, task, tokenizer, train_samples, eval_samples,
                      demo_sets: list | None = None) -> dict:
    """How many training and evaluation examples are longer than ``--max_length`` (they lose their left end).
    ``demo_sets``: MeZO's in-context mode, ``demo_sets[i]`` before ``eval_samples[i]``."""
    demos = [] if args.learns else train_samples
    reserve = args.max_new_tokens if task.generation else 0
    cut = {"train": count_cut(tokenizer, task.template, train_samples if args.learns else [],
                              args.max_length, reserve=args.max_new_tokens if args.non_diff else 0),
           "eval": count_cut(tokenizer, task.template, [] if args.no_eval else eval_samples,
                             args.max_length, demos, reserve, demo_sets)}
    for split, n in cut.items():
        if n:
            logger.warning("%d %s prompt(s) are longer than --max_length %d tokens and lose their left end", n,
                           split, args.max_length)
    return cut


def one_demo_set_per_example(args: Arguments) -> bool:
    """MeZO's in-context default: ``--trainer none`` with neither ``--train_set_seed`` nor ``--num_train_sets``
    draws a separate demonstration set for each evaluation example."""
    return not args.learns and args.train_set_seed is None and not args.num_train_sets


def eval_subset(task, valid: list, seed: int, num: int | None) -> list:
    """The ``--num_eval`` evaluation examples, drawn as MeZO draws them: with the train set's seed."""
    return task.sample_subset(valid, seed=seed, num=num) if num else valid


def eval_samples_of(task, valid: list, train: list, num_train: int, num_dev: int | None, num_eval: int | None,
                    seed: int | None, from_validation: bool) -> list:
    """The evaluation examples, in order, of the run whose train set has seed ``seed`` (None: MeZO's in-context
    mode, one demonstration set per example), drawn as ``main`` draws them (``scripts/eval_scores.py`` pairs a
    result's predictions with their gold answers through it)."""
    if seed is None:
        return eval_subset(task, valid, 0, num_eval)
    train_set = task.sample_train_sets(train, num_train, num_dev, [seed])[0] if train else []
    return eval_subset(task, eval_pool(valid, train_set, from_validation), seed, num_eval)


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

    def batches():  # drawn only by a mode that needs them (LoRA-GA's gradient estimate)
        return sample_batches(features, collator, args.per_device_train_batch_size, args.lora_ga_batches, args.seed)
    return runner.make_trainer(args, model, objective_for(args, tokenizer, task),
                               dev_evaluator(args, tokenizer, task, dev_samples), batches, task.metric,
                               train_dataset=features, eval_dataset=dev_samples or None, data_collator=collator,
                               processing_class=tokenizer)


def train(args: Arguments, task, model, tokenizer, train_samples, dev_samples) -> tuple[MezoTrainer, dict, Status]:
    """Fine-tune ``model`` on ``train_samples`` (``runner.train``): the trainer, the summary and the status."""
    return runner.train(args, build_trainer(args, task, model, tokenizer, train_samples, dev_samples),
                        args.resume_from_checkpoint)


def log_predictions(task, samples, predictions) -> None:
    """--verbose: each prompt's end, the gold answer and the prediction."""
    for sample, pred in zip(samples, predictions):
        logger.info("...%s | gold %r | predicted %r", task.template.encode(sample)[-120:].replace("\n", " "),
                    pred.correct_candidate, pred.predicted_candidate)


def check_model(args: Arguments) -> None:
    """What can be checked of ``--model_name`` before it loads (its config and tokenizer): a causal LM, a
    tokenizer within its vocabulary, the mode's flags against it (``methods.model_problems``)."""
    def problems(config):
        if config_is_masked_lm(config):
            kind = ", ".join(config.architectures or [config.model_type])
            yield (f"--model_name {args.model_name!r}: a masked LM ({kind}); large_models runs causal LMs, "
                   f"medium_models/run.py runs masked ones")
        yield from model_problems(args, config)
    check_before_loading(args.model_name, problems)


def run_one(parsed: Arguments, task, train_set, eval_samples, set_seed_: int | None, path: Path, output_dir: str,
            demo_sets: list | None = None, split: dict | None = None) -> dict:
    """Train (if asked) and evaluate one train set. ``set_seed_`` None with ``demo_sets``: MeZO's in-context mode,
    one demonstration set per evaluation example (``demo_sets[i]`` for ``eval_samples[i]``). ``split``: how
    ``--train_from_validation`` divided the validation split, recorded in the result. ``parsed``: the frozen
    parsed arguments; the run reads their resolved copy."""
    set_seed(parsed.seed)
    model, tokenizer = load_model_and_tokenizer(parsed.model_name, parsed.torch_dtype, parsed.load_int8,
                                                model_placement(parsed))
    task.check_tokenization(tokenizer, [*train_set, *eval_samples, *(s for demos in demo_sets or () for s in demos)])
    num_dev = parsed.num_dev or 0
    train_samples = train_set[:len(train_set) - num_dev]
    dev_samples = train_set[len(train_set) - num_dev:] if parsed.learns and num_dev else []
    args = resolve(parsed, model, output_dir, dev_samples)
    result = {"task": args.task_name, "model": args.model_name, "trainer": args.trainer, "mode": args.mode,
              "tag": args.tag, "train_set_seed": set_seed_, "eval_seed": set_seed_ or 0,
              "demonstrations": "one set per eval example" if demo_sets is not None else "one set",
              "num_train": len(demo_sets[0]) if demo_sets else len(train_samples),
              "num_dev": len(dev_samples), "num_eval": len(eval_samples), "train_from_validation": split,
              "prompts_cut": count_cut_prompts(args, task, tokenizer, train_samples, eval_samples, demo_sets),
              "world_size": distributed.world_size()}
    start = time.time()
    status = Status.completed()
    result["status"] = status.format()
    if head_summary := prepare_head(args, model, probe(args, task, model, tokenizer, train_samples)):
        result["head"] = head_summary
    trainer = None
    if args.trainer != "none":
        trainer, result["train"], status = train(args, task, model, tokenizer, train_samples, dev_samples)
        result.update(runner.ledger_record(trainer))
        model, result["status"] = trainer.model, status.format()
    else:
        runner.int8_base(args, model)  # --load_int8 on the CPU (training quantises once its adapters are on)
    if not status.is_finished:
        return stopped_run(args, result, path, model, tokenizer, start, trainer)
    cfg, shard = eval_config(args), not args.fsdp  # FSDP's forwards must run in step on every rank: no sharding
    if not args.no_eval:
        demos = demo_sets if demo_sets is not None else [] if args.learns else train_samples
        scored = evaluate_sharded(model, tokenizer, task, eval_samples, demos, cfg, shard)
        result["eval"] = {task.metric: scored[task.metric]}
        result["eval_predictions"] = [p.predicted_candidate for p in scored["predictions"]]
        result["eval_scores"] = example_scores(scored["predictions"], task.metric)  # per example, for paired tests
        if args.verbose:
            log_predictions(task, eval_samples, scored["predictions"])
        if args.eval_last_model:
            def score(trained) -> dict:
                last = evaluate_sharded(trained, tokenizer, task, eval_samples, demos, cfg, shard)
                return {task.metric: last[task.metric], "scores": example_scores(last["predictions"], task.metric)}
            result["eval_last"] = runner.evaluate_last(trainer, score, {**result["eval"],
                                                                        "scores": result["eval_scores"]})
    if dev_samples:
        dev = evaluate_sharded(model, tokenizer, task, dev_samples, [], cfg, shard)
        result["dev"] = {task.metric: dev[task.metric]}
    written = finish(args, result, path, start, model, tokenizer, trainer)
    logger.info("eval %s, dev %s -> %s", result.get("eval"), result.get("dev"), written)
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = run_config.freeze(parse_args(argv))
    start_ranks(args)
    try:
        seeds = train_set_seeds(args)
        paths = [result_path(args, s, len(seeds) > 1) for s in seeds]
        out_dirs = [run_output_dir(args, p, len(seeds) > 1) for p in paths]
        for path in paths:  # before any data or model is loaded, so a bad path costs nothing
            check_result_path(path, args.overwrite, args.budget)
        lock_output_dirs(out_dirs)  # one job per output folder, before anything loads
        task = task_for(args.task_name, args.task_file)
        valid = task.load("validation", args.data_dir)
        train = train_pool(args, task, valid)
        check_model(args)
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
        exit_stopped(stop)
    finally:
        release_output_dirs()
        end_ranks()


if __name__ == "__main__":
    main()
