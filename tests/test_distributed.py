"""Data-parallel training under torchrun (gloo, 2 CPU processes) against one process on the same global batch.

Tolerance of the one-process comparison (zo). Every rank's loss is a mean over its half of the batch; the two are
averaged in float64 with their weights, where one process takes a mean over the whole batch and pads it to another
width, so its matmuls run other kernels and sum in another order. In float32 that left differences of a few ulps
(1.4e-6 on a Copa loss of 5.68; 1.07e-3 relative on a merge norm, which inherits the loss difference times
1/(2 eps) through the projected gradient), too close to any tolerance one could argue. So the equivalence runs in
float64 (``--load_float64``; scores and merges then stay in float64 too), where the same rounding is
2^-53 / 2^-24 = 1.9e-9 times smaller:
- losses (below 8): |dL| ~ 1.4e-6 * 1.9e-9 = 2.7e-15, a dozen float64 ulps (8.9e-16 at 4-8). The Trainer logs
  its loss through a float32 accumulator, so the logged losses are the float64 ones rounded to float32: equal,
  unless a loss lies within 1e-15 of a float32 rounding boundary, where they land on neighbours; the test allows
  that one float32 ulp (``_within_a_float32_ulp``). The projected gradient is formed from the float64 losses;
- projected gradient: |dg| <= 2 * 1e-12 / (2 eps) = 1e-10 with eps 1e-2 (1e-12: the loss difference with a
  margin of 300 for other kernels and batch shapes); a step moves a parameter by
  lr * |dg| * |z| <= 1e-2 * 1e-10 * 6 = 6e-12 (|z| < 6 for every Gaussian draw of a tiny model); over 4 steps
  2.4e-11 <= PARAM_ATOL = 1e-10;
- merge norm: relative 1.07e-3 * 1.9e-9 = 2e-12 measured in float32 terms; MERGE_RTOL = 1e-9 (500x).
A wrong weighting or a wrong batch moves these by ~1e-4 to 1e-3 (the ``half`` run below), 10^6 times the tolerances.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from large_models import run
from mezo_engine import distributed, lora, zo
from large_models.arguments import ArgumentError, Arguments
from mezo_engine.data import TrainCollator, training_feature
from mezo_engine.objectives import AnswerLoss, batch_weight
from mezo_engine.placement import dispatch, memory_caps, placement
from mezo_engine.results import config_hash
from mezo_engine.scoring import candidate_logprobs, counted_tokens, token_logprobs
from large_models.tasks import Sample, get_task
from tests.tiny import make_model, make_tokenizer

REPO = Path(__file__).resolve().parent.parent
PARAM_ATOL = 1e-10
MERGE_RTOL = 1e-9
WRONG_BATCH = 1e-5  # a parameter difference this large means another computation, not rounding
POSITIVE = ["a gripping , funny film", "the best movie of the year", "warm and wise", "a joy to watch"]
NEGATIVE = ["dull and lifeless", "a mess from start to end", "boring", "painfully slow"]
COPA = [("The man turned on the faucet.", "The toilet filled with water.", "Water flowed from the spout."),
        ("I was tired.", "The dog barked.", "I went to bed."),
        ("My body cast a shadow over the grass.", "The sun was rising.", "The grass was cut."),
        ("The girl found a bug in her cereal.", "She poured milk in the bowl.", "She lost her appetite."),
        ("The woman repaired her faucet.", "The faucet was leaky.", "The faucet was turned off."),
        ("The runner wore shorts.", "The forecast predicted high temperatures.", "She planned to run."),
        ("I emptied my pockets.", "I retrieved a ticket stub.", "I found a weapon."),
        ("The child got a cavity.", "He ate a lot of sweets.", "He went to the dentist.")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """SST-2 (16 train rows) and COPA (16 train rows, answers of different lengths) in their original formats."""
    root = tmp_path_factory.mktemp("data")
    (root / "SST-2").mkdir()
    rows = [f"{t} \t1" for t in POSITIVE] + [f"{t} \t0" for t in NEGATIVE]
    (root / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows * 2) + "\n")
    (root / "SST-2" / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (root / "COPA").mkdir()
    copa = [{"premise": p, "choice1": a, "choice2": b, "question": ["cause", "effect"][i % 2], "label": i % 2,
             "idx": i} for i, (p, a, b) in enumerate(COPA)]
    flipped = [{**r, "idx": r["idx"] + 8, "label": 1 - r["label"]} for r in copa]
    (root / "COPA" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in copa + flipped) + "\n")
    (root / "COPA" / "val.jsonl").write_text("\n".join(json.dumps(r) for r in copa[:5]) + "\n")
    return root


def _flags(model_dir, data_dir, task, out: Path, *extra):
    return ["--model_name", str(model_dir), "--task_name", task, "--data_dir", str(data_dir), "--result_file",
            str(out / "result.json"), "--output_dir", str(out / "out"), "--disable_tqdm", "True", "--num_train", "16",
            "--num_dev", "0", "--train_set_seed", "0", "--num_eval", "5", "--logging_steps", "1",
            "--per_device_eval_batch_size", "2", *extra]


def _torchrun(out: Path, flags: list, nproc: int = 2) -> dict:
    """run.py under torchrun on CPU (gloo); the result JSON rank 0 wrote."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "large_models/run.py", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


