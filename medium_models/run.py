"""Entry point: prompt-based zero-shot evaluation, MeZO or regular fine-tuning (full, LoRA, XGBLoRA, head) of a
masked LM on an LM-BFF k-shot task, as MeZO's medium-model experiments; a causal LM takes the same prompts.

    python medium_models/run.py --task_name SST-2 --num_k 16 --seed 42 --data_dir ../shared/data/LM-BFF/k-shot-1k-test \
        --model_name roberta-large --trainer zo --learning_rate 1e-6 --zo_eps 1e-3 --max_steps 100000 ...

Trains on ``train``, evaluates on ``dev`` every ``--eval_steps`` (the best dev model is kept with
``--load_best_model_at_end``) and reports the final model on ``test``, in one result JSON laid out as
``large_models``' results (``eval``: test metrics, ``dev``, ``train``, ``config``, ``status``).
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from transformers import set_seed

from medium_models import demos, trainable
from medium_models.arguments import Arguments, default_config, parse_args
from medium_models.probe import linear_probe
from medium_models.prompts import PromptError, check_causal_template, encode, label_word_ids
from medium_models.scoring import Collator, Feature, LabelLoss, RegressionLoss, metrics, predict
from mezo_engine import run_config, runner
from mezo_engine.arguments import ArgumentError
from mezo_engine.checkpoint import CheckpointError
from mezo_engine.head import HeadError
from mezo_engine.linear_probe import ProbeError
from mezo_engine.metrics import warn_if_one_class
from mezo_engine.models import ModelError, auto_class_of, is_masked_lm, load_model_and_tokenizer
from mezo_engine.modes import prepare_head, sample_batches
from mezo_engine.results import ResultPathError, check_result_path
from mezo_engine.runner import RunStopped, exit_stopped, finish, model_placement, run_output_dir, stopped_run
from mezo_engine.status import Status
from mezo_engine.tasks import DataError

logger = logging.getLogger("run")
REPO_ROOT = Path(__file__).resolve().parent.parent
# Named in a masked-LM run's result-name hash: upstream's untied decoder, trainable sets and final cut (see
# docs/medium-models.md); results named before these rules were followed keep their names (docs/medium-runs/).
MASKED_LM_RULES = "upstream-1"


class Prompting:
    """How this run turns samples into Features: the template (with demonstrations: ``demos.demo_template``), label
    words and limits, for a masked or causal LM; ``dropped`` is the template text a causal LM does not see (after
    the mask); ``copies``: the prompts of each dev and test example (``--num_sample`` with demonstrations)."""

    def __init__(self, args: Arguments, tokenizer, causal: bool):
        self.args, self.tokenizer, self.causal = args, tokenizer, causal
        if args.demos and causal:
            raise PromptError("--few_shot_type prompt-demo with a causal LM: the demonstrations follow the query's "
                              "mask, after which a causal LM's prompt ends; use a masked LM")
        self.template = args.prompt_template
        self.dropped = check_causal_template(self.template) if causal else ""
        self.label_ids = label_word_ids(tokenizer, args.label_words())
        task = args.task
        self.objective = (RegressionLoss(self.label_ids, causal, task.bounds) if task.regression
                          else LabelLoss(self.label_ids, causal))
        self.segments = "token_type_ids" in tokenizer.model_input_names and not causal
        self.copies, self.cut = (args.num_sample if args.demos else 1), 0
        self.full_template = demos.demo_template(self.template, len(task.labels)) if args.demos else self.template

    def feature(self, sample, split: str, shown: Sequence = ()) -> Feature:
        """The Feature of ``sample`` with the demonstrations ``shown``; a prompt this tokenizer cannot encode is
        refused naming its split and line."""
        first, other = self.args.sentence_limits()
        texts = demos.augmented_texts(sample, shown) if self.args.demos else sample.data["texts"]
        try:
            enc = encode(self.tokenizer, self.full_template, texts, self.causal, self.args.seq_length, first, other,
                         self.segments, self.args.truncate_head, self.label_ids)
        except PromptError as err:
            raise PromptError(f"{self.args.task_name} {split} example at line {sample.id}: {err}") from None
        self.cut += enc.cut
        return Feature(enc.ids, enc.position, sample.correct_candidate, enc.token_type_ids)

    def features(self, splits: dict) -> dict:
        """Every split's Features: one per example; with demonstrations the training set draws them anew each
        epoch (``demos.DemoDataset``) and dev and test examples get ``copies`` draws each, consecutive."""
        if not self.args.demos:
            return {split: [self.feature(s, split) for s in samples] for split, samples in splits.items()}
        train, seed = splits["train"], self.args.seed
        groups = demos.by_label(self.args.task, train)

        def shown(rng, exclude=None):
            return [train[i] for i in demos.choose(groups, rng, exclude)]
        out = {"train": demos.DemoDataset(len(train), lambda i, rng: self.feature(train[i], "train", shown(rng, i)),
                                          seed)}
        for split in ("dev", "test"):
            out[split] = [self.feature(s, split, shown(demos.draw(seed, split, i, j)))
                          for i, s in enumerate(splits[split]) for j in range(self.copies)]
        return out

    def summary(self) -> dict:
        """What the result JSON records about the prompt."""
        tokens = self.tokenizer.convert_ids_to_tokens(self.label_ids)
        out = {"template": self.template, "label_words": self.args.label_words(), "label_tokens": tokens,
               "scored_at": "next token after the text before the mask" if self.causal else "mask",
               "dropped_after_mask": self.dropped if self.causal else None, "prompts_cut": self.cut,
               "max_length": self.args.seq_length}
        if self.args.demos:
            out["demonstrations"] = {"template": self.full_template, "num_sample": self.copies}
        return out


def load_splits(args: Arguments) -> dict[str, list]:
    """The train, dev and test samples of ``<data_dir>/<TASK>/<K>-<seed>`` (test cut to ``--num_eval``)."""
    if not args.data_dir:
        raise FileNotFoundError("--data_dir (DATA_DIR) not given: the folder holding <TASK>/<K>-<seed>/, e.g. "
                                "../shared/data/LM-BFF/k-shot-1k-test")
    folder = args.task.split_dir(args.data_dir, args.num_k, args.split_seed)
    splits = {split: args.task.load(folder, split) for split in ("train", "dev", "test")}
    splits["test"] = splits["test"][:args.num_eval] if args.num_eval else splits["test"]
    return splits


def evaluate(args: Arguments, model, features: list[Feature], collator: Collator, objective: LabelLoss,
             copies: int = 1):
    """The task's metrics on ``features`` (``copies`` consecutive prompts per example) and the predictions (label
    indices, or a regression's scores)."""
    predicted = predict(model, features, collator, objective, args.per_device_eval_batch_size,
                        progress=not args.disable_tqdm, copies=copies)
    if not args.task.regression:
        warn_if_one_class(predicted)
    return metrics([f.label for f in features[::copies]], predicted, args.task.metric), predicted


