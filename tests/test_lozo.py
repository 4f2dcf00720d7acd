"""LOZO and LOZO-M (zo_methods/lozo.py, lozo_m.py) against the maths, in float64: the mean of many estimates is
autograd's gradient projected on the lazy subspace, G V V^T / r; V is kept for nu steps; LOZO-M's factored momentum
and its projection at a change of V follow the paper's recursion; state round-trips through state_dict and a reset;
and both train through run.py in full-parameter and LoRA mode."""
import io

import pytest
import torch

from transformers import AutoModelForCausalLM, HfArgumentParser

from large_models.arguments import ArgumentError, Arguments, parse_args
from mezo_engine import zo
from mezo_engine.methods.xgblora import reset_optimizer_state
from mezo_engine.zo_methods import subspace
from mezo_engine.zo_methods.lozo import LOZO
from mezo_engine.zo_methods.lozo_m import LOZOM
from tests.subspace_fixtures import (assert_mean_estimate, assert_trained_tensors, first_matrix_updates, flat, leaf,
                                     quadratic, quadratic_at, run_steps, tiny_lora, train_tiny)


def _projected(opt, params, grads):
    """E[g_hat] given V: G V V^T / r for each matrix, the gradient itself for the other tensors."""
    out = []
    for p, g in zip(params, grads):
        v = opt.right_factor(p) if p.dim() == 2 else None
        out.append(g if v is None else g @ v @ v.T / opt.rank)
    return flat(out)


def _lozo(params):
    return LOZO(params, lr=1.0, rank=2, interval=5)


def test_mean_estimate_is_the_gradient_projected_on_v():
    assert_mean_estimate(quadratic, _lozo, _projected, directions=2000, eps=1e-3)


@pytest.mark.slow
def test_mean_estimate_on_a_tiny_model_is_the_gradient_projected_on_v():
    assert_mean_estimate(tiny_lora, _lozo, _projected, directions=1500, eps=1e-5)


def test_one_estimate_on_a_tiny_model_is_the_derivative_along_u_v_transpose():
    """The model is perturbed by eps U V^T itself (not a rescaled copy): the projected gradient is <G, U V^T> to
    O(eps^2), and the update is -lr c U V^T / r."""
    params, loss_fn, gradient = tiny_lora()
    opt = LOZO(params, lr=0.5, rank=2, interval=5)
    start = [p.detach().clone() for p in params]
    _, [(seed, c)] = opt.zo_step(loss_fn, [7], 1e-5, True)
    z = zo.draw_z(params, seed, opt.sampler)
    assert all(torch.linalg.matrix_rank(zi).item() == 2 for zi in z)
    exact = sum((g * zi).sum() for g, zi in zip(gradient(), z)).item()
    # eps = 1e-5: the O(eps^2) error (~1e-10 relative) and float64 rounding of a loss of ~5 over 2 eps (~1e-11)
    assert abs(exact) > 1e-3 and c == pytest.approx(exact, rel=1e-7)
    opt.step()
    for p, s, zi in zip(params, start, z):
        torch.testing.assert_close(p.detach(), s - 0.5 * c * zi / 2, rtol=0, atol=1e-15)


def _row_space(delta: torch.Tensor, rank: int) -> torch.Tensor:
    """The projector on the span of the top ``rank`` right singular vectors of ``delta``."""
    basis = torch.linalg.svd(delta)[2][:rank]
    return basis.T @ basis


def test_v_is_kept_for_interval_steps_then_redrawn():
    """Every update of a matrix within an interval lies in one r-dimensional row space (that of V), the first
    update after it does not; the interval's updates differ (U is fresh each step)."""
    params, loss_fn, _ = quadratic()
    deltas = first_matrix_updates(LOZO(params, lr=0.1, rank=2, interval=3), params, loss_fn, 4)
    rows = _row_space(deltas[0], 2)
    residual = [(d - d @ rows).norm().item() / d.norm().item() for d in deltas]
    assert max(residual[:3]) < 1e-12 < 0.1 < residual[3], residual
    assert torch.linalg.matrix_rank(torch.cat(deltas[:3])).item() == 2
    assert not torch.allclose(deltas[0] / deltas[0].norm(), deltas[1] / deltas[1].norm())


