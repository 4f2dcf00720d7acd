"""The ZO engine against autograd, in float64 on tiny models: the two-point estimate is the directional derivative
to O(eps^2), and averaged over many directions it points along the backprop gradient."""
import math

import pytest
import torch

from mezo_engine import lora, zo
from tests.tiny import make_model

EPS_HALVINGS = [1e-2 / 2 ** k for k in range(7)]  # 1e-2 ... 1.56e-4
# The whole model has 20-30x the adapters' parameters, so the same eps moves it ~5x farther (|eps z| ~ eps sqrt(d):
# 2.4 at eps = 1e-2, beyond its weights' own size and the quadratic regime, where eps^4 terms still show); a 20x
# smaller start gives it about the adapters' range of perturbation sizes.
EPS_FULL = [5e-4 / 2 ** k for k in range(7)]


def _batch(vocab: int, rows: int = 4, length: int = 12) -> dict:
    ids = torch.randint(3, vocab, (rows, length), generator=torch.Generator().manual_seed(7))
    return {"input_ids": ids, "labels": ids}


def _model(kind: str, layers: int = 2):
    """A tiny model computing in float64 throughout, so that rounding stays far below the O(eps^2) error being
    measured. Two swaps serve that law: OPT's ReLU becomes GELU (a central difference across a ReLU kink has an
    O(eps) error), and LLaMA's RMSNorm, which computes in float32, becomes its float64 twin."""
    model = make_model(kind, seed=3, layers=layers, dtype=torch.float64)  # float64 RMSNorms (tests/tiny.py)
    if kind == "opt":
        for block in model.model.decoder.layers:
            block.activation_fn = torch.nn.GELU()
    return model


def _live_adapters(model, rank: int, seed: int):
    """LoRA of ``rank`` with B drawn non-zero, so that the function depends on both factors."""
    model = lora.attach_lora(model, r=rank, alpha=2 * rank)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.trainable_lora_parameters(model):
            p.copy_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _setup(kind: str, params: str):
    """A float64 tiny model and the parameter set the engine would perturb: the whole model, a LoRA r=8 adapter,
    or an XGBLoRA rank-1 booster after one merge, with the boosters of block 0 only active (Ls = 1)."""
    model = _model(kind)
    if params == "full":
        return model, [p for p in model.parameters() if p.requires_grad]
    if params == "lora":
        model = _live_adapters(model, 8, seed=1)
        return model, lora.trainable_lora_parameters(model)
    model = _live_adapters(model, 1, seed=1)
    lora.merge_and_reinit(model, generator=torch.Generator().manual_seed(2))  # base moved, fresh booster
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        for p in lora.trainable_lora_parameters(model):
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))  # B = 0 after reinit: make it live
    lora.set_active_blocks(model, [0])
    return model, lora.trainable_lora_parameters(model)


def _lm_loss(model, batch) -> torch.Tensor:
    """Next-token cross-entropy computed here in float64 (the models' own loss casts the logits to float32,
    whose rounding would swamp the O(eps^2) error at small eps)."""
    logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten())


def _loss_fn(model, batch):
    def loss() -> float:
        with torch.no_grad():
            return _lm_loss(model, batch).item()
    return loss


def _gradient(model, params, batch) -> list[torch.Tensor]:
    return list(torch.autograd.grad(_lm_loss(model, batch), params))


@pytest.mark.parametrize("kind", ["opt", "llama"])
@pytest.mark.parametrize("params", ["full", "lora", "xgblora"])
def test_two_point_estimate_is_the_directional_derivative_to_second_order(kind, params):
    model, theta = _setup(kind, params)
    batch = _batch(model.config.vocab_size)
    seed = 11
    exact = sum((g * z).sum() for g, z in zip(_gradient(model, theta, batch), zo.draw_z(theta, seed))).item()
    assert abs(exact) > 1e-3  # a direction the loss changes along, or the test would prove nothing
    before = [p.detach().clone() for p in theta]
    errors = [abs(zo.estimate(theta, _loss_fn(model, batch), [seed], eps, cache=True)[0][1] - exact)
              for eps in (EPS_FULL if params == "full" else EPS_HALVINGS)]
    assert all(torch.equal(p, b) for p, b in zip(theta, before))  # the estimate leaves the parameters as they were
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(3.5 < r < 4.5 for r in ratios), (errors, ratios)  # error ~ C eps^2: a quarter per halving
    assert errors[-1] < 1e-4 * abs(exact)  # four digits of the directional derivative at the smallest eps


def test_mean_of_single_direction_estimates_points_along_the_gradient():
    model = _model("opt", layers=1)
    model = _live_adapters(model, 1, seed=1)
    lora.set_active_blocks(model, [0])
    layers = lora.lora_layers(model)
    keep = {id(p) for _, layer in layers[:1] for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight)}
    for p in lora.trainable_lora_parameters(model):
        p.requires_grad_(id(p) in keep)  # one adapted matrix: a tiny adapter
    theta = lora.trainable_lora_parameters(model)
    d = sum(p.numel() for p in theta)
    batch = _batch(model.config.vocab_size)
    grad = torch.cat([g.flatten() for g in _gradient(model, theta, batch)])
    n = 1000
    pairs = zo.estimate(theta, _loss_fn(model, batch), list(range(n)), 1e-4, cache=True)
    mean = sum(g * torch.cat([z.flatten() for z in zo.draw_z(theta, seed)]) for seed, g in pairs) / n
    cosine = torch.nn.functional.cosine_similarity(mean, grad, dim=0).item()
    bound = 0.5 * math.sqrt(n / (n + d))
    assert 0 < d < n and cosine >= bound, (d, cosine, bound)
    # and not by accident: a single direction's estimate is far less aligned (about 1 / sqrt(d))
    single = torch.cat([z.flatten() for z in zo.draw_z(theta, pairs[0][0])]) * pairs[0][1]
    assert torch.nn.functional.cosine_similarity(single, grad, dim=0).item() < cosine