def build_trainer(args: Arguments, model, tokenizer, prompting: Prompting, features: dict, collator: Collator):
    """A MezoTrainer for the run's mode: the label-word loss, the training features, dev metrics as evaluation,
    and on a masked LM upstream's rule for what trains beside the mode's own parameters (``trainable.py``)."""
    def batches():  # drawn only by a mode that needs them (LoRA-GA's gradient estimate)
        return sample_batches(list(features["train"]), collator, args.per_device_train_batch_size,
                              args.lora_ga_batches, args.seed)

    def dev_metrics(trained) -> dict:
        return evaluate(args, trained, features["dev"], collator, prompting.objective, prompting.copies)[0]
    rule = None if prompting.causal else trainable.upstream_rule(args.mode, args.adapters_train_head)
    trainer = runner.make_trainer(args, model, prompting.objective,
                                  dev_metrics if features["dev"] else None, batches, args.task.metric,
                                  also_train=rule, train_dataset=features["train"],
                                  eval_dataset=features["dev"] or None, data_collator=collator,
                                  processing_class=tokenizer)
    if isinstance(features["train"], demos.DemoDataset):
        trainer.add_callback(demos.EpochCallback(features["train"]))
    return trainer


def run_one(parsed: Arguments, splits: dict, path: Path, output_dir: str) -> dict:
    """Load the model, train (if asked), evaluate on test and dev, and write the result JSON. ``parsed``: the frozen
    parsed arguments; the run reads their resolved copy (``run_config.resolve``)."""
    set_seed(parsed.seed)
    auto_class = auto_class_of(parsed.model_name)
    model, tokenizer = load_model_and_tokenizer(parsed.model_name, parsed.torch_dtype, parsed.load_int8,
                                                model_placement(parsed), auto_class)
    causal = auto_class.__name__ == "AutoModelForCausalLM"
    untie = trainable.untie_by_default(parsed.untie_emb, parsed.tie_emb, causal)
    args = run_config.resolve(parsed, output_dir, bool(splits["dev"]), untie_emb=untie)
    prompting = Prompting(args, tokenizer, causal)
    features = prompting.features(splits)
    collator = Collator(tokenizer.pad_token_id, causal)
    widened = prompting.segments and demos.widen_segments(model, segments_used(features),
                                                          torch.Generator().manual_seed(args.seed))
    result = {"task": args.task_name, "model": args.model_name, "model_kind": "causal" if causal else "masked",
              "trainer": args.trainer, "mode": args.mode, "tag": args.tag, "num_k": args.num_k,
              "data_seed": args.split_seed, "num_train": len(splits["train"]), "num_dev": len(splits["dev"]),
              "num_eval": len(splits["test"]), "prompt": prompting.summary(), "status": Status.completed().format(),
              **rule_settings(args, not causal), **({"segment_types_widened": True} if widened else {})}
    start, trainer, status = time.time(), None, Status.completed()
    probe = None if not args.linear_probing else (
        lambda: linear_probe(model, list(features["train"]), collator, prompting.label_ids, args.lp_early_stopping,
                             args.per_device_eval_batch_size))
    if head_summary := prepare_head(args, model, probe):  # untied (a masked LM by default) and probed if asked
        result["head"] = head_summary
    if args.trainer != "none":
        trainer = build_trainer(args, model, tokenizer, prompting, features, collator)
        trainer, result["train"], status = runner.train(args, trainer, args.resume_from_checkpoint)
        result.update(runner.ledger_record(trainer))
        model, result["status"] = trainer.model, status.format()
    else:
        runner.int8_base(args, model)  # --load_int8 on the CPU (training quantises once its adapters are on)
    if not status.is_finished:
        return stopped_run(args, result, path, model, tokenizer, start, trainer)
    if not args.no_eval:
        result["eval"], predicted = evaluate(args, model, features["test"], collator, prompting.objective,
                                             prompting.copies)
        result["eval_predictions"] = predicted
        if args.eval_last_model:
            def score(trained) -> dict:
                metrics, last = evaluate(args, trained, features["test"], collator, prompting.objective,
                                         prompting.copies)
                return {**metrics, "predictions": last}
            result["eval_last"] = runner.evaluate_last(trainer, score, {**result["eval"], "predictions": predicted})
    result["dev"] = evaluate(args, model, features["dev"], collator, prompting.objective, prompting.copies)[0]
    written = finish(args, result, path, start, model, tokenizer, trainer)
    logger.info("test %s, dev %s -> %s", result.get("eval"), result["dev"], written)
    return result


