"""A pinned regression (torchtune's style): ZO-XGBLoRA on a tiny OPT built from a fixed seed, six steps through
run.py's entry point, compared number for number with values written below.

It fails when anything changes what these six steps compute: the ZO estimate (eps, the perturbation z, the
seeds), the update, the booster merges (their scale, timing, which modules), the loss, the data order, or the
tiny model and tokenizer of tests/tiny.py. Tested to fail when ``--zo_eps`` is scaled by 1.01 or the merge scale
``--xgblora_merge_scale`` moves from 1.0 to 0.9. A change of torch's random number generator or of
tests/tiny.py fails it too: if such a change is intended, regenerate the numbers (run ``_pinned_run`` once and
print the three lists with ``repr``) and say why in the commit.

The tolerances, derived from the error of what is compared
----------------------------------------------------------
The run is in float64 (``--load_float64``: weights, scores and merges in float64), so a machine that sums in
another order (another BLAS kernel, SIMD width, thread split, libm) changes the numbers only at float64 rounding
level (OPT's path has no float32 cast: sdpa attention and LayerNorm compute in the model's dtype; the run is
kept on the CPU, since a GPU draws z from its own generator). Unit roundoff u = 2**-53 = 1.1e-16. A loss is a
chain of dot products and a log-softmax whose longest accumulation (the 279 logits, 64 ffn units, batch and
sequence) is well under n = 10**3 terms, so two machines' losses differ by at most
dL = n u |L| = 1e3 x 1.1e-16 x 0.71 = 7.8e-14 (a worst case: random-sign rounding
gives sqrt(n) u).

* Projected gradient g = (L+ - L-) / (2 eps): |dg| <= 2 dL / (2 eps) = 7.8e-14 / 1e-2 = 7.8e-12 per step. This
  error is absolute: a g near 0 (step 6 below, 8e-5) has no relative precision, so g is compared with atol.
  Later steps inherit earlier errors through the weights; measured: perturbing every weight of the model by a
  random relative 1e-13 (about n u) moved the six |g| by at most 3.6e-13 and the two merge norms by at most
  2.5e-13 relative (1e-10 moved them by 3.3e-10 and 2.3e-10: an amplification of about 3, not growing).
  atol = 1e-9 is over 100x the first-step bound and over 2000x the measured effect.
* Merge norm |eta s B A|: B and A are sums of 3 steps of lr g z, so its relative error is about
  3 |dg| / mean|g| = 3 x 7.8e-12 / 0.14 = 1.7e-10 for the first merge (mean |g| 0.14) and 4.5e-11 for the second
  (0.52), plus the inherited error measured above (~1e-13). rtol = 1e-9 is 5x the worst case, 4000x the measured.
* Logged loss: the Trainer accumulates the logged loss in a float32 tensor, so each value is the float64 loss
  rounded once to float32 (logging_steps 1). Two machines' float64 losses (8e-14 apart) round to the same float32
  or, if a rounding boundary lies between them, to adjacent ones: one float32 ulp, at most 2**-23 = 1.19e-7
  relative. rtol = 2**-23, atol = 0: exactly that one ulp and nothing more.

What the tolerances must still catch (measured): eps x 1.01 moves g at step 1 by 1.2e-5 (12000 x atol), the
merge norms by 1.9e-4 and 4.9e-4 relative (190000 x rtol) and the first loss by 1.5e-5 relative (125 ulps);
merge scale 0.9 moves the merge norms by 10% and the loss after the first merge (step 4) by 1.5e-5 relative.
Thread count does not matter (the test passes with OMP_NUM_THREADS=1 and 2). It takes about 1 s on one core.
"""
import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from large_models import run
from tests.task_fixtures import write_sst2
from tests.tiny import make_model, make_tokenizer

SEED = 1234  # the tiny model's initialisation
EPS = "1e-2"
MERGE_SCALE = "1.0"