def _single(out: Path, flags: list) -> dict:
    run.main(flags)
    return json.loads((out / "result.json").read_text())


def _losses(result):
    return [h["loss"] for h in result["train"]["log_history"] if "loss" in h]


def _within_a_float32_ulp(got: list, want: list) -> bool:
    """Logged losses (float64 rounded to float32) equal, or float32 neighbours (see the module docstring)."""
    return len(got) == len(want) > 0 and all(abs(a - b) <= np.spacing(np.float32(max(abs(a), abs(b))))
                                             for a, b in zip(got, want))


def _assert_ranks_identical(result, world_size=2):
    ranks = result["train"]["ranks"]
    assert result["world_size"] == world_size and [r["rank"] for r in ranks] == list(range(world_size))
    assert len({r["params_sha256"] for r in ranks}) == 1  # bit-identical trainable state on every rank
    assert len({r["record_sha256"] for r in ranks}) == 1  # same losses, same boosting history


def _max_param_diff(a_dir: Path, b_dir: Path) -> float:
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ---- two ranks against one process on the same global batch -------------------------------------------------
def _two_ranks_match_one_process(tmp_path, model_dir, data_dir, task: str, zo: list,
                                 atol: float = PARAM_ATOL) -> tuple[dict, dict]:
    """Run ``zo`` on 2 ranks x 4 examples and in one process x 8; assert the ranks end bit-identical and the two
    runs agree within the module's tolerances (losses; saved weights within ``atol``); return both results."""
    two = _torchrun(tmp_path / "two", _flags(model_dir, data_dir, task, tmp_path / "two", *zo,
                                             "--per_device_train_batch_size", "4"))
    one = _single(tmp_path / "one", _flags(model_dir, data_dir, task, tmp_path / "one", *zo,
                                           "--per_device_train_batch_size", "8"))
    _assert_ranks_identical(two)
    assert _within_a_float32_ulp(_losses(two), _losses(one)), (_losses(two), _losses(one))
    assert _max_param_diff(tmp_path / "two/out/model", tmp_path / "one/out/model") < atol
    return two, one


@pytest.mark.slow
def test_zo_xgblora_classification_on_two_ranks_is_the_one_process_run(tmp_path, tiny_opt_dir, data_dir):
    """2 ranks x 4 examples = one process x 8, step for step: losses, merges (booster blocks drawn on every rank
    alike) and weights; the ranks end bit-identical; a step sends 2 x 16 bytes of losses and 8 of stop flag."""
    zo = ["--trainer", "zo", "--train_as_classification", "--xgblora", "--xgblora_steps_per_iteration", "2",
          "--xgblora_num_layers", "1", "--max_steps", "4", "--learning_rate", "1e-2", "--zo_eps", "1e-2",
          "--save_model", "--load_float64"]
    two, one = _two_ranks_match_one_process(tmp_path, tiny_opt_dir, data_dir, "SST2", zo)
    half = _single(tmp_path / "half", _flags(tiny_opt_dir, data_dir, "SST2", tmp_path / "half", *zo,
                                             "--per_device_train_batch_size", "4"))
    assert two["train"]["collectives"] == {"calls": 4 * 3, "bytes": 4 * (2 * 16 + 8)}
    assert one["train"]["collectives"] == {"calls": 0, "bytes": 0} and one["world_size"] == 1
    assert abs(_losses(two)[0] - _losses(half)[0]) > 1e-4  # one rank's batch alone is another loss
    merges_two, merges_one = two["train"]["boosting"]["merges"], one["train"]["boosting"]["merges"]
    assert [(m["step"], m["modules"]) for m in merges_two] == [(m["step"], m["modules"]) for m in merges_one]
    assert [m["delta_norm"] for m in merges_two] == pytest.approx([m["delta_norm"] for m in merges_one], rel=MERGE_RTOL)
    assert _max_param_diff(tmp_path / "two/out/model", tmp_path / "half/out/model") > WRONG_BATCH


