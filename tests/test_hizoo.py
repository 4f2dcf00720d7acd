"""HiZOO (zo_methods/hizoo.py) against the maths, in float64: the diagonal Hessian estimate's mean over many draws on
a separable quadratic, one whole step against autograd, its three forwards, the reset at an XGBLoRA merge, and
runs through run.py with full-parameter and LoRA training."""
import math

import pytest
import torch

from mezo_engine import zo
from mezo_engine.methods.xgblora import reset_optimizer_state
from mezo_engine.zo_methods.hizoo import STATE, HiZOO, Preconditioned, curvature, hessian_sample
from tests.task_fixtures import run_zo_sst2

# ---- a separable quadratic: f(theta) = 1/2 sum_i h_i (theta_i - c_i)^2, Hessian diag(h) ----------------------------
H = torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64)
C = torch.tensor([0.3, -0.2, 0.7, 0.1], dtype=torch.float64)
D = torch.tensor([0.5, 1.5, 0.25, 1.0], dtype=torch.float64)  # a current estimate unlike H: Sigma = D^-1 != I


def separable(theta: torch.Tensor) -> float:
    return float(0.5 * (H * (theta - C) ** 2).sum())


def _samples(form: str, draws: int, eps: float = 1e-2) -> torch.Tensor:
    """``draws`` Hessian samples, each from the three losses at theta and theta +- eps z / sqrt(D)."""
    theta, gen = torch.tensor([0.2, 0.4, -0.1, 0.6], dtype=torch.float64), torch.Generator().manual_seed(11)
    rows = []
    for _ in range(draws):
        z = torch.randn(4, generator=gen, dtype=torch.float64)
        v = z / D.sqrt()
        c = curvature(separable(theta), separable(theta + eps * v), separable(theta - eps * v), eps)
        rows.append(hessian_sample(c, z, D, form))
    return torch.stack(rows)


def test_the_hessian_estimate_averages_to_the_true_diagonal():
    """Mean of 20,000 draws within 5 standard errors of diag(H); the test's size makes a factor-2 error (a missing
    1/2 in c, D^2 or D^0 in place of D) miss by at least H/2, which is more than 5 standard errors here."""
    samples = _samples("unbiased", 20_000)
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(len(samples))
    assert (5 * se < H / 2).all(), se  # the tolerance can tell H from 2H and H/2
    assert ((mean - H).abs() < 5 * se).all(), (mean, H, se)


def test_the_released_codes_estimate_averages_to_the_biased_diagonal():
    """|c| D z^2 (the authors' code) has mean H_ii + D_i / 2 * sum_j H_jj / D_j: for this quadratic c > 0, so the
    |.| changes nothing and the mean is exact maths; it lies far from H."""
    samples = _samples("released_code", 20_000)
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(len(samples))
    want = H + D / 2 * (H / D).sum()
    assert ((mean - want).abs() < 5 * se).all(), (mean, want, se)
    assert ((mean - H).abs() > 20 * se).all()


# ---- one step against autograd -----------------------------------------------------------------------------------
A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 3.0]], dtype=torch.float64)  # SPD, not diagonal
B = torch.tensor([0.4, -1.0, 0.2], dtype=torch.float64)


def quadratic(theta: torch.Tensor) -> torch.Tensor:
    return 0.5 * theta @ A @ theta + B @ theta


@pytest.mark.parametrize("cache", [False, True])
def test_one_step_follows_the_papers_update(cache):
    """L0, L+- along Sigma^1/2 z, the Hessian EMA and the step along the updated Sigma^1/2 z, against autograd's
    gradient and the quadratic's exact curvature 1/2 v^T A v. Tolerance: the estimate's finite differences over
    eps = 1e-2 in float64 carry rounding of about 2^-52 * |f| / eps^2 ~ 1e-12 relative, so 1e-9."""
    theta = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64, requires_grad=True)
    lr, alpha, wd, eps, seed, d0 = 0.1, 0.3, 0.05, 1e-2, 42, torch.tensor([2.0, 0.5, 1.25], dtype=torch.float64)
    opt = HiZOO([{"params": [theta], "weight_decay": wd}], lr=lr, smooth=alpha)
    opt.state[theta][STATE] = d0 - 1
    start = theta.detach().clone()
    grad = torch.autograd.grad(quadratic(theta), theta)[0]
    loss, pairs = opt.zo_step(lambda: float(quadratic(theta.detach())), [seed], eps, cache)

    z = zo.draw_z([start], seed)[0]
    v = z / d0.sqrt()
    g, c = float(grad @ v), float(0.5 * v @ A @ v)
    d1 = (1 - alpha) * d0 + alpha * (c * d0 * (z**2 - 1)).abs()
    want = start * (1 - lr * wd) - lr * g * z / d1.sqrt()
    assert loss == float(quadratic(start))  # the reported loss is L0
    assert pairs[0][0] == seed and pairs[0][1] == pytest.approx(g, rel=1e-9)
    assert torch.allclose(opt.state[theta][STATE] + 1, d1, rtol=1e-9, atol=0)
    assert torch.allclose(theta.detach(), want, rtol=1e-9, atol=1e-15)
    # not the step along the old Sigma^1/2 z, nor along z: the update is preconditioned by the new D
    assert not torch.allclose(theta.detach(), start * (1 - lr * wd) - lr * g * v, rtol=1e-6)


