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
from pathlib import Path

from transformers import set_seed

from medium_models.arguments import Arguments, default_config, parse_args
from medium_models.prompts import PromptError, check_causal_template, encode, label_word_ids
from medium_models.scoring import Collator, Feature, LabelLoss, metrics, predict
from mezo_engine import run_config, runner
from mezo_engine.arguments import ArgumentError
from mezo_engine.checkpoint import CheckpointError
from mezo_engine.head import HeadError
from mezo_engine.metrics import warn_if_one_class
from mezo_engine.models import ModelError, auto_class_of, load_model_and_tokenizer
from mezo_engine.modes import prepare_head, sample_batches
from mezo_engine.results import ResultPathError, check_result_path
from mezo_engine.runner import RunStopped, exit_stopped, finish, model_placement, run_output_dir, stopped_run
from mezo_engine.status import Status
from mezo_engine.tasks import DataError

logger = logging.getLogger("run")
REPO_ROOT = Path(__file__).resolve().parent.parent


class Prompting:
    """How this run turns samples into Features: the template, label words and limits, for a masked or causal
    LM; ``dropped`` is the template text a causal LM does not see (after the mask)."""

    def __init__(self, args: Arguments, tokenizer, causal: bool):
        self.args, self.tokenizer, self.causal = args, tokenizer, causal
        self.template = args.prompt_template
        self.dropped = check_causal_template(self.template) if causal else ""
        self.label_ids = label_word_ids(tokenizer, args.label_words())
        self.segments = "token_type_ids" in tokenizer.model_input_names and not causal
        self.cut = 0

    def feature(self, sample) -> Feature:
        first, other = self.args.sentence_limits()
        enc = encode(self.tokenizer, self.template, sample.data["texts"], self.causal, self.args.seq_length, first,
                     other, self.segments)
        self.cut += enc.cut
        return Feature(enc.ids, enc.position, sample.correct_candidate, enc.token_type_ids)

    def summary(self) -> dict:
        """What the result JSON records about the prompt."""
        tokens = self.tokenizer.convert_ids_to_tokens(self.label_ids)
        return {"template": self.template, "label_words": self.args.label_words(), "label_tokens": tokens,
                "scored_at": "next token after the text before the mask" if self.causal else "mask",
                "dropped_after_mask": self.dropped if self.causal else None, "prompts_cut": self.cut}


def load_splits(args: Arguments) -> dict[str, list]:
    """The train, dev and test samples of ``<data_dir>/<TASK>/<K>-<seed>`` (test cut to ``--num_eval``)."""
    if not args.data_dir:
        raise FileNotFoundError("--data_dir (DATA_DIR) not given: the folder holding <TASK>/<K>-<seed>/, e.g. "
                                "../shared/data/LM-BFF/k-shot-1k-test")
    folder = args.task.split_dir(args.data_dir, args.num_k, args.split_seed)
    splits = {split: args.task.load(folder, split) for split in ("train", "dev", "test")}
    splits["test"] = splits["test"][:args.num_eval] if args.num_eval else splits["test"]
    return splits


def evaluate(args: Arguments, model, features: list[Feature], collator: Collator, label_ids: list[int]):
    """The task's metrics on ``features`` and the predicted label indices."""
    predicted = predict(model, features, collator, label_ids, args.per_device_eval_batch_size,
                        progress=not args.disable_tqdm)
    warn_if_one_class(predicted)
    return metrics([f.label for f in features], predicted, args.task.metric), predicted


def build_trainer(args: Arguments, model, tokenizer, prompting: Prompting, features: dict, collator: Collator):
    """A MezoTrainer for the run's mode: the label-word loss, the training features, dev metrics as evaluation."""
    def batches():  # drawn only by a mode that needs them (LoRA-GA's gradient estimate)
        return sample_batches(features["train"], collator, args.per_device_train_batch_size, args.lora_ga_batches,
                              args.seed)

    def dev_metrics(trained) -> dict:
        return evaluate(args, trained, features["dev"], collator, prompting.label_ids)[0]
    return runner.make_trainer(args, model, LabelLoss(prompting.label_ids, prompting.causal),
                               dev_metrics if features["dev"] else None, batches, args.task.metric,
                               train_dataset=features["train"], eval_dataset=features["dev"] or None,
                               data_collator=collator, processing_class=tokenizer)


def run_one(parsed: Arguments, splits: dict, path: Path, output_dir: str) -> dict:
    """Load the model, train (if asked), evaluate on test and dev, and write the result JSON. ``parsed``: the frozen
    parsed arguments; the run reads their resolved copy (``run_config.resolve``)."""
    set_seed(parsed.seed)
    auto_class = auto_class_of(parsed.model_name)
    model, tokenizer = load_model_and_tokenizer(parsed.model_name, parsed.torch_dtype, parsed.load_int8,
                                                model_placement(parsed), auto_class)
    args = run_config.resolve(parsed, output_dir, bool(splits["dev"]))
    causal = auto_class.__name__ == "AutoModelForCausalLM"
    prompting = Prompting(args, tokenizer, causal)
    features = {split: [prompting.feature(s) for s in samples] for split, samples in splits.items()}
    collator = Collator(tokenizer.pad_token_id, causal)
    result = {"task": args.task_name, "model": args.model_name, "model_kind": "causal" if causal else "masked",
              "trainer": args.trainer, "mode": args.mode, "tag": args.tag, "num_k": args.num_k,
              "data_seed": args.split_seed, "num_train": len(splits["train"]), "num_dev": len(splits["dev"]),
              "num_eval": len(splits["test"]), "prompt": prompting.summary(), "status": Status.completed().format()}
    start, trainer, status = time.time(), None, Status.completed()
    if head_summary := prepare_head(args, model):  # --untie_emb (--linear_probing is refused here)
        result["head"] = head_summary
    if args.trainer != "none":
        trainer = build_trainer(args, model, tokenizer, prompting, features, collator)
        trainer, result["train"], status = runner.train(args, trainer)
        result.update(runner.ledger_record(trainer))
        model, result["status"] = trainer.model, status.format()
    else:
        runner.int8_base(args, model)  # --load_int8 on the CPU (training quantises once its adapters are on)
    if not status.is_finished:
        return stopped_run(args, result, path, model, tokenizer, start, trainer)
    if not args.no_eval:
        result["eval"], predicted = evaluate(args, model, features["test"], collator, prompting.label_ids)
        result["eval_predictions"] = predicted
    result["dev"] = evaluate(args, model, features["dev"], collator, prompting.label_ids)[0]
    written = finish(args, result, path, start, model, tokenizer, trainer)
    logger.info("test %s, dev %s -> %s", result.get("eval"), result["dev"], written)
    return result


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = run_config.freeze(parse_args(argv))
    try:
        path = runner.result_path(args, args.task_name, None, False, default_config(), REPO_ROOT)
        # before any data or model is loaded, so a bad path costs nothing
        check_result_path(path, args.overwrite, args.budget)
        output_dir = run_output_dir(args, path, False)
        runner.lock_output_dirs([output_dir])  # one job per output folder, before anything loads
        return run_one(args, load_splits(args), path, output_dir)
    except (ArgumentError, FileNotFoundError, ResultPathError, DataError, ModelError, CheckpointError, HeadError,
            PromptError) as err:
        sys.exit(f"run.py: error: {err}")
    except RunStopped as stop:
        exit_stopped(stop)
    finally:
        runner.release_output_dirs()
        runner.end_ranks()


if __name__ == "__main__":
    main()
