"""Tests for mezo_engine.lora: attaching LoRA, XGBLoRA merges, block selection, LoRA-GA, saving.

Every equivalence test first makes the adapter non-zero and checks that it moves the output, so it can fail.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel, RobertaConfig, RobertaForMaskedLM

from mezo_engine import lora as L
from tests.tiny import VOCAB, make_model

KINDS = ["opt", "llama", "gpt2"]
PREFIX = "base_model.model."


def _ids(seed: int = 0, batch: int = 2, length: int = 9) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (batch, length), generator=g)


def _peft(kind: str, dtype=torch.float32, seed: int = 0, layers: int = 2, r: int = 1, alpha: float = 16):
    return L.attach_lora(make_model(kind, seed, layers, dtype), r=r, alpha=alpha)


def _logits(model, ids=None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_ids() if ids is None else ids).logits.float()


def _AB(layer: LoraLayer) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    return layer.lora_A["default"].weight, layer.lora_B["default"].weight


def _randomize_B(model, seed: int = 1, std: float = 0.05) -> None:
    """Make every adapter non-zero (B starts at zero, which would make merge tests vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in L.lora_layers(model):
            B = _AB(layer)[1]
            B.copy_(torch.randn(B.shape, generator=g) * std)


def _weight(layer: LoraLayer) -> torch.Tensor:
    return layer.get_base_layer().weight


def _assert_adapter_matters(model) -> torch.Tensor:
    """Logits with the adapter on; asserts they differ clearly from the base model's."""
    on = _logits(model)
    with model.disable_adapter():
        off = _logits(model)
    assert (on - off).abs().max() > 1e-2
    return on


# ---------------------------------------------------------------------------------------------------------------
# attaching


@pytest.mark.parametrize("kind,expected", [("opt", ["q_proj", "v_proj"]), ("llama", ["q_proj", "v_proj"]),
                                           ("gpt2", ["c_attn"])])
def test_attach_defaults_and_only_lora_trainable(kind, expected):
    model = make_model(kind, layers=3)
    assert L.default_target_modules(model) == expected
    pm = L.attach_lora(model, r=1, alpha=16)
    layers = L.lora_layers(pm)
    assert len(layers) == 3 * len(expected)
    assert sorted({n.rsplit(".", 1)[-1] for n, _ in layers}) == expected
    assert [L.layer_index(n) for n, _ in layers] == sorted(L.layer_index(n) for n, _ in layers)
    assert L.num_blocks(pm) == 3
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(L.trainable_lora_parameters(pm)) == len(trainable) == 2 * len(layers)
    for _, layer in layers:
        A, B = _AB(layer)
        assert A.shape[0] == B.shape[1] == 1 and torch.all(B == 0)


def test_unknown_model_type_needs_flag():
    model = make_model("opt")
    model.config.model_type = "weird"
    with pytest.raises(ValueError, match="--lora_target_modules"):
        L.default_target_modules(model)


def test_bad_target_module_names_flag_and_name():
    with pytest.raises(ValueError, match=r"--lora_target_modules: 'foo' matches no module of this opt model.*q_proj"):
        L.attach_lora(make_model("opt"), r=1, alpha=16, target_modules=["q_proj", "foo"])


@pytest.mark.parametrize("kwargs,flag", [(dict(r=0), "--lora_r"), (dict(alpha=0.0), "--lora_alpha"),
                                         (dict(dropout=1.0), "--lora_dropout"), (dict(init="pissa"), "--lora_init")])
def test_bad_lora_args_name_flag(kwargs, flag):
    args = dict(r=1, alpha=16.0) | kwargs
    with pytest.raises(ValueError, match=flag):
        L.attach_lora(make_model("opt"), **args)


def test_custom_targets_and_masked_lm():
    pm = L.attach_lora(make_model("llama"), r=2, alpha=4, target_modules=["k_proj", "down_proj"])
    assert sorted({n.rsplit(".", 1)[-1] for n, _ in L.lora_layers(pm)}) == ["down_proj", "k_proj"]
    cfg = RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    mlm = L.attach_lora(RobertaForMaskedLM(cfg).eval(), r=1, alpha=16)
    assert L.num_blocks(mlm) == 2 and len(L.lora_layers(mlm)) == 4
    _randomize_B(mlm)
    before = _assert_adapter_matters(mlm)
    L.merge_and_reinit(mlm, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(mlm), before, atol=1e-5, rtol=0)


def test_layer_index():
    assert L.layer_index("base_model.model.model.decoder.layers.3.self_attn.q_proj") == 3
    assert L.layer_index("base_model.model.transformer.h.11.attn.c_attn") == 11
    assert L.layer_index("roberta.encoder.layer.7.attention.self.query") == 7
    assert L.layer_index("h.0.attn") == 0
    assert L.layer_index("lm_head") is None
    assert L.layer_index("model.layers_norm.3.x") is None


@pytest.mark.parametrize("kind", KINDS)
def test_delta_weight_is_peft_delta_in_base_layout(kind):
    pm = _peft(kind)
    _randomize_B(pm)
    for _, layer in L.lora_layers(pm):
        delta = L.delta_weight(layer)
        assert delta.dtype == torch.float32 and delta.shape == _weight(layer).shape
        torch.testing.assert_close(delta, layer.get_delta_weight("default").float(), atol=1e-7, rtol=1e-6)
        A, B = _AB(layer)
        assert math.isclose(float(delta.norm()), 16 * float(B.detach().norm() * A.detach().norm()), rel_tol=1e-5)
        base = copy.deepcopy(layer.get_base_layer())  # a base layer holding W + delta acts like base + adapter
        with torch.no_grad():
            base.weight += delta
            x = torch.randn(3, A.shape[1])
            torch.testing.assert_close(base(x), layer(x), atol=1e-5, rtol=0)
            assert (layer(x) - layer.get_base_layer()(x)).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------------------------
# merging


# Logits here are below 0.62 and come out in the model's dtype: a merge rounds W + delta to that dtype, and the
# logits move by about one ulp of their size (measured: 1.3e-7 in float32, 4.9e-4 in float16, 3.9e-3 in bfloat16).
# The tolerances are 80 float32 ulps at 0.5, and 4 float16 (4.9e-4) / bfloat16 (3.9e-3) ulps at 0.5-1.
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize("kind", KINDS)
def test_merge_and_reinit_keeps_output(kind, dtype, atol):
    pm = _peft(kind, dtype)
    _randomize_B(pm)
    before = _assert_adapter_matters(pm)
    layers = L.lora_layers(pm)
    old = {n: (_weight(m).detach().clone(), L.delta_weight(m), _AB(m)[0].detach().clone()) for n, m in layers}
    params = {n: (_weight(m), *_AB(m)) for n, m in layers}
    rng_state = torch.get_rng_state()
    report = L.merge_and_reinit(pm, scale=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), rng_state)  # own generator, global RNG untouched
    torch.testing.assert_close(_logits(pm), before, atol=atol, rtol=0)
    assert report.num_modules == len(layers) and report.modules == [n for n, _ in layers]
    assert math.isclose(report.delta_norm, math.sqrt(sum(float(d.norm()) ** 2 for _, d, _ in old.values())),
                        rel_tol=1e-5)
    for name, layer in layers:
        W0, delta, A0 = old[name]
        A, B = _AB(layer)
        assert params[name][0] is _weight(layer) and params[name][1] is A and params[name][2] is B
        assert torch.equal(_weight(layer), (W0.float() + delta).to(dtype))
        assert torch.all(B == 0) and not torch.equal(A, A0)
        bound = 1 / math.sqrt(A.shape[1])
        assert bound / 2 < A.abs().max() <= bound
        assert A.requires_grad and B.requires_grad and not layer.merged


