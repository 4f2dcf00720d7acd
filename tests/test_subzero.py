"""SubZero (zo_methods/subzero.py) against the maths, in float64: directions lie in the matrix's orthonormal
subspace, the mean of many estimates is autograd's gradient projected on it, (m n / r^2) U U^T G V V^T, and that
projection averages to G over subspaces; the subspace is kept for its interval; the fused one-direction step is the
optimizer path; state round-trips; adapters are viewed nearly square; training runs through run.py."""
import io

import pytest
import torch
from transformers import HfArgumentParser

from large_models.arguments import ArgumentError, Arguments, parse_args
from mezo_engine import zo
from mezo_engine.methods.xgblora import reset_optimizer_state
from mezo_engine.zo_methods import subspace
from mezo_engine.zo_methods.subzero import SubZero
from tests.subspace_fixtures import (assert_mean_estimate, assert_mean_is, assert_trained_tensors,
                                     first_matrix_updates, flat, leaf, quadratic, quadratic_at, run_steps, tiny_lora,
                                     train_tiny)


def _projected(opt, params, grads):
    """E[g_hat] given U, V: (a b / r^2) U U^T G V V^T in each matrix's a x b view, the gradient elsewhere."""
    out = []
    for p, g in zip(params, grads):
        if p.dim() != 2:
            out.append(g)
            continue
        (a, b), (u, v) = opt.view_shape(p), opt.bases(p)
        out.append(a * b / u.shape[1] ** 2 * u @ u.T @ g.reshape(a, b) @ v @ v.T)
    return flat(out)


def test_mean_estimate_is_the_gradient_projected_on_the_subspace():
    assert_mean_estimate(quadratic, lambda params: SubZero(params, lr=1.0, rank=2, interval=5), _projected,
                         directions=2000, eps=1e-3)


@pytest.mark.slow
def test_mean_estimate_on_a_tiny_model_is_the_gradient_projected_on_the_subspace():
    """LoRA factors viewed nearly square (A 2x32 as 8x8), rank 3."""
    assert_mean_estimate(tiny_lora, lambda params: SubZero(params, lr=1.0, rank=3, interval=5, reshape=True),
                         _projected, directions=1500, eps=1e-5)


def test_over_subspaces_the_projection_averages_to_the_gradient():
    """The scale sqrt(m n) / r makes the estimate unbiased: E over orthonormal U, V of (m n / r^2) U U^T G V V^T
    is G (E[U U^T] = (r / m) I for the span of a Gaussian matrix)."""
    g = torch.randn((6, 5), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    samples = []
    for seed in range(3000):
        u, v = subspace.orthonormal_pair(6, 5, 2, seed, g)
        samples.append((30 / 4 * u @ u.T @ g @ v @ v.T).flatten())
    singles = torch.stack(samples)
    assert_mean_is(singles.mean(0), singles, g.flatten())


def test_directions_lie_in_the_subspace_and_have_its_rank():
    params, _, _ = quadratic()
    opt = SubZero(params, lr=0.1, rank=2, interval=5)
    opt.begin_step(9)
    for p, z in zip(params, zo.draw_z(params, 4, opt.sampler)):
        if p.dim() != 2:
            continue
        u, v = opt.bases(p)
        torch.testing.assert_close(u.T @ u, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-14)
        torch.testing.assert_close(v.T @ v, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-14)
        assert (z - u @ u.T @ z).abs().max() < 1e-13 and (z - z @ v @ v.T).abs().max() < 1e-13
        assert torch.linalg.matrix_rank(z).item() == 2


def test_adapters_are_viewed_nearly_square():
    """A 4 x 36 factor: rank 3 in its own shape, and with ``reshape`` rank 3 as the 12 x 12 matrix it is viewed as
    (so as a 4 x 36 matrix its rank is no longer bounded by 3)."""
    assert subspace.near_square(144) == (12, 12) and subspace.near_square(30) == (5, 6)
    assert subspace.near_square(13) == (1, 13)
    for reshape, view, rank_as_is in ((False, (4, 36), 3), (True, (12, 12), 4)):
        p = leaf(torch.randn((4, 36), dtype=torch.float64))
        opt = SubZero([p], lr=0.1, rank=3, reshape=reshape)
        opt.begin_step(1)
        [z] = zo.draw_z([p], 2, opt.sampler)
        assert opt.view_shape(p) == view and torch.linalg.matrix_rank(z.reshape(view)).item() == 3
        assert torch.linalg.matrix_rank(z).item() == rank_as_is


def test_reshape_follows_the_mode():
    groups = [{"params": [leaf(torch.zeros(2, 3))]}]
    flags = ["--trainer", "zo", "--num_train", "4", "--zo_optimizer", "subzero"]
    assert not SubZero.from_args(parse_args(flags), groups).reshape
    for mode in (["--lora"], ["--xgblora"]):
        assert SubZero.from_args(parse_args([*flags, *mode]), groups).reshape


def test_subspace_is_kept_for_interval_steps_then_redrawn():
    """Within an interval every update of a matrix has the same column and row spaces (U's and V's), the first
    update after it does not."""
    params, loss_fn, _ = quadratic()
    deltas = first_matrix_updates(SubZero(params, lr=0.1, rank=2, interval=3), params, loss_fn, 4)
    u, _, vh = torch.linalg.svd(deltas[0])
    cols, rows = u[:, :2] @ u[:, :2].T, vh[:2].T @ vh[:2]
    residual = [((d - cols @ d).norm() + (d - d @ rows).norm()).item() / d.norm().item() for d in deltas]
    assert max(residual[:3]) < 1e-12 < 0.1 < residual[3], residual


@pytest.mark.parametrize("cache", [False, True])
def test_fused_step_equals_the_optimizer_path(cache):
    """One direction takes ZO-SGD's fused step, several the estimate then ``step()``: with one seed both give the
    same parameters (z drawn by the same sampler, in the same order)."""
    (a, loss_a, _), (b, loss_b, _) = quadratic(), quadratic()
    fused, plain = SubZero(a, lr=0.1, rank=2, weight_decay=0.2), SubZero(b, lr=0.1, rank=2, weight_decay=0.2)
    for step in range(2):
        [seed] = zo.sample_seeds(1, step, 1)
        fused.zo_step(loss_a, [seed], 1e-3, cache)
        plain.begin_step(seed)
        plain.add_estimate(zo.estimate(plain.zo_params(), loss_b, [seed], 1e-3, cache, plain.sampler))
        plain.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0 if cache else 1e-14)  # no cache: a few ulps of restore