LOW_RANK = {"lozo_m": ["--zo_optimizer", "lozo_m", "--lozo_interval", "2"],
            "subzero": ["--zo_optimizer", "subzero", "--subzero_rank", "2", "--subzero_interval", "2", "--xgblora",
                        "--xgblora_steps_per_iteration", "2"]}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(LOW_RANK))
def test_low_rank_zo_methods_on_two_ranks_are_the_one_process_run(tmp_path, tiny_opt_dir, data_dir, method):
    """LOZO-M (full-parameter) and SubZero (XGBLoRA): every rank draws the same subspaces from the step seeds and
    keeps the same state, so 2 ranks x 4 examples are one process x 8. A LOZO direction's entries are sums of r
    products of two Gaussians, |z| < r * 6 * 6 before the 1/r of the estimate, so a step moves a parameter by at
    most lr * |dg| * 36 = 3.6e-11 (|dg| <= 1e-10, the module docstring), LOZO-M's momentum being an average of such
    steps; over 4 steps 1.4e-10, within 10 * PARAM_ATOL."""
    zo = ["--trainer", "zo", "--train_as_classification", "--max_steps", "4", "--learning_rate", "1e-2",
          "--zo_eps", "1e-2", "--save_model", "--load_float64", *LOW_RANK[method]]
    _two_ranks_match_one_process(tmp_path, tiny_opt_dir, data_dir, "SST2", zo, atol=10 * PARAM_ATOL)


@pytest.mark.slow
def test_fzoo_on_two_ranks_is_the_one_process_run_with_one_all_reduce_a_step(tmp_path, tiny_opt_dir, data_dir):
    """FZOO's base loss and 3 queries (one batched forward per rank) averaged over the ranks in one all-reduce of
    5 float64 a step: the one-process run's losses and weights. The normalised coefficients d_i / sigma carry a
    loss difference of ~1e-15 as ~1e-15 / eps / sigma ~ 1e-12 (sigma ~ 0.1), a step moves a parameter by lr times
    that: 1e-14 per step, far below PARAM_ATOL."""
    zo = ["--trainer", "zo", "--train_as_classification", "--xgblora", "--xgblora_steps_per_iteration", "2",
          "--max_steps", "4", "--learning_rate", "1e-2", "--zo_eps", "1e-2", "--save_model", "--load_float64",
          "--zo_optimizer", "fzoo", "--fzoo_num_queries", "3"]
    two, _ = _two_ranks_match_one_process(tmp_path, tiny_opt_dir, data_dir, "SST2", zo)
    assert two["train"]["collectives"] == {"calls": 4 * 2, "bytes": 4 * (5 * 8 + 8)}


@pytest.mark.slow
def test_zo_copa_lm_loss_weights_ranks_by_answer_tokens(tmp_path, tiny_opt_dir, data_dir):
    """Copa's LM loss on the answer tokens, full-parameter: the ranks' answers have different lengths, and the
    token-weighted average is the one-process loss of the global batch."""
    zo = ["--trainer", "zo", "--max_steps", "4", "--learning_rate", "1e-2", "--zo_eps", "1e-2", "--save_model",
          "--load_float64"]
    two, one = _two_ranks_match_one_process(tmp_path, tiny_opt_dir, data_dir, "Copa", zo)
    assert two["eval"] == one["eval"] and two["eval_predictions"] == one["eval_predictions"]