def test_adapter_stays_live_after_merge():
    pm = _peft("opt")
    _randomize_B(pm)
    opt = torch.optim.SGD(L.trainable_lora_parameters(pm), lr=1.0)
    L.merge_and_reinit(pm, generator=torch.Generator().manual_seed(0))
    ids = _ids()
    before = _logits(pm, ids)
    pm(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    for _, layer in L.lora_layers(pm):
        assert _AB(layer)[1].grad.abs().max() > 0 and _AB(layer)[1].abs().max() > 0
    assert (_logits(pm, ids) - before).abs().max() > 1e-4


def test_reinit_is_seeded():
    pm = _peft("llama")
    (_, layer), = L.lora_layers(pm)[:1]
    draws = []
    for seed in (3, 3, 4):
        L.reinit_(layer, torch.Generator().manual_seed(seed))
        draws.append(_AB(layer)[0].detach().clone())
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


@pytest.mark.parametrize("kind", KINDS)
def test_merge_with_scale_matches_manual_reference(kind):
    pm = _peft(kind, seed=3)
    _randomize_B(pm)
    ref = make_model(kind, seed=3)
    with torch.no_grad():
        for name, layer in L.lora_layers(pm):
            W = ref.get_submodule(name.removeprefix(PREFIX)).weight
            W.copy_(W + 0.5 * L.delta_weight(layer))
    before = _assert_adapter_matters(pm)
    L.merge_and_reinit(pm, scale=0.5, generator=torch.Generator().manual_seed(0))
    after, expected = _logits(pm), _logits(ref)
    assert (after - before).abs().max() > 1e-2
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=0)


