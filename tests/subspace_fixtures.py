"""What the low-rank ZO methods' tests share (tests/test_lozo.py, tests/test_subzero.py): two float64 problems with
their autograd gradients, and the mean of many single-direction estimates with a tolerance from their spread.

* ``quadratic()``: two matrices and a vector under a weighted least-squares loss, whose two-point difference is
  the directional derivative exactly (a quadratic has no third derivative), so only the sampling is random;
* ``tiny_lora()``: a one-block float64 OPT with a live LoRA r=2 adapter on one projection (the other adapters
  frozen), its next-token loss computed in float64 (tests/test_zo_autograd.py's helpers).
"""
from __future__ import annotations

import json
import math

import torch
from transformers import AutoModelForCausalLM

from large_models import run
from mezo_engine import lora, zo
from tests.test_zo_autograd import _batch, _live_adapters, _lm_loss, _model

SHAPES = [(6, 5), (4, 7), (5,)]


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def quadratic(seed: int = 0):
    """``params`` (6x5, 4x7, 5; float64) drawn from ``seed``, and ``quadratic_at(params, seed)``."""
    gen = torch.Generator().manual_seed(seed)
    params = [leaf(torch.randn(s, generator=gen, dtype=torch.float64)) for s in SHAPES]
    return (params, *quadratic_at(params, seed))


def quadratic_at(params, seed: int = 0):
    """``loss_fn() -> float`` and ``gradient() -> [tensor]`` at the current values of ``params`` of
    L = sum_k 1/2 sum w_k (theta_k - t_k)^2 (targets and weights drawn from ``seed``: the same function for
    copies of the parameters)."""
    gen = torch.Generator().manual_seed(seed + 1)
    targets = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    weights = [0.5 + torch.rand(s, generator=gen, dtype=torch.float64) for s in SHAPES]

    def value() -> torch.Tensor:
        return sum(0.5 * (w * (p - t) ** 2).sum() for p, t, w in zip(params, targets, weights))
    return _no_grad(value), _autograd(value, params)


def tiny_lora():
    """``params`` (the live adapter's A 2x32 and B 32x2), ``loss_fn`` and ``gradient`` of a float64 tiny OPT."""
    model = _live_adapters(_model("opt", layers=1), 2, seed=1)
    (_, layer), *_ = lora.lora_layers(model)
    params = [layer.lora_A["default"].weight, layer.lora_B["default"].weight]
    keep = {id(p) for p in params}
    for p in lora.trainable_lora_parameters(model):
        p.requires_grad_(id(p) in keep)
    batch = _batch(model.config.vocab_size)
    return params, _no_grad(lambda: _lm_loss(model, batch)), _autograd(lambda: _lm_loss(model, batch), params)


def _no_grad(value):
    def loss_fn() -> float:
        with torch.no_grad():
            return value().item()
    return loss_fn


def _autograd(value, params):
    return lambda: list(torch.autograd.grad(value(), params))


def mean_and_single_updates(opt, loss_fn, seeds, eps: float):
    """One ``zo_step`` over ``seeds`` from the current point, applied by ``step()`` with the optimizer's lr (n-SPSA:
    the mean of the directions' estimates), then each direction's estimate applied alone from the same point.
    Returns the updates (start - after) as flat vectors: the mean one and the single ones (a K x d tensor); the
    parameters end where they started."""
    params = opt.zo_params()
    start = [p.detach().clone() for p in params]
    _, pairs = opt.zo_step(loss_fn, seeds, eps, True)
    mean = _moved(opt, params, start)
    singles = []
    for pair in pairs:
        opt.add_estimate([pair])
        singles.append(_moved(opt, params, start))
    return mean, torch.stack(singles)


@torch.no_grad()
def _moved(opt, params, start) -> torch.Tensor:
    opt.step()
    moved = torch.cat([(s - p).flatten() for s, p in zip(start, params)])
    for p, s in zip(params, start):
        p.copy_(s)
    return moved