def _momentum_reference(params, opt_draws, lr, beta, wd, rank):
    """LOZO-M by the paper's recursion, from the draws (U or z per step, V per interval) the optimizer used."""
    buffers = [None] * len(params)
    theta = [p.detach().clone() for p in params]
    for (c, draws, rights, refreshed) in opt_draws:
        for i, (u, v) in enumerate(zip(draws, rights)):
            if buffers[i] is None:
                buffers[i] = torch.zeros_like(u)
            elif refreshed and v is not None:
                buffers[i] = buffers[i] @ (refreshed[i].T @ v) / v.shape[0]
            buffers[i] = beta * buffers[i] + (1 - beta) * c * u
            step = buffers[i] @ v.T / rank if v is not None else buffers[i]
            theta[i] = theta[i] * (1 - lr * wd) - lr * step
    return theta


def test_lozo_m_follows_the_factored_momentum_recursion():
    """Five steps, V redrawn at steps 2 and 4 (interval 2): the parameters are the recursion
    N <- beta N P + (1 - beta) c U (P = V_old^T V_new / n at a change, else I), W <- (1 - lr wd) W - lr N V^T / r."""
    params, loss_fn, _ = quadratic()
    lr, beta, wd, rank = 0.05, 0.7, 0.3, 2
    opt = LOZOM(params, lr=lr, rank=rank, interval=2, momentum=beta, weight_decay=wd)
    start = [p.detach().clone() for p in params]
    record, previous = [], None
    for step in range(5):
        [seed] = zo.sample_seeds(1, step, 1)
        _, [(_, c)] = opt.zo_step(loss_fn, [seed], 1e-3, True)
        rights = [opt.right_factor(p) if p.dim() == 2 else None for p in params]
        gens = opt.sampler.generators(params, seed)
        draws = [opt.sampler.factor(p, gens) for p in params]
        record.append((c, draws, rights, previous if step in (2, 4) else None))
        previous = rights
        opt.step()
    got = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    want = _momentum_reference(params, record, lr, beta, wd, rank)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
    assert [int(opt.state[p]["step"]) for p in params[:2]] == [5, 5]


def test_lozo_m_without_momentum_is_lozo():
    """beta = 0: N = c U, and the step N V^T / r is LOZO's, bit for bit, across a change of V."""
    (a, loss_a, _), (b, loss_b, _) = quadratic(), quadratic()
    lozo, lozo_m = LOZO(a, lr=0.1, interval=2), LOZOM(b, lr=0.1, interval=2, momentum=0.0)
    for step in range(3):
        for opt, loss in ((lozo, loss_a), (lozo_m, loss_b)):
            opt.zo_step(loss, zo.sample_seeds(2, step, 2), 1e-3, True)
            opt.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("cls", [LOZO, LOZOM])
def test_state_dict_round_trip_continues_identically(cls):
    """Three steps (V redrawn at step 2), a checkpoint, three more (a change at step 4): a fresh optimizer loaded
    from the checkpoint ends bit for bit where the uninterrupted one does; one without it does not."""
    params, loss_fn, _ = quadratic()
    opt = cls(params, lr=0.05, interval=2)
    run_steps(opt, loss_fn, range(3))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    copies = {name: [leaf(p) for p in params] for name in ("loaded", "cold")}
    loaded, cold = cls(copies["loaded"], lr=0.05, interval=2), cls(copies["cold"], lr=0.05, interval=2)
    loaded.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    for o, ps in ((opt, params), (loaded, copies["loaded"]), (cold, copies["cold"])):
        run_steps(o, quadratic_at(ps)[0], range(3, 6))
    assert all(torch.equal(a, b) for a, b in zip(params, copies["loaded"]))
    assert not torch.equal(params[0], copies["cold"][0])