def test_merge_only_named_layers_and_reinit_false():
    pm = _peft("opt")
    _randomize_B(pm)
    layers = L.lora_layers(pm)
    name, layer = layers[1]
    snap = {n: (_weight(m).detach().clone(), *(p.detach().clone() for p in _AB(m))) for n, m in layers}
    before = _logits(pm)
    report = L.merge_and_reinit(pm, layers=[name], reinit=False)
    assert report.modules == [name]
    torch.testing.assert_close(_logits(pm), before, atol=1e-5, rtol=0)
    A, B = _AB(layer)
    assert torch.all(B == 0) and torch.equal(A, snap[name][1]) and not torch.equal(_weight(layer), snap[name][0])
    for n, m in layers:
        if n != name:
            assert all(torch.equal(a, b) for a, b in zip((_weight(m), *_AB(m)), snap[n]))
    with pytest.raises(ValueError, match="not LoRA layers"):
        L.merge_and_reinit(pm, layers=["nope"])


@pytest.mark.parametrize("alpha", [0.3, 1.0])
@pytest.mark.parametrize("kind", KINDS)
def test_partial_merge(kind, alpha):
    pm = _peft(kind)
    _randomize_B(pm)
    before = _assert_adapter_matters(pm)
    layers = L.lora_layers(pm)
    old = {n: (_weight(m).detach().clone(), L.delta_weight(m), _AB(m)[0].detach().clone()) for n, m in layers}
    report = L.partial_merge(pm, alpha)
    torch.testing.assert_close(_logits(pm), before, atol=1e-5, rtol=0)
    assert report.num_modules == len(layers)
    for name, layer in layers:
        W0, delta, A0 = old[name]
        torch.testing.assert_close(_weight(layer), W0 + alpha * delta, atol=1e-7, rtol=0)
        torch.testing.assert_close(L.delta_weight(layer), (1 - alpha) * delta, atol=1e-7, rtol=1e-6)
        assert torch.equal(_AB(layer)[0], A0)  # only B is scaled
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="--lora_merge_alpha"):
            L.partial_merge(pm, bad)


# ---------------------------------------------------------------------------------------------------------------
# choosing boosters


def test_select_booster_layers():
    pick = lambda seed, k=3, n=12: L.select_booster_layers(n, k, torch.Generator().manual_seed(seed))  # noqa: E731
    assert pick(0) == pick(0)
    assert pick(0) != pick(1)
    for seed in range(20):
        ids = pick(seed)
        assert len(ids) == 3 and ids == sorted(set(ids)) and all(0 <= i < 12 for i in ids)
    assert pick(0, k=0) == pick(0, k=12) == list(range(12))
    with pytest.raises(ValueError, match="--xgblora_num_layers 13"):
        pick(0, k=13)


