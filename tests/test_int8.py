"""The int8 frozen base on the CPU (``--load_int8`` without CUDA, mezo_engine/int8.py), on tiny models.

Tolerances come from int8's resolution. A weight row j is stored as ``s_j q`` with ``s_j = max|W_j| / 127``, so
each element is off by at most ``s_j / 2``; the kernel quantises each input row x the same way, a step
``t = max|x| / 127``, each element off by at most ``t / 2``. Output j of row x is then off by at most
``s_j / 2 * (|x|_1 + n t / 2) + t / 2 * |W_j|_1``: the per-channel scale over 127 times the activation's norm,
plus the weight's norm times the activation's step.
"""
import json
import math
import statistics

import pytest
import torch
from torch import nn

from large_models import run
from mezo_engine import int8, lora
from tests.test_boosting import SAMPLES, _args, _boosting
from large_models.tasks import get_task
from tests.tiny import make_model, make_tokenizer

FLOAT32_SLACK = 1e-5  # int32 sums are exact; the float32 rescaling and bias add round at ~1e-7 of sum |W||x|


def _int8_copy(kind: str, seed: int = 0):
    """A tiny model with every frozen linear layer but the LM head in int8, and its float32 twin."""
    reference = make_model(kind, seed).requires_grad_(False)
    quantised = make_model(kind, seed).requires_grad_(False)
    report = int8.quantize_frozen_linears_(quantised)
    return quantised, reference, report


def _ids(batch: int = 3, length: int = 12) -> torch.Tensor:
    return torch.randint(4, 200, (batch, length), generator=torch.Generator().manual_seed(1))


def _bound(x: torch.Tensor, weight: torch.Tensor, layer: int8.Int8Linear) -> torch.Tensor:
    """The worst-case error of each output of ``layer`` on rows ``x`` (module docstring), plus float32 slack."""
    step = x.abs().amax(-1, keepdim=True) / 127
    weight_part = layer.weight_scale / 2 * (x.abs().sum(-1, keepdim=True) + x.shape[-1] * step / 2)
    activation_part = step / 2 * weight.abs().sum(1)
    return weight_part + activation_part + FLOAT32_SLACK * (x.abs() @ weight.abs().T) + 1e-7


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_every_int8_layer_is_within_its_quantisation_bound_inside_the_model(kind):
    quantised, reference, report = _int8_copy(kind)
    layers = 7 if kind == "llama" else 6  # q k v o gate up down; q k v out fc1 fc2
    assert report.layers == 2 * layers and report.kept_float == ["lm_head"]
    float_weights = dict(reference.named_modules())
    seen = {}

    def check(name):
        def hook(module, inputs, output):
            x = inputs[0]
            want = nn.functional.linear(x, float_weights[name].weight, float_weights[name].bias)
            seen[name] = ((output - want).abs() / _bound(x, float_weights[name].weight, module)).max().item()
        return hook

    for name, module in quantised.named_modules():
        if isinstance(module, int8.Int8Linear):
            module.register_forward_hook(check(name))
    with torch.no_grad():
        quantised(_ids())
    assert len(seen) == report.layers
    assert 0 < max(seen.values()) <= 1  # an int8 error (not zero: the layers really ran in int8), within bound


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_int8_logits_are_close_to_float32_and_the_lm_head_stays_float(kind):
    quantised, reference, _ = _int8_copy(kind)
    assert type(quantised.lm_head) is nn.Linear and quantised.lm_head.weight.dtype == torch.float32
    with torch.no_grad():
        got, want = quantised(_ids()).logits, reference(_ids()).logits
    relative = ((got - want).norm() / want.norm()).item()
    # Each int8 layer is off by about 1/254 of |W||x| (test above), a relative error of order 1e-2 on these
    # random 32-wide layers; two blocks of them add up to a few 1e-2 at most before the float LM head. A wrong
    # scale, a transposed weight or a layer left out of the model gives errors of order 1.
    assert 0 < relative < 5e-2


def test_the_backward_through_an_int8_layer_is_the_dequantised_matmul():
    layer = int8.Int8Linear.from_linear(nn.Linear(48, 24))
    x = torch.randn(5, 48, requires_grad=True)
    grad_out = torch.randn(5, 24)
    layer(x).backward(grad_out)
    assert torch.equal(x.grad, grad_out @ (layer.weight_int8.float() * layer.weight_scale[:, None]))
    assert not any(p.requires_grad for p in layer.parameters())  # nothing of its own trains


def test_quantize_weight_rounds_each_row_to_its_own_scale():
    weight = torch.tensor([[0.5, -1.27, 0.0], [0.0, 0.0, 0.0], [2.54, 1.0, -0.01]])
    q, scale = int8.quantize_weight(weight)
    assert torch.allclose(scale, torch.tensor([0.01, 1.0, 0.02]))  # max|row| / 127; an all-zero row gets 1
    assert q.tolist() == [[50, -127, 0], [0, 0, 0], [127, 50, 0]]  # -0.01 / 0.02 = -0.5 rounds to even 0