@pytest.mark.slow
@pytest.mark.parametrize("method", [["--zo_optimizer", "hizoo", "--hizoo_smooth", "0.1"],
                                    ["--zo_optimizer", "sparse_mezo", "--zo_num_samples", "2"]],
                         ids=["hizoo", "sparse_mezo"])
def test_zo_methods_on_two_ranks_are_the_one_process_run(tmp_path, tiny_opt_dir, data_dir, method):
    """HiZOO (L0 averaged over the ranks too; its Hessian state alike on every rank) and Sparse MeZO (thresholds
    from the same weights on every rank), full-parameter: 2 ranks x 4 = one process x 8, within the module's
    tolerances. HiZOO's steps are along z / sqrt(D) with D >= 0.9^4 over 4 steps at alpha = 0.1, at most 1.24x
    MeZO's, so PARAM_ATOL's margin of 4 over MeZO's bound holds."""
    zo = ["--trainer", "zo", "--train_as_classification", "--max_steps", "4", "--learning_rate", "1e-2",
          "--zo_eps", "1e-2", "--save_model", "--load_float64", *method]
    two, one = _two_ranks_match_one_process(tmp_path, tiny_opt_dir, data_dir, "SST2", zo)
    assert two["train"]["optimizer_state_bytes"] == one["train"]["optimizer_state_bytes"] > 0


@pytest.mark.slow
def test_regular_ddp_with_frozen_boosters_keeps_ranks_identical(tmp_path, tiny_opt_dir, data_dir):
    """--trainer regular uses the Trainer's DDP; XGBLoRA with Ls < all freezes the other blocks' boosters, which
    DDP is told to expect (find_unused_parameters): 3 merges, ranks bit-identical."""
    flags = ["--trainer", "regular", "--train_as_classification", "--xgblora", "--xgblora_steps_per_iteration", "2",
             "--xgblora_num_layers", "1", "--max_steps", "6", "--learning_rate", "1e-2",
             "--per_device_train_batch_size", "4"]
    two = _torchrun(tmp_path, _flags(tiny_opt_dir, data_dir, "SST2", tmp_path, *flags))
    _assert_ranks_identical(two)
    assert [m["step"] for m in two["train"]["boosting"]["merges"]] == [2, 4, 6]
    assert two["config"]["ddp_find_unused_parameters"] is True