def test_set_active_blocks():
    pm = _peft("llama", layers=3)
    L.set_active_blocks(pm, [0, 2])
    for name, layer in L.lora_layers(pm):
        assert all(p.requires_grad == (L.layer_index(name) in (0, 2)) for p in _AB(layer))
        assert not _weight(layer).requires_grad
    trainable = L.trainable_lora_parameters(pm)
    assert len(trainable) == 2 * 2 * 2  # 2 blocks x (q, v) x (A, B)
    ids = _ids()
    pm(input_ids=ids, labels=ids).loss.backward()
    assert all((p.grad is not None) == p.requires_grad for _, m in L.lora_layers(pm) for p in _AB(m))
    everything = L.trainable_lora_parameters(pm, include_frozen=True)
    assert len(everything) == 3 * 2 * 2 and all(any(p is q for q in everything) for p in trainable)
    L.set_active_blocks(pm, None)
    assert [id(p) for p in L.trainable_lora_parameters(pm)] == [id(p) for p in everything]
    with pytest.raises(ValueError, match=r"\[5\]"):
        L.set_active_blocks(pm, [5])


# ---------------------------------------------------------------------------------------------------------------
# LoRA-GA


def _synthetic_grad(shape, seed: int) -> torch.Tensor:
    """G = U diag(S) V^T with a clear spectral gap, so the top singular vectors are well defined."""
    g = torch.Generator().manual_seed(seed)
    k = min(shape)
    U, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=g))
    V, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=g))
    S = 0.05 * 0.5 ** torch.arange(k, dtype=torch.float32)
    return U @ torch.diag(S) @ V.T


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().flatten(), b.detach().flatten()
    return float((a @ b).abs() / (a.norm() * b.norm()))


@pytest.mark.parametrize("kind", KINDS)
def test_lora_ga_keeps_output_and_uses_top_singular_vectors(kind):
    pm = _peft(kind)
    _randomize_B(pm)  # a live non-zero booster must be folded in, not lost
    before = _assert_adapter_matters(pm)
    layers = L.lora_layers(pm)
    grads = {n: _synthetic_grad(_weight(m).shape, i) for i, (n, m) in enumerate(layers)}
    params = {n: (_weight(m), *_AB(m)) for n, m in layers}
    rng_state = torch.get_rng_state()
    L.lora_ga_reinit_(pm, grads, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), rng_state)
    torch.testing.assert_close(_logits(pm), before, atol=1e-5, rtol=0)
    for name, layer in layers:
        assert params[name] == (_weight(layer), *_AB(layer))
        assert not hasattr(layer.get_base_layer(), "_peft_loraga_grad")
        G = grads[name].T if layer.fan_in_fan_out else grads[name]  # (out, in), as PEFT sees it
        U, S, Vh = torch.linalg.svd(G)
        A, B = _AB(layer)
        # ArB2r, r=1: A = top right singular vector v1 (unit); B = u2 * S2 * out^0.25 / sqrt(gamma)
        assert _cos(A, Vh[0]) > 0.999 and math.isclose(float(A.detach().norm()), 1.0, rel_tol=1e-4)
        assert _cos(B, U[:, 1]) > 0.999
        if not layer.fan_in_fan_out:  # PEFT takes "out" from weight.shape[0], which is in_features for Conv1D
            assert math.isclose(float(B.detach().norm()), float(S[1]) * G.shape[0] ** 0.25 / 4, rel_tol=1e-3)