def test_state_dict_round_trip_continues_identically():
    params, loss_fn, _ = quadratic()
    opt = SubZero(params, lr=0.05, rank=2, interval=2)
    run_steps(opt, loss_fn, range(3), directions=2)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    copies = {name: [leaf(p) for p in params] for name in ("loaded", "cold")}
    loaded = SubZero(copies["loaded"], lr=0.05, rank=2, interval=2)
    loaded.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    cold = SubZero(copies["cold"], lr=0.05, rank=2, interval=2)
    for o, ps in ((opt, params), (loaded, copies["loaded"]), (cold, copies["cold"])):
        run_steps(o, quadratic_at(ps)[0], range(3, 6), directions=2)
    assert all(torch.equal(a, b) for a, b in zip(params, copies["loaded"]))
    assert not torch.equal(params[0], copies["cold"][0])


def test_after_a_reset_the_next_step_draws_a_new_subspace():
    params, loss_fn, _ = quadratic()
    opt = SubZero(params, lr=0.05, rank=2, interval=10)
    run_steps(opt, loss_fn, range(2))
    kept = opt.state[params[0]]["subspace_seed"]
    reset_optimizer_state(opt, params)
    run_steps(opt, loss_fn, [2])
    assert int(opt.state[params[0]]["step"]) == 1 and opt.state[params[0]]["subspace_seed"] != kept


def test_flags_default_to_the_papers_values_and_bad_ones_are_named():
    base = ["--trainer", "zo", "--num_train", "4", "--zo_optimizer", "subzero"]
    args = parse_args(base)
    assert (args.subzero_rank, args.subzero_interval) == (24, 1000)
    for flags, message in ((["--subzero_rank", "0"], "--subzero_rank 0: must be >= 1"),
                           (["--subzero_interval", "-1"], "--subzero_interval -1: must be >= 1"),
                           (["--zo_perturb", "out_of_place"], "--zo_perturb out_of_place with --zo_optimizer subzero")):
        with pytest.raises(ArgumentError, match=message):
            HfArgumentParser(Arguments).parse_args_into_dataclasses(args=[*base, *flags])


@pytest.mark.parametrize("mode", [[], ["--lora"]])
def test_trains_through_run_py(tmp_path, tiny_opt_dir, sst2_dir, mode):
    result = train_tiny(tmp_path, tiny_opt_dir, sst2_dir, "--zo_optimizer", "subzero", "--subzero_rank", "4",
                        "--subzero_interval", "2", *mode)
    assert result["config"]["zo_optimizer"] == "subzero" and result["config"]["subzero_rank"] == 4
    assert_trained_tensors(tiny_opt_dir, tmp_path, adapters=bool(mode))
