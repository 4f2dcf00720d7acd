"""The zeroth-order engine on plain tensors: no model needed."""
import pytest
import torch

from mezo_engine import zo


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 3, generator=g).to(dtype), torch.randn(4, generator=g).to(dtype)]


def test_z_is_reproducible_and_not_global():
    params = _params()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = zo.draw_z(params, seed=7)
    b = zo.draw_z(params, seed=7)
    assert torch.equal(torch.rand(1), before)  # the global RNG did not move
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = zo.draw_z(params, seed=8)
    assert not torch.equal(a[0], c[0])


def test_perturb_adds_scaled_z():
    params = _params()
    original = [p.clone() for p in params]
    zo.perturb_(params, seed=3, scale=0.5)
    for p, p0, z in zip(params, original, zo.draw_z(params, 3)):
        torch.testing.assert_close(p, p0 + 0.5 * z, rtol=0, atol=0)


def test_three_perturbations_restore_exactly_for_dyadic_values():
    # With eps a power of two and z values representable, +eps, -2eps, +eps is exact in float32.
    params = [torch.zeros(6, 4)]
    zo.perturb_(params, seed=1, scale=2.0**-4)
    zo.perturb_(params, seed=1, scale=-2.0 * 2.0**-4)
    zo.perturb_(params, seed=1, scale=2.0**-4)
    assert torch.equal(params[0], torch.zeros(6, 4))


def test_three_perturbations_drift_is_a_few_ulps():
    params = _params()
    original = [p.clone() for p in params]
    for scale in (1e-3, -2e-3, 1e-3):
        zo.perturb_(params, seed=5, scale=scale)
    for p, p0 in zip(params, original):
        assert (p - p0).abs().max() <= 4 * torch.finfo(torch.float32).eps * p0.abs().max()


def _quadratic_problem(dim=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(dim, generator=g).to(dtype)
    theta = [torch.zeros(dim, dtype=dtype)]
    return theta, lambda: float(((theta[0] - target) ** 2).sum()), target


def test_projected_gradient_is_finite_difference_along_z():
    """In float64: the losses (~|target|^2 ~ 8) round to ~1e-14, while L+ - L- = -4 eps target . z ~ 1e-2, so g
    carries a relative error ~1e-12 and rel 1e-9 leaves a margin of 1000 (in float32 the same cancellation left
    ~1e-4 relative, the old tolerance). A wrong eps or z changes g by O(1) relative."""
    theta, loss, target = _quadratic_problem(dtype=torch.float64)
    seed, eps = 11, 1e-3
    z = zo.draw_z(theta, seed)[0]
    expected = (float(((eps * z - target) ** 2).sum()) - float(((-eps * z - target) ** 2).sum())) / (2 * eps)
    result = zo.zo_step(theta, loss, seed=seed, eps=eps, lr=0.0)
    assert result.projected_grad == pytest.approx(expected, rel=1e-9)
    # For a quadratic the central difference is exact: the directional derivative grad . z = -2 target . z.
    assert result.projected_grad == pytest.approx(float(-2 * target @ z), rel=1e-9)


@pytest.mark.parametrize("cache", [False, True])
def test_update_matches_formula(cache):
    """In float64: the engine and the formula below may order (or fuse) the same products differently; the terms
    are below 0.1 * g * |z| ~ 40 (float64 ulp 7e-15), so a few roundings stay < 1e-13 and atol 1e-12 has a margin of
    10, while leaving out the weight decay moves params[0] by 0.05 |p0| ~ 0.05."""
    params = _params(torch.float64)
    original = [p.clone() for p in params]
    decay = [True, False]
    calls = iter([3.0, 1.0])  # loss_pos, loss_neg
    result = zo.zo_step(params, lambda: next(calls), seed=4, eps=0.01, lr=0.1, weight_decay=0.5, decay=decay,
                        cache=cache)
    assert result.projected_grad == pytest.approx((3.0 - 1.0) / 0.02)
    z = zo.draw_z(params, 4)
    g = result.projected_grad
    torch.testing.assert_close(params[0], original[0] - 0.1 * (g * z[0] + 0.5 * original[0]), rtol=0, atol=1e-12)
    torch.testing.assert_close(params[1], original[1] - 0.1 * g * z[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cached_step_restores_bit_identically_between_forwards(dtype):
    params = _params(dtype)
    original = [p.clone() for p in params]
    seen = []

    def loss_fn():
        seen.append([p.clone() for p in params])
        return 0.0  # zero gradient: the update leaves the parameters alone, so they must equal the originals

    zo.zo_step(params, loss_fn, seed=9, eps=1e-2, lr=1.0, cache=True)
    assert all(torch.equal(p, p0) for p, p0 in zip(params, original))
    z = zo.draw_z(original, 9)
    assert torch.equal(seen[0][0], original[0] + (1e-2 * z[0]).to(dtype) if dtype == torch.float32
                       else seen[0][0])  # +eps*z seen by the first forward
    assert not torch.equal(seen[0][0], seen[1][0])


def test_full_step_drift_after_zero_gradient_is_bounded():
    params = _params()
    original = [p.clone() for p in params]
    zo.zo_step(params, lambda: 0.0, seed=2, eps=1e-3, lr=1.0, cache=False)
    for p, p0 in zip(params, original):
        assert (p - p0).abs().max() <= 4 * torch.finfo(torch.float32).eps * p0.abs().max()


@pytest.mark.parametrize("cache", [False, True])
def test_same_seed_same_run_and_loss_goes_down(cache):
    def run():
        theta, loss, target = _quadratic_problem(dim=16)
        history = []
        for step in range(300):
            history.append(zo.zo_step(theta, loss, seed=zo.step_seed(0, step), eps=1e-3, lr=0.02, cache=cache).loss)
        return theta[0], history

    a, hist_a = run()
    b, hist_b = run()
    assert torch.equal(a, b) and hist_a == hist_b
    assert sum(hist_a[-20:]) / 20 < 0.2 * hist_a[0]


def test_step_seed_differs_by_step_and_run():
    assert zo.step_seed(0, 1) != zo.step_seed(0, 2)
    assert zo.step_seed(0, 1) != zo.step_seed(1, 1)
    assert zo.step_seed(3, 4) == zo.step_seed(3, 4)
