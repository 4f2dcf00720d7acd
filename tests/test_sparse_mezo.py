"""Sparse MeZO (zo_methods/sparse_mezo.py) against the maths, in float64: the threshold keeps the smallest
magnitudes, the mean estimate is the masked autograd gradient, no weight outside the mask is ever written (in place
and with the cache), the mask holds through the perturbation, sparsity 0 is MeZO bit for bit, and run.py trains
with it (full-parameter) or refuses it by name (LoRA)."""
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from mezo_engine import zo
from mezo_engine.zo_methods.sgd import ZOSGD
from mezo_engine.zo_methods.sparse_mezo import SparseMeZO, magnitude_threshold
from tests.task_fixtures import run_zo_sst2
from tests.tiny import make_model


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.75, 0.9])
def test_the_threshold_keeps_the_smallest_magnitudes(sparsity):
    w = torch.randn(7, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = w.abs() <= magnitude_threshold(w, sparsity)
    assert int(mask.sum()) == math.ceil((1 - sparsity) * w.numel())
    assert w.abs()[mask].max() < w.abs()[~mask].min() if sparsity else mask.all()


# ---- the estimate on a quadratic against autograd ---------------------------------------------------------------
def test_the_mean_estimate_is_the_gradient_on_the_mask():
    """E[g m z] = m * grad f (m the mask, E[z z^T] = I): 10,000 estimates within 5 standard errors of autograd's
    gradient on the mask, exactly 0 off it. The size is checked to tell grad from 2 grad and grad / 2."""
    gen = torch.Generator().manual_seed(3)
    theta = (torch.linspace(0.1, 1.2, 12, dtype=torch.float64) * torch.randn(12, generator=gen, dtype=torch.float64))
    theta.requires_grad_(True)
    q = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    a, b = q @ q.T / 12 + torch.eye(12, dtype=torch.float64), torch.randn(12, generator=gen, dtype=torch.float64)

    def f(t):
        return 0.5 * t @ a @ t + b @ t

    grad = torch.autograd.grad(f(theta), theta)[0]
    mask = theta.detach().abs() <= theta.detach().abs().sort().values[5]  # sparsity 0.5: the 6 smallest
    opt = SparseMeZO([theta], lr=0.0, sparsity=0.5)
    rows = []
    for seed in range(10_000):
        _, [(_, g)] = opt.zo_step(lambda: float(f(theta.detach())), [seed], 1e-3, cache=True)
        rows.append(g * zo.draw_z([theta], seed)[0] * mask)
    rows = torch.stack(rows)
    mean, se = rows.mean(0)[mask], rows.std(0)[mask] / math.sqrt(len(rows))
    assert (5 * se < grad[mask].abs() / 2).all()  # the tolerance can tell grad from 2 grad and grad / 2
    assert ((mean - grad[mask]).abs() < 5 * se).all(), (mean, grad[mask], se)
    assert (rows[:, ~mask] == 0).all()


# ---- a tiny float64 language model -------------------------------------------------------------------------------
def _model_and_loss():
    model = make_model("opt", seed=2, dtype=torch.float64)
    ids = torch.randint(3, 200, (4, 10), generator=torch.Generator().manual_seed(5))

    def loss_fn() -> float:
        with torch.no_grad():
            return model(input_ids=ids, labels=ids).loss.item()
    return model, loss_fn


@pytest.mark.parametrize("cache", [False, True])
def test_a_weight_outside_the_mask_is_never_written(cache):
    """Ten 2-direction steps with weight decay: every entry with |w| above its tensor's threshold at the start is
    bit-identical at the end, and every entry inside the mask at the start has moved."""
    model, loss_fn = _model_and_loss()
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    opt = SparseMeZO([{"params": params, "weight_decay": 0.1}], lr=1e-2, sparsity=0.75)
    for step in range(10):
        opt.zo_step(loss_fn, zo.sample_seeds(0, step, 2), 1e-3, cache)
    outside_entries = 0
    for p, p0 in zip(params, start):
        inside = p0.abs() <= opt.state[p]["threshold"]
        assert torch.equal(p.detach()[~inside], p0[~inside])
        assert (p.detach()[inside] != p0[inside]).all()
        outside_entries += int((~inside).sum())
    assert outside_entries > 0.7 * sum(p.numel() for p in params)  # most weights lie outside at sparsity 0.75


def test_the_mask_holds_through_the_perturbation():
    """In place, lr = 0, eps as large as the weights: many entries of the mask sit within eps |z| of the threshold,
    so a mask recomputed from the perturbed weights would change between +eps, -2 eps and the restore and leave
    them eps z away; the step's one mask restores every weight to a few float64 ulps (1e-12)."""
    model, loss_fn = _model_and_loss()
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    opt, eps, seed = SparseMeZO(params, lr=0.0, sparsity=0.5), 0.02, 9
    opt.zo_step(loss_fn, [seed], eps, cache=False)
    z = zo.draw_z(start, seed)
    crossing = sum(int(((p0.abs() <= opt.state[p]["threshold"]) & ((p0 + eps * zi).abs() > opt.state[p]["threshold"]))
                       .sum()) for p, p0, zi in zip(params, start, z))
    assert crossing > 100
    assert max((p.detach() - p0).abs().max().item() for p, p0 in zip(params, start)) < 1e-12


def test_sparsity_zero_is_mezo_bit_for_bit():
    """With every entry in the mask, the steps are ZO-SGD's (estimate, then ZOSGD.step) on the same seeds."""
    model, loss_fn = _model_and_loss()
    twin, twin_loss = _model_and_loss()
    sparse = SparseMeZO(list(model.parameters()), lr=1e-2, sparsity=0.0)
    sgd = ZOSGD(list(twin.parameters()), lr=1e-2)
    for step in range(3):
        seeds = zo.sample_seeds(1, step, 2)
        sparse.zo_step(loss_fn, seeds, 1e-3, cache=False)
        sgd.add_estimate(zo.estimate(sgd.zo_params(), twin_loss, seeds, 1e-3))
        sgd.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert not torch.equal(next(model.parameters()), next(make_model("opt", seed=2, dtype=torch.float64).parameters()))


# ---- through run.py ----------------------------------------------------------------------------------------------
def test_sparse_mezo_trains_through_run_py(tmp_path, tiny_opt_dir, sst2_dir):
    """Full-parameter, two steps: its only state is one float32 threshold per trainable tensor."""
    result = run_zo_sst2(tmp_path, tiny_opt_dir, sst2_dir, "--zo_optimizer", "sparse_mezo", "--learning_rate",
                         "1e-3", "--sparse_mezo_sparsity", "0.8")
    train = result["train"]
    tensors = sum(1 for p in AutoModelForCausalLM.from_pretrained(tiny_opt_dir).parameters() if p.requires_grad)
    assert result["config"]["zo_optimizer"] == "sparse_mezo" and train["global_step"] == 2
    assert train["optimizer_state_bytes"] == 4 * tensors


def test_sparse_mezo_with_lora_is_refused_by_name(tmp_path, tiny_opt_dir, sst2_dir, capsys):
    with pytest.raises(SystemExit):
        run_zo_sst2(tmp_path, tiny_opt_dir, sst2_dir, "--zo_optimizer", "sparse_mezo", "--lora")
    assert "--zo_optimizer sparse_mezo with lora training: full-parameter or head" in capsys.readouterr().err
    assert not (tmp_path / "result.json").exists()