def segments_used(features: dict) -> int:
    """How many segment ids the prompts use (one more than the largest; every prompt has the same template)."""
    return 1 + max(max(split[0].token_type_ids) for split in features.values() if len(split))


def rule_settings(args: Arguments, masked: bool) -> dict:
    """The rules of this app that changed what some runs compute after their results were named, as settings for
    the name's hash (and the result): a masked LM's run follows upstream's trainable sets, untied decoder and cut
    (``MASKED_LM_RULES``); a zo run with weight decay decays every parameter (``--zo_weight_decay_all``). Runs
    neither touches keep their names."""
    settings = {"masked_lm_rules": MASKED_LM_RULES} if masked else {}
    if args.trainer == "zo" and args.weight_decay and args.zo_weight_decay_all:
        settings["zo_decay"] = "all"
    return settings


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = run_config.freeze(parse_args(argv))
    try:
        settings = rule_settings(args, is_masked_lm(args.model_name))
        path = runner.result_path(args, args.task_name, None, False, default_config(), REPO_ROOT, settings)
        # before any data or model is loaded, so a bad path costs nothing
        check_result_path(path, args.overwrite, args.budget)
        output_dir = run_output_dir(args, path, False)
        runner.lock_output_dirs([output_dir])  # one job per output folder, before anything loads
        return run_one(args, load_splits(args), path, output_dir)
    except (ArgumentError, FileNotFoundError, ResultPathError, DataError, ModelError, CheckpointError, HeadError,
            PromptError, ProbeError) as err:
        sys.exit(f"run.py: error: {err}")
    except RunStopped as stop:
        exit_stopped(stop)
    finally:
        runner.release_output_dirs()
        runner.end_ranks()


if __name__ == "__main__":
    main()