def test_lora_ga_is_seeded_and_only_touches_named_layers():
    runs = []
    for _ in range(2):
        pm = _peft("opt")
        layers = L.lora_layers(pm)
        name, layer = layers[0]
        snap = [(_weight(m).detach().clone(), _AB(m)[0].detach().clone()) for _, m in layers[1:]]
        L.lora_ga_reinit_(pm, {name: _synthetic_grad(_weight(layer).shape, 0)}, direction="random",
                          generator=torch.Generator().manual_seed(5))
        runs.append([t.detach().clone() for t in _AB(layer)])
        for (_, m), (W0, A0) in zip(layers[1:], snap):
            assert torch.equal(_weight(m), W0) and torch.equal(_AB(m)[0], A0) and torch.all(_AB(m)[1] == 0)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_lora_ga_bad_args():
    pm = _peft("opt")
    name, layer = L.lora_layers(pm)[0]
    grad = torch.ones(_weight(layer).shape)
    with pytest.raises(ValueError, match="direction.*'up'"):
        L.lora_ga_reinit_(pm, {name: grad}, direction="up")
    with pytest.raises(ValueError, match="scale.*'big'"):
        L.lora_ga_reinit_(pm, {name: grad}, scale="big")
    with pytest.raises(ValueError, match="shape"):
        L.lora_ga_reinit_(pm, {name: grad.T[:, :3]})
    with pytest.raises(ValueError, match="not LoRA layers"):
        L.lora_ga_reinit_(pm, {"model.decoder.q_proj": grad})


def _lm_loss(model, batch):
    return model(input_ids=batch, labels=batch).loss


@pytest.mark.parametrize("kind", KINDS)
def test_estimate_grads_backprop_matches_autograd(kind):
    pm = _peft(kind)
    _randomize_B(pm)
    L.set_active_blocks(pm, [1])  # a non-trivial requires_grad state that must come back
    flags = {n: p.requires_grad for n, p in pm.named_parameters()}
    batches = [_ids(1), _ids(2)]
    grads = L.estimate_lora_ga_grads_backprop(pm, batches, _lm_loss)
    layers = L.lora_layers(pm)
    assert list(grads) == [n for n, _ in layers]
    assert {n: p.requires_grad for n, p in pm.named_parameters()} == flags
    assert all(p.grad is None for p in pm.parameters())
    weights = [_weight(m) for _, m in layers]
    for w in weights:
        w.requires_grad_(True)
    manual = [torch.autograd.grad(_lm_loss(pm, b), weights) for b in batches]
    for w in weights:
        w.requires_grad_(False)
    for (name, _), g1, g2 in zip(layers, *manual):
        assert grads[name].shape == g1.shape and grads[name].abs().max() > 0
        torch.testing.assert_close(grads[name], (g1 + g2) / 2, atol=1e-7, rtol=1e-5)


def test_lora_ga_from_backprop_grads_float16():
    pm = _peft("llama", torch.float16)
    _randomize_B(pm)
    before = _assert_adapter_matters(pm)
    grads = L.estimate_lora_ga_grads_backprop(pm, [_ids(1)], _lm_loss)
    L.lora_ga_reinit_(pm, grads, generator=torch.Generator().manual_seed(0))
    for _, layer in L.lora_layers(pm):
        assert _AB(layer)[0].dtype == torch.float32 and _weight(layer).dtype == torch.float16
        assert _AB(layer)[1].abs().max() > 0
    torch.testing.assert_close(_logits(pm), before, atol=2e-3, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# saving


def test_save_adapters_roundtrip(tmp_path):
    pm = _peft("gpt2")
    _randomize_B(pm)
    expected = _assert_adapter_matters(pm)
    L.save_adapters(pm, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(make_model("gpt2"), tmp_path / "adapter")
    torch.testing.assert_close(_logits(loaded), expected, atol=0, rtol=0)  # the same weights and ops: bit-equal


@pytest.mark.parametrize("kind,dtype,atol", [(k, torch.float32, 1e-5) for k in KINDS] + [("llama", torch.float16, 2e-3)])
def test_merged_base_model_same_output(kind, dtype, atol):
    pm = _peft(kind, dtype)
    _randomize_B(pm, seed=1)
    L.merge_and_reinit(pm, generator=torch.Generator().manual_seed(0))
    _randomize_B(pm, seed=2)  # a merged booster plus a live one
    expected = _assert_adapter_matters(pm)
    merged = L.merged_base_model(pm)
    assert isinstance(merged, PreTrainedModel) and not isinstance(merged, PeftModel)
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert all(p.dtype == dtype for p in merged.parameters())
    torch.testing.assert_close(_logits(merged), expected, atol=atol, rtol=0)
