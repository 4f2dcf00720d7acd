"""Do an XGBLoRA run's merges point downhill? Replays the merges recorded in one of its checkpoints on the base
model and measures each against the backprop gradient of the training loss (``mezo_engine.alignment``).

    OMP_NUM_THREADS=1 python scripts/merge_alignment.py RESULT.json CHECKPOINT [--examples 128] [--out FILE.json]

RESULT.json is the run's result file: its ``config`` rebuilds the run's arguments, so the model, task, train set,
LoRA settings and loss are the run's own. CHECKPOINT is a ``checkpoint-N`` folder of that run (its
``run_state.pt`` holds the merges). The gradient is the mean over the first ``--examples`` examples of the run's
training set, in the batch size of the run; it prints a table and, with ``--out``, writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import HfArgumentParser, set_seed

from large_models.arguments import Arguments
from large_models.pipeline import objective_for
from large_models.run import resolve, train_pool, training_features, training_shares_prompts
from large_models.custom_task import task_for
from mezo_engine import alignment, lora
from mezo_engine.checkpoint import RUN_STATE
from mezo_engine.data import TrainCollator
from mezo_engine.models import load_model_and_tokenizer
from mezo_engine.methods import mode_for

COLUMNS = ["merge", "delta_norm", "grad_norm", "cosine", "best_cosine", "random_cosine", "loss_before",
           "loss_after", "predicted_change"]


def run_arguments(result: dict, output_dir: str) -> Arguments:
    """The run's Arguments, from its result JSON's resolved ``config`` (keys that are not flags are ignored)."""
    config = dict(result["config"], output_dir=output_dir, result_file=None, resume_from_checkpoint=None)
    (args,) = HfArgumentParser(Arguments).parse_dict(config, allow_extra_keys=True)
    return args


def table(rows: list[alignment.MergeAlignment]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        d = r.to_dict()
        lines.append("| " + " | ".join(str(d[c]) if c == "merge" else f"{d[c]:.4g}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("result", type=Path, help="the run's result JSON")
    p.add_argument("checkpoint", type=Path, help="a checkpoint-N folder of that run")
    p.add_argument("--examples", type=int, default=128, help="training examples the gradient is averaged over")
    p.add_argument("--out", type=Path, help="write the measurements here as JSON")
    a = p.parse_args(argv)
    if not (a.checkpoint / RUN_STATE).is_file():
        sys.exit(f"merge_alignment.py: {a.checkpoint} has no {RUN_STATE} (not a checkpoint of run.py)")
    state = torch.load(a.checkpoint / RUN_STATE, map_location="cpu", weights_only=False)
    if "merges" not in state:
        sys.exit(f"merge_alignment.py: {a.checkpoint} stores base weights, not merges (a LoRA-GA run)")
    groups = alignment.group_merges(lora.MergeFactor(**f) for f in state["merges"])
    if not groups:
        sys.exit(f"merge_alignment.py: {a.checkpoint} records no merge")

    with tempfile.TemporaryDirectory() as tmp:
        args = run_arguments(json.loads(a.result.read_text()), tmp)
    set_seed(args.seed)
    task = task_for(args.task_name, args.task_file)
    (train_set,) = task.sample_train_sets(train_pool(args, task, task.load("validation", args.data_dir)),
                                          args.num_train, args.num_dev, [args.train_set_seed or 0])
    num_train = len(train_set) - (args.num_dev or 0)
    train_samples = train_set[:num_train][:a.examples]
    model, tokenizer = load_model_and_tokenizer(args.model_name, args.torch_dtype, args.load_int8)
    args = resolve(args, model, args.output_dir, train_set[num_train:])
    features = training_features(args, task, tokenizer, train_samples)
    collate = TrainCollator(tokenizer.pad_token_id, shared=training_shares_prompts(args, features))
    bs = args.per_device_train_batch_size
    batches = [collate(features[i:i + bs]) for i in range(0, len(features), bs)]
    objective = objective_for(args, tokenizer, task)
    model = mode_for(args).prepare(model, objective, lambda: batches)
    with tqdm(total=len(groups), desc="merges") as bar:
        rows = alignment.merge_alignment(model, groups, batches, objective, progress=bar.update)
    print(f"{a.result.name}: {len(groups)} merges of rank {rows[0].rank} over {rows[0].modules} modules, gradient "
          f"over {len(features)} training examples")
    print(table(rows))
    if a.out:
        a.out.write_text(json.dumps({"result": str(a.result), "checkpoint": str(a.checkpoint),
                                     "examples": len(features), "merges": [r.to_dict() for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