def run_steps(opt, loss_fn, steps, directions: int = 1) -> None:
    """Whole steps (``zo_step`` then ``step()``) with the seeds of run seed 4 at each of ``steps``."""
    for step in steps:
        opt.zo_step(loss_fn, zo.sample_seeds(4, step, directions), 1e-3, True)
        opt.step()


def first_matrix_updates(opt, params, loss_fn, steps: int) -> list[torch.Tensor]:
    """The change of ``params[0]`` in each of ``steps`` whole steps."""
    deltas = []
    for step in range(steps):
        before = params[0].detach().clone()
        run_steps(opt, loss_fn, [step])
        deltas.append(params[0].detach() - before)
    return deltas


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def assert_mean_is(mean: torch.Tensor, singles: torch.Tensor, expected: torch.Tensor) -> None:
    """The n-SPSA update is the mean of the single ones, and that mean is ``expected`` within 4 standard errors.

    The standard error is the root of E ||mean - expected||^2 = trace(Cov) / K, the covariance estimated from the
    K single updates; by Markov's inequality a deviation beyond 4 of them has probability below 1/16 (far below
    for a sum over many entries, which concentrates). The test has power: 4 standard errors stay under half of
    |expected|, so an estimate off by a factor 2 (or 1/2), whose mean moves by |expected| (or half of it), fails.
    """
    k = singles.shape[0]
    # the same sum in another order: float64 rounding of K terms of the updates' size
    torch.testing.assert_close(mean, singles.mean(0), rtol=1e-9, atol=1e-12 * singles.abs().max().item())
    standard_error = math.sqrt(singles.var(0).sum().item() / k)
    size = expected.norm().item()
    assert 4 * standard_error < 0.5 * size, (standard_error, size)  # the test could see a factor 2
    assert (mean - expected).norm().item() < 4 * standard_error, ((mean - expected).norm().item(), standard_error)


def assert_mean_estimate(problem, make_optimizer, projected, directions: int, eps: float) -> None:
    """On ``problem()`` (params, loss_fn, gradient), the mean of ``directions`` single-direction estimates of
    ``make_optimizer(params)`` is ``projected(opt, params, gradient)``, within ``assert_mean_is``'s tolerance."""
    params, loss_fn, gradient = problem()
    opt = make_optimizer(params)
    mean, singles = mean_and_single_updates(opt, loss_fn, list(range(directions)), eps)
    assert_mean_is(mean, singles, projected(opt, params, gradient()))


def train_tiny(tmp_path, model_dir, data_dir, *flags) -> dict:
    """Three zo steps of run.py on the tiny OPT with ``flags``, the model saved to ``out/model``; the result,
    checked for three finite logged losses and two forwards a step in its ledger (as MeZO's)."""
    out = tmp_path / "result.json"
    run.main(["--model_name", str(model_dir), "--task_name", "SST2", "--data_dir", str(data_dir),
              "--result_file", str(out), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True",
              "--num_train", "8", "--train_set_seed", "0", "--num_eval", "4", "--max_steps", "3",
              "--per_device_train_batch_size", "4", "--train_as_classification", "--trainer", "zo",
              "--learning_rate", "1e-2", "--logging_steps", "1", "--save_model", "--report_to", "none", *flags])
    result = json.loads(out.read_text())
    losses = [h["loss"] for h in result["train"]["log_history"] if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert result["ledger"]["forwards"] == 3 * 2
    return result


def assert_trained_tensors(model_dir, tmp_path, adapters: bool) -> None:
    """After ``train_tiny``: full-parameter training moved every tensor; merged adapters only the adapted q and v
    projections."""
    before = dict(AutoModelForCausalLM.from_pretrained(model_dir).named_parameters())
    after = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model").named_parameters())
    moved = {n for n, p in before.items() if not torch.equal(p, after[n])}
    if adapters:
        assert moved and all(".q_proj." in n or ".v_proj." in n for n in moved), moved
    else:
        assert moved == set(before)
