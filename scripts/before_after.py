"""Real-model before/after: the same run.py commands on two checkouts of this project, in alternating rounds.

    python scripts/before_after.py --before ../base-checkout --after . --data_dir ../shared/data

For each checkout it runs, as separate `run.py` processes at one thread (the model loads before the clock starts):

* zero-shot evaluation of the first ``--sst2`` SST-2 validation sentences and all CB validation examples,
  reporting examples per second (``num_eval / runtime_s`` of the result JSON) and the predictions;
* ``--zo_steps`` MeZO-XGBLoRA steps on a real SST-2 batch (``--trainer zo --xgblora``, batch ``--batch``, no
  evaluation), reporting seconds per step (the Trainer's ``train_runtime / global_step``).

It prints a markdown table (medians over ``--rounds``) and whether the predictions of the two checkouts are
identical example by example. Checkouts are run in turn within each round, so machine load hits both alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_json(repo: Path, flags: list[str], out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(repo / "large_models" / "run.py"), *flags, "--result_file", str(out),
           "--output_dir", str(out.with_suffix("")), "--disable_tqdm", "True"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{repo}: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def eval_flags(task: str, num: int | None, args) -> list[str]:
    flags = ["--task_name", task, "--model_name", args.model, "--data_dir", args.data_dir, "--trainer", "none",
             "--num_train", "0", "--train_set_seed", "0", "--per_device_eval_batch_size", str(args.eval_batch)]
    return flags + (["--num_eval", str(num)] if num else [])


def zo_flags(args) -> list[str]:
    return ["--task_name", "SST2", "--model_name", args.model, "--data_dir", args.data_dir, "--trainer", "zo",
            "--xgblora", "--xgblora_steps_per_iteration", "1000", "--num_train", str(4 * args.batch),
            "--num_dev", "0", "--train_set_seed", "0", "--max_steps", str(args.zo_steps), "--no_eval",
            "--per_device_train_batch_size", str(args.batch), "--train_as_classification",
            "--learning_rate", "1e-4", "--zo_eps", "1e-2", "--lr_scheduler_type", "constant",
            "--logging_steps", "1", "--save_strategy", "no"]


def seconds_per_step(result: dict) -> float:
    final = [h for h in result["train"]["log_history"] if "train_runtime" in h][-1]
    return final["train_runtime"] / result["train"]["global_step"]


def measure(repo: Path, args, tmp: Path, tag: str) -> dict:
    out = {}
    for task, num in (("SST2", args.sst2), ("CB", None)):
        res = run_json(repo, eval_flags(task, num, args), tmp / f"{tag}-{task}.json")
        out[task] = {"ex_per_s": res["num_eval"] / res["runtime_s"], "accuracy": res["eval"]["accuracy"],
                     "predictions": res["eval_predictions"], "n": res["num_eval"]}
    out["zo_step_s"] = seconds_per_step(run_json(repo, zo_flags(args), tmp / f"{tag}-zo.json"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--after", type=Path, required=True)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sst2", type=int, default=200)
    p.add_argument("--eval_batch", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--zo_steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    runs = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for label in runs:
                runs[label].append(measure(getattr(args, label).resolve(), args, Path(tmp), f"{label}{r}"))
                print(f"round {r} {label}: done", file=sys.stderr, flush=True)
    med = {label: {"SST2": statistics.median(m["SST2"]["ex_per_s"] for m in ms),
                   "CB": statistics.median(m["CB"]["ex_per_s"] for m in ms),
                   "zo": statistics.median(m["zo_step_s"] for m in ms)} for label, ms in runs.items()}
    b, a = runs["before"][0], runs["after"][0]
    print("| measurement | before | after | after / before |\n| --- | ---: | ---: | ---: |")
    print(f"| s per ZO-XGBLoRA step (SST-2, batch {args.batch}) | {med['before']['zo']:.2f} | {med['after']['zo']:.2f} "
          f"| {med['after']['zo'] / med['before']['zo']:.3f} |")
    for task in ("SST2", "CB"):
        print(f"| {task} eval examples / s ({a[task]['n']} examples) | {med['before'][task]:.2f} | "
              f"{med['after'][task]:.2f} | {med['after'][task] / med['before'][task]:.3f} |")
    for task in ("SST2", "CB"):
        same = sum(x == y for x, y in zip(b[task]["predictions"], a[task]["predictions"]))
        print(f"{task}: identical predictions {same}/{a[task]['n']}; accuracy before {b[task]['accuracy']:.4f}, "
              f"after {a[task]['accuracy']:.4f}")


if __name__ == "__main__":
    main()