def test_a_step_costs_three_forwards_and_nothing_is_left_for_step():
    theta = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64, requires_grad=True)
    opt, calls = HiZOO([theta], lr=0.1), []

    def loss_fn():
        calls.append(1)
        return float(quadratic(theta.detach()))

    opt.zo_step(loss_fn, [7], 1e-2, cache=False)
    after = theta.detach().clone()
    opt.step()  # the Trainer's optimizer.step(): nothing pending
    assert len(calls) == 3 == opt.forwards_per_step(1)
    assert torch.equal(theta.detach(), after)
    with pytest.raises(ValueError, match="one direction"):
        opt.zo_step(loss_fn, [7, 8], 1e-2, cache=False)
    with pytest.raises(TypeError, match="zo_step"):
        opt.add_estimate([(7, 1.0)])


def test_a_merge_reset_puts_sigma_back_to_the_identity():
    """XGBLoRA zeroes the optimizer state at a merge: the stored D - 1 becomes 0, so the next direction is z."""
    theta = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64, requires_grad=True)
    opt = HiZOO([theta], lr=0.1, smooth=0.9)
    for seed in (1, 2, 3):
        opt.zo_step(lambda: float(quadratic(theta.detach())), [seed], 1e-2, cache=True)
    assert not torch.equal(opt.state[theta][STATE], torch.zeros(3, dtype=torch.float64))
    reset_optimizer_state(opt, [theta])
    sampler = Preconditioned([theta], [opt.state[theta][STATE]])
    assert torch.equal(sampler.next_z(theta, zo.generators([theta], 5)), zo.draw_z([theta], 5)[0])


# ---- through run.py ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [[], ["--lora", "--lora_r", "2"]], ids=["full", "lora"])
def test_hizoo_trains_through_run_py_and_reports_its_hessian_memory(tmp_path, tiny_opt_dir, sst2_dir, mode):
    """Two steps; the Hessian state is one float32 number per trainable parameter (the tiny model is float32)."""
    result = run_zo_sst2(tmp_path, tiny_opt_dir, sst2_dir, "--zo_optimizer", "hizoo", "--learning_rate", "1e-3",
                         "--hizoo_smooth", "0.5", *mode)
    train = result["train"]
    assert result["config"]["zo_optimizer"] == "hizoo" and train["global_step"] == 2
    assert train["optimizer_state_bytes"] == 4 * train["trainable_parameters"] > 0
    assert all(math.isfinite(h["loss"]) for h in train["log_history"] if "loss" in h)


def test_a_checkpoint_keeps_the_float32_hessian_of_a_bf16_parameter():
    """torch's load_state_dict casts floating state to the parameter's dtype; D - 1 comes back in float32."""
    theta = torch.tensor([0.3, -0.5, 0.8], dtype=torch.bfloat16, requires_grad=True)
    opt = HiZOO([theta], lr=0.1, smooth=0.5)
    for seed in (1, 2):
        opt.zo_step(lambda: float(quadratic(theta.detach().double())), [seed], 1e-1, cache=True)
    saved = opt.state[theta][STATE]
    fresh = HiZOO([theta], lr=0.1, smooth=0.5)
    fresh.load_state_dict(opt.state_dict())
    assert saved.dtype == torch.float32 and torch.equal(fresh.state[theta][STATE], saved)
    assert not torch.equal(saved, saved.bfloat16().float())  # bf16 would have rounded it