@pytest.mark.slow
def test_evaluation_is_shared_between_ranks_and_written_once(tmp_path, tiny_opt_dir, data_dir):
    """In-context evaluation with one demonstration set per example, 5 examples over 2 ranks (3 and 2): the
    gathered predictions are those of one process, and only rank 0 writes."""
    flags = ["--trainer", "none", "--num_train", "2", "--num_eval", "5", "--model_name", str(tiny_opt_dir),
             "--task_name", "SST2", "--data_dir", str(data_dir), "--disable_tqdm", "True"]
    two = _torchrun(tmp_path / "two", [*flags, "--result_file", str(tmp_path / "two/result.json")])
    one = _single(tmp_path / "one", [*flags, "--result_file", str(tmp_path / "one/result.json")])
    assert two["demonstrations"] == "one set per eval example" and two["num_eval"] == 5
    assert two["eval_predictions"] == one["eval_predictions"] and two["eval"] == one["eval"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["result.json"]


@pytest.mark.slow
def test_resume_under_torchrun_is_exact(tmp_path, tiny_opt_dir, data_dir):
    """Checkpoints are rank-aware (run_state.pt from rank 0, an RNG state per rank): resuming 2 ranks from step 2
    of 4 ends bit for bit where the uninterrupted run ends, booster merges included."""
    flags = ["--trainer", "zo", "--train_as_classification", "--xgblora", "--xgblora_steps_per_iteration", "2",
             "--xgblora_num_layers", "1", "--max_steps", "4", "--learning_rate", "1e-2", "--zo_eps", "1e-2",
             "--per_device_train_batch_size", "4", "--save_strategy", "steps", "--save_steps", "2"]
    whole = _torchrun(tmp_path / "a", _flags(tiny_opt_dir, data_dir, "SST2", tmp_path / "a", *flags))
    assert sorted(p.name for p in (tmp_path / "a/out/checkpoint-2").glob("r*")) == [
        "rng_state_0.pth", "rng_state_1.pth", "run_state.pt"]
    resumed = _torchrun(tmp_path / "b", _flags(tiny_opt_dir, data_dir, "SST2", tmp_path / "b", *flags,
                                               "--resume_from_checkpoint", str(tmp_path / "a/out/checkpoint-2")))
    _assert_ranks_identical(resumed)
    digests = [[r["params_sha256"] for r in result["train"]["ranks"]] for result in (whole, resumed)]
    assert digests[0] == digests[1]
    assert resumed["train"]["boosting"] == whole["train"]["boosting"] and _losses(resumed) == _losses(whole)


@pytest.mark.slow
def test_mezo_driver_launches_num_gpu_ranks(tmp_path, tiny_opt_dir, data_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUM_GPU": "2", "MODEL": str(tiny_opt_dir), "TASK": "SST2",
           "MODE": "lora", "DATA_DIR": str(data_dir), "STEPS": "2", "TRAIN": "8", "DEV": "4", "EVAL": "4",
           "EVAL_STEPS": "2", "BS": "2"}
    out = tmp_path / "r.json"
    proc = subprocess.run(["bash", "mezo.sh", "--result_file", str(out), "--output_dir", str(tmp_path / "out"),
                           "--disable_tqdm", "True"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "NUM_GPU=2" in proc.stderr
    result = json.loads(out.read_text())
    _assert_ranks_identical(result)
    assert result["config"]["world_size"] == 2 and result["config"]["per_device_train_batch_size"] == 2
    assert result["train"]["best_dev"]["step"] == 2 and "dev" in result  # dev evaluation shared by the ranks


# ---- the pieces, in one process ------------------------------------------------------------------------------
def _features(task_name, as_classification):
    """Training features of 8 examples: Copa (gold answers of 4 to 8 tokens) or SST-2."""
    tokenizer, task = make_tokenizer(merges=True), get_task(task_name)
    if task_name == "Copa":
        samples = [Sample(i, {"premise": p, "question": "effect"}, [a, b][i % 2], [a, b])
                   for i, (p, a, b) in enumerate(COPA)]
    else:
        samples = [Sample(i, {"sentence": t}, int(i < 4), [0, 1]) for i, t in enumerate(POSITIVE + NEGATIVE)]
    return tokenizer, [training_feature(tokenizer, task.template, s, as_classification, 256) for s in samples]


@pytest.mark.parametrize("shared", [True, False])
def test_counted_tokens_are_the_tokens_the_lm_loss_averages_over(shared):
    """The LM loss's weight, read off the batch, is the number of log-probabilities its mask counts (answer
    lengths differ between the examples); on rows, also with every token counted."""
    tokenizer, features = _features("Copa", as_classification=False)
    batch = TrainCollator(tokenizer.pad_token_id, shared=shared)(features)
    model = make_model("opt")
    _, mask = candidate_logprobs(model, batch)
    assert counted_tokens(batch) == int(mask.sum()) and len({f.option_lens[0] for f in features}) > 1
    if not shared:
        _, every = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["option_len"],
                                  all_tokens=True)
        assert counted_tokens(batch, all_tokens=True) == int(every.sum())


@pytest.mark.parametrize("task_name, as_classification", [("Copa", False), ("SST2", True)])
def test_weighted_halves_give_the_loss_of_the_whole_batch(task_name, as_classification):
    """The rule the ranks follow, with unequal halves: sum(loss * weight) / sum(weight) over the halves is the loss
    of the whole batch; the plain mean of the halves is not. In float64: the halves and the whole batch are padded
    to other widths and reduce in another order, which in float32 differs by a few ulps of a loss near 5 (~1e-6);
    in float64 that is ~1e-15, so 1e-12 holds with a wide margin, 10^8 below the plain mean's error (> 1e-4)."""
    tokenizer, features = _features(task_name, as_classification)
    collate, objective = TrainCollator(tokenizer.pad_token_id), AnswerLoss(as_classification)
    model = make_model("opt", dtype=torch.float64)
    parts = [collate(features[:3]), collate(features[3:])]
    with torch.no_grad():
        whole = objective(model, collate(features)).item()
        losses = [objective(model, b).item() for b in parts]
    weights = [batch_weight(objective, b) for b in parts]
    assert weights[0] != weights[1]
    weighted = sum(loss * w for loss, w in zip(losses, weights)) / sum(weights)
    assert weighted == pytest.approx(whole, abs=1e-12)
    assert abs(sum(losses) / 2 - whole) > 1e-4


def _gloo_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    counter = distributed.CommCounter()
    mean = distributed.weighted_mean(rank + 1.0, 2 * rank + 1.0, counter)  # (1*1 + 2*3) / (1 + 3)
    means = distributed.weighted_means([rank + 1.0, -rank], 2 * rank + 1.0, counter)  # one all-reduce of three
    zero = distributed.weighted_mean(5.0, 0.0)
    top = distributed.max_over_ranks(10.0 * rank, counter)
    items = list(range(7))
    mine = distributed.shard(items)
    back = distributed.unshard(distributed.gather(mine))
    if rank == 0:
        Path(out_file).write_text(json.dumps({"mean": mean, "means": means, "zero": zero, "top": top, "mine": mine,
                                              "back": back, "calls": counter.calls, "bytes": counter.bytes}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_collectives_on_two_gloo_processes(tmp_path):
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out.json")), nprocs=2)
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["mean"] == 7 / 4 and got["means"] == [7 / 4, -3 / 4] and got["zero"] == 0.0 and got["top"] == 10.0
    assert got["mine"] == [0, 2, 4, 6] and got["back"] == list(range(7))
    assert got["calls"] == 3 and got["bytes"] == 16 + 24 + 8


def _stall_worker(rank: int, init_file: str, out: str, late: float, armed: bool) -> None:
    """Rank 1 reaches the all-reduce ``late`` seconds after rank 0; each rank's guard bounds the wait to 1 s when
    ``armed``. Writes what each rank saw, then leaves without tearing down a group that may be broken."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    guard = distributed.StallGuard.open(1.0)
    guard.armed = armed
    if rank == 1:
        time.sleep(late)
    try:
        seen = {"mean": distributed.weighted_mean(float(rank), 1.0, guard=guard, what="the test's all-reduce")}
    except distributed.StalledRanks as err:
        seen = {"error": str(err)}
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    os._exit(0)


@pytest.mark.slow
@pytest.mark.parametrize("armed", [False, True])
def test_the_stall_guard_bounds_only_an_armed_wait(tmp_path, armed):
    """Disarmed (the first step, the one after a checkpoint save), a rank 3 s late is waited for; armed with a 1 s
    bound, the waiting rank gives up and names the late one, which in turn finds the first gone."""
    mp.spawn(_stall_worker, args=(str(tmp_path / "init"), str(tmp_path), 3.0, armed), nprocs=2)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    if not armed:
        assert seen == [{"mean": 0.5}, {"mean": 0.5}]
        return
    assert seen[0] == {"error": "rank 0 waited 1 s in the test's all-reduce: rank(s) 1 did not answer (stopped, "
                                "hung or lost)"}
    assert seen[1]["error"].startswith("rank 1 waited 1 s in the test's all-reduce: rank(s) 0 did not answer")


def _watch_worker(rank: int, init_file: str, out: str) -> None:
    """Rank 0 keeps a 1 s watch over a collective that has no bound of its own (a plain all-reduce, as the
    Trainer's gathers); rank 1 reaches it 3 s late. The watchdog must name rank 1 while rank 0 is still blocked."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    guard = distributed.StallGuard.open(1.0)
    guard.armed = True

    def on_stall(err):
        Path(out, f"rank{rank}.json").write_text(json.dumps({"error": str(err)}))
        os._exit(0)

    guard.on_stall = on_stall
    if rank == 1:
        time.sleep(3.0)
    guard.watch("the test's gather")
    try:
        dist.all_reduce(torch.ones(1))
        seen = {"reduced": True}
    except RuntimeError:  # rank 1, late: rank 0 has gone
        seen = {"gone": True}
    guard.unwatch()
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    os._exit(0)


@pytest.mark.slow
def test_a_watch_ends_a_wait_that_has_no_bound_of_its_own(tmp_path):
    mp.spawn(_watch_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[1] == {"gone": True}
    assert seen[0] == {"error": "rank 0 waited 1 s in the test's gather: rank(s) 1 did not answer (stopped, hung or "
                             "lost)"}


def test_the_watch_covers_the_stretch_between_steps_without_a_save_an_evaluation_or_the_end():
    from transformers import TrainerControl, TrainerState
    from mezo_engine.trainer import StallCallback
    guard = distributed.StallGuard(60.0, group=object(), on_stall=lambda err: None)  # never fires: unwatched soon
    callback, state = StallCallback(guard), TrainerState()
    watching = []
    for stop in ("should_save", "should_evaluate", "should_training_stop", None):
        control = TrainerControl()
        if stop:
            setattr(control, stop, True)
        callback.on_step_end(None, state, control)
        watching.append(guard._watch is not None)
        callback.on_step_begin(None, state, control)
        assert guard._watch is None
    assert watching == [False, False, False, True]
    callback.on_step_end(None, state, TrainerControl())
    callback.on_train_end(None, state, TrainerControl())
    assert guard._watch is None


def test_the_stall_guard_is_armed_between_steps_and_not_after_a_save_or_an_evaluation():
    from transformers import TrainerControl, TrainerState
    from mezo_engine.trainer import StallCallback
    guard = distributed.StallGuard(5.0)
    callback, args, state, control = StallCallback(guard), None, TrainerState(), TrainerControl()
    seen = []
    for event in ("on_train_begin", "on_step_end", "on_save", "on_step_end", "on_evaluate", "on_step_end"):
        getattr(callback, event)(args, state, control)
        seen.append(guard.armed)
    assert seen == [False, True, False, True, False, True]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("stopped", [1, 0])
def test_a_stopped_rank_ends_the_job_naming_it_with_the_resumable_exit(tmp_path, tiny_opt_dir, data_dir, stopped):
    """Two gloo ranks of run.py (the environment torchrun gives them); once training logs, one gets SIGSTOP. The
    other must end within its 5 s bound plus the 5 s probe (the 120 s limit only catches a hang), exit 75 and
    name the stopped rank; the test then kills the stopped one."""
    flags = _flags(tiny_opt_dir, data_dir, "SST2", tmp_path, "--trainer", "zo", "--max_steps", "3000",
                   "--per_device_train_batch_size", "4", "--train_as_classification", "--report_to", "none",
                   "--zo_stall_timeout", "5")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    logs = [tmp_path / f"rank{r}.log" for r in (0, 1)]
    procs = [subprocess.Popen([sys.executable, "large_models/run.py", *flags], cwd=REPO, stderr=subprocess.STDOUT,
                              stdout=logs[r].open("w"), env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in (0, 1)]
    try:
        for _ in range(2400):  # the ranks' logs go to files: a full pipe must not stall a rank itself
            if "'loss'" in logs[0].read_text() or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.1)
        os.kill(procs[stopped].pid, signal.SIGSTOP)
        alive = procs[1 - stopped]
        assert alive.wait(timeout=120) == 75, logs[1 - stopped].read_text()[-3000:]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    last = logs[1 - stopped].read_text().strip().splitlines()[-1]
    assert last.startswith(f"run.py: error: rank {1 - stopped} waited 5 s in the ")
    assert f": rank(s) {stopped} did not answer (stopped, hung or lost); ending the job (exit 75)" in last


def test_one_process_needs_no_process_group():
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.weighted_mean(0.25, 3.0) == 0.25 and distributed.gather("x") == ["x"]
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
    assert distributed.unshard([[0, 2, 4], [1, 3]]) == [0, 1, 2, 3, 4]


def test_checksums_see_one_changed_bit():
    a = {"w": torch.zeros(3, 2), "b": torch.ones(2)}
    b = {"w": torch.zeros(3, 2), "b": torch.ones(2)}
    assert distributed.tensors_sha256(a.items()) == distributed.tensors_sha256(b.items())
    b["w"].view(torch.int32)[1, 1] = 1  # the smallest positive float32
    assert distributed.tensors_sha256(a.items()) != distributed.tensors_sha256(b.items())


def test_world_size_is_in_the_run_name_only_beyond_one():
    config = {"task_name": "SST2", "learning_rate": 1e-3}
    assert config_hash({**config, "world_size": 1}, False) == config_hash(config, False)
    assert config_hash({**config, "world_size": 2}, False) != config_hash(config, False)


def _parse(*flags):
    from transformers import HfArgumentParser
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(args=list(flags))
    return args


def test_frozen_boosters_make_ddp_look_for_unused_parameters():
    args = _parse("--trainer", "regular", "--xgblora", "--xgblora_num_layers", "1", "--num_train", "4")
    assert args.ddp_find_unused_parameters is True
    with pytest.raises(ArgumentError, match="--ddp_find_unused_parameters False with --xgblora_num_layers 1"):
        _parse("--trainer", "regular", "--xgblora", "--xgblora_num_layers", "1", "--num_train", "4",
               "--ddp_find_unused_parameters", "False")


@pytest.mark.parametrize("flags, message", [
    (["--trainer", "zo"], "--fsdp with --trainer zo"),
    (["--trainer", "regular", "--lora"], "--fsdp with lora training"),
    (["--trainer", "regular", "--load_best_model_at_end"], "--fsdp with --load_best_model_at_end"),
])
def test_fsdp_refusals_name_the_flag(flags, message):
    with pytest.raises(ArgumentError, match=message):
        _parse("--fsdp", "full_shard auto_wrap", "--num_train", "4", *flags)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_fsdp_without_cuda_is_refused_rather_than_silently_ddp():
    with pytest.raises(ArgumentError, match="--fsdp without CUDA"):
        _parse("--fsdp", "full_shard auto_wrap", "--trainer", "regular", "--num_train", "4")


def test_placement_decisions():
    assert placement(False, 1, 0, cuda=False) == "cpu"
    assert placement(False, 1, 0, cuda=True) == "auto"
    assert placement(True, 1, 0, cuda=True) == "cuda:0"
    assert placement(False, 4, 3, cuda=True) == "cuda:3"
    assert placement(True, 4, 3, cuda=True) == "cuda:3"
    assert placement(False, 4, 3, cuda=True, fsdp=True) == "cpu"


def test_memory_caps_keep_five_gib_free_per_gpu():
    gib = 2**30
    assert memory_caps([80 * gib, 3 * gib], 512 * gib) == {0: 75 * gib, 1: 0, "cpu": 512 * gib}


def test_cpu_blocks_of_a_dispatched_model_keep_real_weights_that_train():
    """The dispatch a CUDA+CPU split uses, with every block on the CPU and accelerate's hooks forced on (NOT a
    split: no second device here). With the CPU as main device the CPU blocks keep real weights (accelerate's
    default for a GPU main device would leave meta tensors and stream copies); LoRA attaches behind the hooks, a
    zo step changes the adapters and a merge writes into the base weights."""
    model = make_model("opt")
    blocks = ["model.decoder.embed_tokens", "model.decoder.embed_positions", "model.decoder.final_layer_norm",
              "model.decoder.layers.0", "model.decoder.layers.1", "lm_head"]
    model = dispatch(model, dict.fromkeys(blocks, "cpu"), force_hooks=True)
    assert hasattr(model.model.decoder.layers[0], "_hf_hook")
    assert all(p.device.type == "cpu" for p in model.parameters())
    model = lora.attach_lora(model, r=2, alpha=4)
    tokenizer, features = _features("Copa", as_classification=False)
    batch, objective = TrainCollator(tokenizer.pad_token_id)(features[:2]), AnswerLoss(False)
    params = lora.trainable_lora_parameters(model)
    before = [p.detach().clone() for p in params]
    base = {n: w.detach().clone() for n, w in lora.base_weights(model).items()}
    with torch.no_grad():
        step = zo.zo_step(params, lambda: objective(model, batch).item(), 1, 1e-2, 1e-1, cache=True)
    assert step.projected_grad != 0 and any(not torch.equal(a, p) for a, p in zip(before, params))
    assert lora.merge_and_reinit(model, generator=torch.Generator().manual_seed(0)).num_modules == 4
    assert any(not torch.equal(base[n], w) for n, w in lora.base_weights(model).items())