# ---- training beside the int8 base ------------------------------------------------------------------------------
def _trainer(tmp_path, kind, *flags):
    args = _args(tmp_path, "--trainer", "zo", "--load_int8", "--max_steps", "4", *flags)
    torch.manual_seed(args.seed)
    return run.build_trainer(args, get_task("SST2"), make_model(kind), make_tokenizer(), SAMPLES, [])


def _int8_state(model) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith(("weight_int8", "weight_scale"))}


def _count_folds(monkeypatch) -> list:
    calls = []
    original = lora._FoldHooks.before

    def before(self, *args):
        calls.append(1)
        return original(self, *args)
    monkeypatch.setattr(lora._FoldHooks, "before", before)
    return calls


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_zo_lora_trains_its_adapters_unfolded_beside_an_untouched_int8_base(tmp_path, monkeypatch, kind):
    folds = _count_folds(monkeypatch)
    trainer = _trainer(tmp_path, kind, "--lora")
    model = trainer.model
    bases = [layer.get_base_layer() for _, layer in lora.lora_layers(model)]
    assert bases and all(isinstance(b, int8.Int8Linear) for b in bases)
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    base, head = _int8_state(model), model.get_output_embeddings().weight.detach().clone()
    trainer.train()
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[n], p) for n, p in adapters.items() if "lora_B" in n)  # B leaves zero
    assert all(torch.equal(b, dict(model.named_buffers())[n]) for n, b in base.items())  # bit for bit
    assert torch.equal(model.get_output_embeddings().weight, head)
    assert folds == []  # every adapter ran on PEFT's path: the fold would build W + s B A in float


def test_the_fold_is_used_on_a_float_base(tmp_path, monkeypatch):
    """The control of the test above: without --load_int8 the same run folds its adapters."""
    folds = _count_folds(monkeypatch)
    args = _args(tmp_path, "--trainer", "zo", "--max_steps", "2", "--lora")
    run.build_trainer(args, get_task("SST2"), make_model("llama"), make_tokenizer(), SAMPLES, []).train()
    assert folds


def test_xgblora_merges_exactly_into_float_bases_beside_int8_layers(tmp_path):
    trainer = _trainer(tmp_path, "llama", "--xgblora", "--xgblora_steps_per_iteration", "2")
    model = trainer.model
    bases = dict(lora.base_weights(model))
    assert bases and all(type(lay.get_base_layer()) is nn.Linear for _, lay in lora.lora_layers(model))
    assert int8.has_int8(model) and not any(isinstance(m, int8.Int8Linear) for m in model.get_output_embeddings()
                                            .modules())
    start = {n: w.detach().clone() for n, w in bases.items()}
    frozen = _int8_state(model)
    records = []
    _boosting(trainer).on_merge = records.append
    trainer.train()
    assert [h["step"] for h in _boosting(trainer).history] == [2, 4]
    # The merged deltas live in the float32 bases: replaying the recorded factors on the starting weights gives
    # the trained bases bit for bit (the same float ops as the merges), and the int8 layers never changed.
    fresh = make_model("llama").requires_grad_(False)
    replayed = lora.attach_lora(fresh, r=1, alpha=16)
    for (name, layer), weight in zip(lora.lora_layers(replayed), start.values()):
        layer.get_base_layer().weight.data.copy_(weight)
    lora.replay_merges(replayed, [f for report in records for f in report.factors])
    assert all(torch.equal(w, bases[n]) for n, w in lora.base_weights(replayed).items())
    assert any(not torch.equal(w, start[n]) for n, w in bases.items())
    assert all(torch.equal(b, dict(model.named_buffers())[n]) for n, b in frozen.items())


def test_a_merge_into_an_int8_base_is_refused():
    model = lora.attach_lora(make_model("llama").requires_grad_(False), r=1, alpha=16)
    int8.quantize_frozen_linears_(model)
    with pytest.raises(ValueError, match="cannot merge into the 8-bit base layer Int8Linear"):
        lora.merge_and_reinit(model)


def test_run_py_trains_evaluates_and_saves_with_int8_on_the_cpu(tmp_path, tiny_opt_dir, sst2_dir):
    out = tmp_path / "result.json"
    run.main(["--model_name", str(tiny_opt_dir), "--task_name", "SST2", "--data_dir", str(sst2_dir),
              "--result_file", str(out), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True",
              "--num_train", "8", "--train_set_seed", "0", "--num_eval", "4", "--max_steps", "2",
              "--per_device_train_batch_size", "4", "--train_as_classification", "--trainer", "zo", "--lora",
              "--load_int8", "--save_model"])
    result = json.loads(out.read_text())
    assert result["config"]["load_int8"] and result["train"]["global_step"] == 2 and "accuracy" in result["eval"]
    from transformers import AutoModelForCausalLM
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")  # de-quantised: a plain float model
    assert saved.model.decoder.layers[0].fc1.weight.dtype == torch.float32