# Regenerate only for an intended change (see the module docstring).
LOSSES = [0.6826522350311279, 0.7112505435943604, 0.7042815685272217, 0.6899868845939636, 0.6959726214408875,
          0.7035473585128784]
PROJECTED_GRAD_ABS = [0.14398256688081257, 0.1658768535202637, 0.1406636262768879, 0.36963656609698137,
                      1.1786171746282215, 8.242788402945678e-05]
MERGE_STEPS = [3, 6]
MERGE_DELTA_NORMS = [0.05183696071104054, 0.28885214601917514]

LOSS_RTOL = 2.0 ** -23  # one float32 ulp: the logged loss is the float64 loss rounded to float32
GRAD_ATOL = 1e-9  # |g| error <= 7.8e-12 per step (float64 rounding x 1/eps)
MERGE_RTOL = 1e-9  # merge norm relative error <= 1.7e-10


def _tiny_opt(path: Path) -> Path:
    """The tiny OPT of tests/tiny.py from ``SEED``, with the tokenizer that has real BPE merges."""
    make_model("opt", seed=SEED).save_pretrained(path)
    make_tokenizer(merges=True).save_pretrained(path)
    return path


def _pinned_run(tmp_path: Path, zo_eps: str = EPS, merge_scale: str = MERGE_SCALE) -> dict:
    """Six ZO-XGBLoRA steps (a booster merged every 3) in float64, through run.py's main; the result JSON."""
    model = _tiny_opt(tmp_path / "model")
    (tmp_path / "data").mkdir()
    data = write_sst2(tmp_path / "data")
    out = tmp_path / "result.json"
    run.main(["--model_name", str(model), "--task_name", "SST2", "--data_dir", str(data),
              "--result_file", str(out), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True",
              "--use_cpu", "True", "--trainer", "zo", "--train_as_classification", "--load_float64",
              "--xgblora", "--xgblora_steps_per_iteration", "3", "--xgblora_merge_scale", merge_scale,
              "--zo_eps", zo_eps, "--learning_rate", "2e-3", "--lr_scheduler_type", "constant",
              "--num_train", "8", "--num_dev", "0", "--train_set_seed", "0", "--per_device_train_batch_size", "4",
              "--max_steps", "6", "--logging_steps", "1", "--no_eval", "--save_strategy", "no"])
    return json.loads(out.read_text())


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
def test_zo_xgblora_six_steps_match_the_pinned_numbers(tmp_path, monkeypatch):
    """Fails when the losses, the projected gradients or the merge norms of these six steps move beyond float64
    rounding (see the module docstring): a change of eps, of the merge scale, of the ZO step or of the model."""
    # On the CPU on every machine: a GPU would draw z from its own generator, other numbers altogether.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = _pinned_run(tmp_path)
    logs = [h for h in result["train"]["log_history"] if "loss" in h]
    merges = result["train"]["boosting"]["merges"]
    assert [h["step"] for h in logs] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in merges] == MERGE_STEPS
    f64 = dict(dtype=torch.float64)
    checks = [
        ("merge delta_norm", [m["delta_norm"] for m in merges], MERGE_DELTA_NORMS, dict(rtol=MERGE_RTOL, atol=0.0)),
        ("|projected gradient|", [h["projected_grad_abs_mean"] for h in logs], PROJECTED_GRAD_ABS,
         dict(rtol=0.0, atol=GRAD_ATOL)),
        ("logged loss", [h["loss"] for h in logs], LOSSES, dict(rtol=LOSS_RTOL, atol=0.0)),
    ]
    failures = []
    for name, actual, expected, tol in checks:  # all three reported, not only the first that fails
        try:
            assert_close(torch.tensor(actual, **f64), torch.tensor(expected, **f64), **tol,
                         msg=lambda m, name=name: f"{name}: {m}")
        except AssertionError as err:
            failures.append(str(err))
    if failures:
        raise AssertionError("\n\n".join(failures))