def test_after_a_reset_a_matrix_starts_as_a_fresh_optimizer():
    """XGBLoRA's merge zeroes the state's tensors: the step count restarts, so the next step draws a new subspace
    and LOZO-M's momentum starts from zero, exactly as a new optimizer's first step would."""
    params, loss_fn, _ = quadratic()
    opt = LOZOM(params, lr=0.05, interval=4)
    run_steps(opt, loss_fn, range(2))
    reset_optimizer_state(opt, params)
    assert all(int(opt.state[p]["step"]) == 0 and not opt.state[p]["momentum"].any() for p in params[:2])
    twins = [leaf(p) for p in params]
    fresh = LOZOM(twins, lr=0.05, interval=4)
    run_steps(opt, loss_fn, [7])
    run_steps(fresh, quadratic_at(twins)[0], [7])
    assert all(torch.equal(a, b) for a, b in zip(params, twins))
    assert opt.state[params[0]]["subspace_seed"] == subspace.subspace_seed(zo.sample_seeds(4, 7, 1)[0], 0)


def test_step_without_a_started_step_is_refused_by_name():
    params, _, _ = quadratic()
    opt = LOZO(params, lr=0.1)
    opt.add_estimate([(3, 1.0)])
    with pytest.raises(RuntimeError, match="--zo_optimizer lozo: a matrix has no subspace yet"):
        opt.step()


def test_forwards_and_memory_of_the_state():
    params, loss_fn, _ = quadratic()
    opt = LOZOM(params, lr=0.1, rank=3)
    assert opt.forwards_per_step(4) == 8
    run_steps(opt, loss_fn, range(1))
    # momentum: m x r per matrix, the vector's own size; LOZO keeps no tensor beyond the step count
    assert [tuple(opt.state[p]["momentum"].shape) for p in params] == [(6, 3), (4, 3), (5,)]


# ---- flags ----------------------------------------------------------------------------------------------------
def _problems(*flags) -> str:
    with pytest.raises(ArgumentError) as err:
        HfArgumentParser(Arguments).parse_args_into_dataclasses(args=["--trainer", "zo", "--num_train", "4", *flags])
    return str(err.value)


def test_flags_default_to_the_papers_values_and_lozo_m_reads_lozo_s():
    args = parse_args(["--trainer", "zo", "--num_train", "4", "--zo_optimizer", "lozo_m", "--lozo_rank", "4"])
    assert (args.lozo_rank, args.lozo_interval, args.lozo_momentum) == (4, 50, 0.9)
    assert "--lozo_rank 4: only --zo_optimizer lozo or lozo_m uses it (not sgd)" in _problems("--lozo_rank", "4")
    assert ("--lozo_momentum 0.5: only --zo_optimizer lozo_m uses it (not lozo)"
            in _problems("--zo_optimizer", "lozo", "--lozo_momentum", "0.5"))
    assert "--lozo_momentum 1.0: must be in [0, 1)" in _problems("--zo_optimizer", "lozo_m", "--lozo_momentum", "1")
    message = _problems("--zo_optimizer", "lozo_m", "--lozo_interval", "0")
    assert message.count("--lozo_interval 0: must be >= 1") == 1  # checked once, by LOZO, for both methods


# ---- through run.py ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["lozo", "lozo_m"])
@pytest.mark.parametrize("mode", [[], ["--lora"]])
def test_trains_through_run_py(tmp_path, tiny_opt_dir, sst2_dir, optimizer, mode):
    result = train_tiny(tmp_path, tiny_opt_dir, sst2_dir, "--zo_optimizer", optimizer, "--lozo_interval", "2", *mode)
    assert result["config"]["zo_optimizer"] == optimizer and result["config"]["lozo_rank"] == 2
    assert_trained_tensors(tiny_opt_dir, tmp_path, adapters=bool(mode))
    if not mode:  # per matrix an int64 step count; LOZO-M's float32 buffers, m x 2 per matrix, the size of a vector
        params = list(AutoModelForCausalLM.from_pretrained(tiny_opt_dir).parameters())
        buffers = sum(p.shape[0] * 2 if p.dim() == 2 else p.numel() for p in params) if optimizer == "lozo_m" else 0
        assert result["train"]["optimizer_state_bytes"] == 8 * sum(p.dim() == 2 for p in params) + 4 * buffers