# ---- the scripts that measure it (scripts/int8_check.py, scripts/benchmark.py --int8) ---------------------------
def test_compare_scores_counts_differences_agreement_and_accuracy():
    import int8_check
    got = int8_check.compare_scores([[-1.0, -2.0], [-3.0, -1.5], [-0.5, -0.4]],
                                    [[-1.1, -2.0], [-1.0, -1.5], [-0.5, -0.6]], gold=[0, 1, 1])
    assert got["candidates"] == 6 and got["max_abs_logprob_diff"] == pytest.approx(2.0)
    assert got["mean_abs_logprob_diff"] == pytest.approx((0.1 + 2.0 + 0.2) / 6)
    assert got["prediction_agreement"] == pytest.approx(1 / 3)  # sentence 2 flips 1 -> 0, sentence 3 flips 1 -> 0
    assert (got["accuracy_float32"], got["accuracy_int8"]) == (pytest.approx(1.0), pytest.approx(1 / 3))


def test_requantising_loses_a_delta_below_half_a_step_and_keeps_a_large_one():
    import int8_check
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    step = float(int8.quantize_weight(weight)[1].min())  # the finest row's quantisation step
    tiny = int8_check.requantisation(weight, [0.01 * step], torch.Generator().manual_seed(1))
    large = int8_check.requantisation(weight, [100 * float(weight.norm())], torch.Generator().manual_seed(1))
    # Rounded away: only the rows' scales move (their largest elements changed), shifting each row by about as much
    # as the delta, in no relation to it; the error is then at least the whole delta.
    assert tiny["kept"] == pytest.approx(0.0, abs=0.05) and tiny["first"] > 0.95
    assert large["kept"] == pytest.approx(1.0, abs=1e-2) and large["first"] < 1e-2  # ~1/254 of |delta|


def test_the_int8_check_and_benchmark_run_on_a_tiny_model(tmp_path, tiny_opt_dir, sst2_dir):
    import benchmark
    import int8_check
    check = int8_check.main(["--model", str(tiny_opt_dir), "--data-dir", str(sst2_dir), "--out",
                             str(tmp_path / "check.json")])
    assert check["int8_layers"] == 12 and check["kept_float"] == ["lm_head"] and check["scores"]["sentences"] == 8
    assert check["requantising_merges"]["modules"] == 4  # q_proj and v_proj of 2 blocks
    assert all(check["kernel_errors"][k]["layers"] == 12 for k in ("engine_per_row", "fbgemm_per_tensor"))
    bench = benchmark.main(["--int8", "--device", "cpu", "--trainer-step-model", str(tiny_opt_dir), "--data-dir",
                            str(sst2_dir), "--examples", "4", "--repeats", "1", "--warmup", "0", "--variants",
                            "lora,xgblora", "--out", str(tmp_path / "bench.json")])
    times, ratio = bench["times"], bench["ratios"]["int8_step_over_float32/lora"]
    step_int8, step_float = (times[f"int8_bench_step_{b}/lora"]["median"] for b in ("int8", "float32"))
    assert ratio["value"] == step_int8 / step_float and ratio["target"] == "<= 0.6"
    assert {f"int8_mlp_over_float32/{k}" for k in ("engine_per_row", "fbgemm_per_tensor")} <= set(bench["ratios"])
    weights = bench["weights"]
    assert weights["lora"]["int8"]["int8_layers"] == 12 and weights["xgblora"]["int8"]["int8_layers"] == 8


def test_the_zo_noise_comparison_is_the_stated_statistics():
    import int8_zo_noise
    got = int8_zo_noise.compare([1.0, -2.0, 3.0], [1.5, -2.0, 2.0])
    assert got["mean_abs_float32"] == 2.0 and got["mean_abs_int8"] == pytest.approx(5.5 / 3, rel=1e-15)
    # rms of the differences (0.5, 0, -1) over the rms of (1, -2, 3): sqrt(1.25 / 14)
    assert got["rms_diff_over_rms_float32"] == pytest.approx(math.sqrt(1.25 / 14), rel=1e-15)
    assert got["correlation"] == pytest.approx(statistics.correlation([1.0, -2.0, 3.0], [1.5, -2.0, 2.0]), rel=1e-15)


def test_the_zo_noise_script_compares_the_same_adapters_on_both_bases(tmp_path, tiny_opt_dir, sst2_dir):
    """On a tiny model: the adapters start equal on both bases (the script refuses otherwise), one row per eps,
    each with a projected gradient per direction for each base."""
    import int8_zo_noise
    result = int8_zo_noise.main(["--model", str(tiny_opt_dir), "--data-dir", str(sst2_dir), "--examples", "4",
                                 "--eps", "1e-1,1", "--directions", "3", "--out", str(tmp_path / "n.json")])
    assert [r["eps"] for r in result["rows"]] == [0.1, 1.0]
    assert all(len(r["grads"][b]) == 3 for r in result["rows"] for b in ("float32", "int8"))
    assert json.loads((tmp_path / "n.json").read_text()) == result
