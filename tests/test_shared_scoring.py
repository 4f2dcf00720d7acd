"""Shared-prefix candidate scoring (each prompt once) against the row-per-candidate reference (``--scoring rows``).

Every candidate-scored task, on tiny OPT, LLaMA and GPT-2 models, with the byte tokenizer and the one with BPE
merges (the ``tokenizer`` fixture runs both): same scores, same predictions, same training losses and gradients,
and the same ZO projected gradients over 20 steps.

The equivalences run in float64 (``make_model(..., dtype=torch.float64)``, ``--load_float64``). The two layouts pad
to other widths and run other kernels, so they round differently: in float32 scores near 5 differed by a few ulps
(4.8e-7 each), and a projected gradient inherits a loss difference times 1/(2 eps), i.e. ~2.5e-4 at eps 1e-3: no
tolerance then is far from both the rounding and a real bug. float64 rounds 2^-29 = 1.9e-9 times finer: scores
and losses (below 10, sums of < 100 terms) agree to ~1e-13 at worst, so ATOL = 1e-11 has a margin of 100 and is
10^8 below what a wrong position or mask changes (> 1e-3).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mezo_engine import lora, zo
from mezo_engine.data import TrainCollator, encode_candidates, training_feature
from mezo_engine.evaluation import EvalConfig, candidate_scores
from mezo_engine.scoring import batch_loss
from large_models.tasks import Sample, get_task
from large_models.templates import Template
from tests.test_tasks import (_write_boolq, _write_copa, _write_multirc, _write_record, _write_rte_cb, _write_sst2,
                              _write_wic_wsc)
from tests.tiny import make_model

CANDIDATE_TASKS = ["SST2", "RTE", "CB", "BoolQ", "WSC", "WIC", "MultiRC", "Copa", "ReCoRD"]
KINDS = ["opt", "llama", "gpt2"]
F64 = torch.float64
ATOL = 1e-11  # scores and losses in float64, see the module docstring
CLASSIFICATION = {"SST2": True, "RTE": True, "CB": True, "BoolQ": True, "WSC": True, "WIC": True, "MultiRC": True,
                  "Copa": False, "ReCoRD": False}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared_data")
    for write in (_write_sst2, _write_rte_cb, _write_boolq, _write_wic_wsc, _write_multirc, _write_copa,
                  _write_record):
        write(root)
    return root


@pytest.fixture(scope="module")
def models():
    return {kind: make_model(kind, dtype=F64) for kind in KINDS}


def _samples(name, data_dir):
    task = get_task(name)
    return task, task.load("train", data_dir), task.load("validation", data_dir)


def _scores(model, tokenizer, task, samples, demos, scoring):
    cfg = EvalConfig(batch_size=3, progress=False, scoring=scoring)
    return candidate_scores(model, tokenizer, task.template, samples, demos, cfg)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", CANDIDATE_TASKS)
def test_shared_prefix_scores_equal_rows(name, kind, data_dir, models, tokenizer):
    task, train, valid = _samples(name, data_dir)
    samples = valid + train  # more examples, of different lengths, in one batch
    for demos in ([], train[:1]):
        features = [encode_candidates(tokenizer, task.template, s, s.candidates, demos) for s in samples]
        assert any(f.prompt is not None for f in features)  # the shared path is really taken
        shared = _scores(models[kind], tokenizer, task, samples, demos, "shared")
        rows = _scores(models[kind], tokenizer, task, samples, demos, "rows")
        for s, r in zip(shared, rows):
            torch.testing.assert_close(torch.tensor(s), torch.tensor(r), rtol=0, atol=ATOL)
        assert [max(range(len(s)), key=s.__getitem__) for s in shared] == \
               [max(range(len(r)), key=r.__getitem__) for r in rows]


def test_multi_token_answers_take_the_cache_continuation(data_dir, tokenizer):
    """ReCoRD and Copa answers are several tokens: the continuation from the KV cache is exercised."""
    task, train, _ = _samples("Copa", data_dir)
    feature = training_feature(tokenizer, task.template, train[0], True, 512)
    assert feature.prompt is not None and min(feature.option_lens) > 1


class _MergingTemplate(Template):
    """A prompt ending in `` a`` whose answer ``t`` merges with it (``a`` + ``t`` -> ``at``) under BPE."""

    def encode(self, sample):
        return "look a"

    def answer_text(self, sample, candidate):
        return candidate


def test_bpe_merge_across_the_boundary_falls_back_to_rows(bpe_tokenizer, models, caplog):
    sample = Sample(0, {}, "t", ["t", "nd"])
    feature = encode_candidates(bpe_tokenizer, _MergingTemplate(), sample, sample.candidates)
    assert feature.prompt is None  # "look a" + "t" tokenizes as ... "Ġ" "at": the prompt is not a prefix
    task = type("T", (), {"template": _MergingTemplate()})()
    with caplog.at_level(logging.INFO, logger="mezo_engine.evaluation"):
        shared = _scores(models["llama"], bpe_tokenizer, task, [sample], [], "shared")
    rows = _scores(models["llama"], bpe_tokenizer, task, [sample], [], "rows")
    assert shared == rows
    assert "1 of 1 examples scored by rows" in caplog.text


def test_left_truncated_rows_fall_back_to_rows(data_dir, tokenizer, models):
    task, train, valid = _samples("RTE", data_dir)
    feature = encode_candidates(tokenizer, task.template, train[0], train[0].candidates, max_length=20)
    assert feature.prompt is None and all(len(r) == 20 for r in feature.rows)
    untruncated = encode_candidates(tokenizer, task.template, train[0], train[0].candidates)
    assert untruncated.prompt is not None


def _batch(tokenizer, task, samples, classification, shared):
    feats = [training_feature(tokenizer, task.template, s, classification, 512) for s in samples]
    return TrainCollator(0, shared=shared)(feats)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["SST2", "CB", "MultiRC", "Copa", "ReCoRD"])
def test_training_loss_and_gradients_equal_rows(name, kind, data_dir, tokenizer):
    """Regular training: the same loss, and gradients flow through the prompt pass into every weight alike. In
    float64: gradient entries (|g| <= ~1) carry the loss's relative rounding, ~1e-13, so rtol 1e-9 / atol 1e-12 keep
    a margin of 1000 while a gradient that skipped the prompt pass would be off by O(|g|)."""
    task, train, valid = _samples(name, data_dir)
    samples, classification = train + valid, CLASSIFICATION[name]
    grads = {}
    for shared in (True, False):
        model = make_model(kind, dtype=F64)
        model.train()
        loss = batch_loss(model, _batch(tokenizer, task, samples, classification, shared), classification)
        loss.backward()
        grads[shared] = (loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert abs(grads[True][0] - grads[False][0]) < ATOL
    assert len(grads[True][1]) == len(grads[False][1]) > 0
    for a, b in zip(grads[True][1], grads[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode,eps", [("full", 1e-3), ("lora", 1e-2)])
@pytest.mark.parametrize("name", ["SST2", "Copa"])
def test_zo_projected_gradients_follow_rows_for_20_steps(name, mode, eps, data_dir, tokenizer):
    """MeZO with each layout from the same start: projected gradients agree step for step. In float64 the losses
    differ by <= ATOL = 1e-11, so g = (L+ - L-) / (2 eps) differs by <= 2 ATOL / (2 eps) = 1e-8 at eps 1e-3 (the
    parameters then differ by lr * 1e-8 * |z| < 1e-10 per step, which moves later losses far less than ATOL): 1e-7,
    relative where |g| > 1, leaves a margin of 10. MeZO's eps: 1e-3 full-parameter, 1e-2 LoRA."""
    task, train, valid = _samples(name, data_dir)
    samples, classification = train + valid, CLASSIFICATION[name]
    grads = {}
    for shared in (True, False):
        model = make_model("llama", dtype=F64)
        model = lora.attach_lora(model, r=4, alpha=8) if mode == "lora" else model
        batch = _batch(tokenizer, task, samples, classification, shared)
        params = [p for p in model.parameters() if p.requires_grad]

        def loss_fn():
            with torch.no_grad():
                return batch_loss(model, batch, classification).item()
        grads[shared] = [zo.zo_step(params, loss_fn, seed=zo.step_seed(0, step), eps=eps, lr=1e-3,
                                    cache=mode == "lora").projected_grad for step in range(20)]
    for a, b in zip(grads[True], grads[False]):
        assert abs(a - b) <= 1e-7 * max(1.0, abs(b)), (a, b)
    assert min(abs(g) for g in grads[False]) > 0  # the estimates are not zero


@pytest.mark.parametrize("kind", KINDS)
def test_folded_adapter_forward_equals_peft_and_restores_the_base(kind):
    """Folding sums W + s B A before the matmul, PEFT after it: in float64 logits of size ~1 then agree to a few
    1e-16, and 1e-12 leaves a margin of 1000, 10^10 below what the adapter changes (> 1e-2)."""
    model = lora.attach_lora(make_model(kind, dtype=F64), r=4, alpha=8).eval()
    for _, layer in lora.lora_layers(model):
        torch.nn.init.normal_(lora._lora_AB(layer)[1], std=0.5)  # a non-zero adapter, so folding matters
    ids = torch.randint(4, 200, (3, 12))
    with torch.no_grad():
        peft_logits = model(input_ids=ids).logits
        with model.disable_adapter():
            plain_logits = model(input_ids=ids).logits
    lora._lora_AB(lora.lora_layers(model)[0][1])[0].requires_grad_(False)  # as a frozen booster's
    flags = [p.requires_grad for p in model.parameters()]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad(), lora.folded_adapters(model):
        folded = model(input_ids=ids).logits
    assert (peft_logits - plain_logits).abs().max() > 1e-2  # the adapter changes the output
    torch.testing.assert_close(folded, peft_logits, rtol=0, atol=1e-12)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # bit-identical afterwards
    assert not any(h for m in model.modules() for h in (m._forward_hooks, m._forward_pre_hooks))
    assert [p.requires_grad for p in model.parameters()] == flags  # PEFT's re-enable would unfreeze boosters


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_folded_adapters_keep_a_half_precision_models_dtype(dtype):
    """PEFT keeps the adapters of a float16/bfloat16 model in float32; the folded weight W + s B A must still be
    in W's dtype (a float32 weight meets half-precision activations in the matmul and raises, as it did on a GPU
    in bf16). The folded output equals PEFT's within a few ulps of the half-precision logits (PEFT adds s B A x
    after the matmul, folding before it: each rounds W x + s B A x once more; logits ~1, ulp 2^-7 in bf16)."""
    model = lora.attach_lora(make_model("llama").to(dtype), r=4, alpha=8).eval()
    for _, layer in lora.lora_layers(model):
        torch.nn.init.normal_(lora._lora_AB(layer)[1], std=0.5)
    base = lora.lora_layers(model)[0][1].get_base_layer()
    seen = []
    # registered before folding, so it runs before the fold's own post-hook gives W back: it sees the folded weight
    base.register_forward_hook(lambda module, inputs, output: seen.append(module.weight.dtype))
    ids = torch.randint(4, 200, (2, 8))
    with torch.no_grad():
        peft_logits = model(input_ids=ids).logits.float()
        with lora.folded_adapters(model):
            folded = model(input_ids=ids).logits.float()
    assert seen[-1] == dtype and base.weight.dtype == dtype
    ulp = torch.finfo(dtype).eps * max(1.0, float(peft_logits.abs().max()))
    assert (folded - peft_logits).abs().max() <= 8 * ulp


def test_folded_adapters_give_back_the_base_weight_when_a_forward_raises():
    model = lora.attach_lora(make_model("llama"), r=2, alpha=4).eval()
    for _, layer in lora.lora_layers(model):
        torch.nn.init.normal_(lora._lora_AB(layer)[1], std=0.5)
    base = lora.lora_layers(model)[0][1].get_base_layer()
    weight, storage = base.weight.detach().clone(), base.weight.data_ptr()

    def fail(module, inputs):
        assert not torch.equal(module.weight, weight)  # the fold has swapped in W + s B A by now
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), lora.folded_adapters(model):
        base.register_forward_pre_hook(fail)  # runs after the fold's own pre-hook
        model(input_ids=torch.randint(4, 200, (1, 5)))
    assert base.weight.data_ptr() == storage and torch.equal(base.weight, weight)


def test_zo_xgblora_with_folding_follows_peft_across_a_merge(data_dir, tokenizer):
    """Trainer-level: zo XGBLoRA with and without folding, merges at steps 3 and 6: the same losses. In float64
    (``--load_float64``, on tiny OPT: LLaMA's RMSNorm would round to float32 inside). The losses differ by ~1e-15;
    each step the projected gradient turns that into 2e-15 / (2 eps) = 1e-13 and lr 1e-1 into a parameter change
    of ~1e-13 * |z| (|z| < 6); a loss of gradient norm < 10 moves by < 1e-11 after 7 steps (measured: 0). The
    Trainer logs the loss through a float32 accumulator, so two such losses round to the same float32 or, at a
    rounding boundary, to neighbours: the test allows one float32 ulp of the logged loss (6e-8 near 0.7), where in
    float32 the chain from a 5e-7 loss difference came within a few times of the old tolerance 1e-4."""
    import json

    from large_models import run
    logs = {}
    for fold in ("True", "False"):
        out = data_dir / f"fold-{fold}.json"
        run.main(["--model_name", str(_tiny_dir(data_dir, "opt")), "--load_float64", "--task_name", "SST2",
                  "--data_dir", str(data_dir), "--result_file", str(out), "--overwrite", "--disable_tqdm", "True",
                  "--trainer", "zo", "--xgblora", "--xgblora_steps_per_iteration", "3", "--num_train", "3",
                  "--train_set_seed", "0", "--max_steps", "7", "--per_device_train_batch_size", "2",
                  "--train_as_classification", "--learning_rate", "1e-1", "--zo_eps", "1e-2", "--logging_steps", "1",
                  "--no_eval", "--save_strategy", "no", "--zo_fold_adapters", fold])
        result = json.loads(out.read_text())
        logs[fold] = [h["loss"] for h in result["train"]["log_history"] if "loss" in h]
        assert result["train"]["boosting"]["num_merges"] == 2
    assert len(logs["True"]) == 7
    for a, b in zip(logs["True"], logs["False"]):
        assert abs(a - b) <= np.spacing(np.float32(max(abs(a), abs(b)))), (logs["True"], logs["False"])


def _tiny_dir(root, kind="llama"):
    from tests.tiny import save_tiny
    path = root / f"tiny-{kind}"
    return path if (path / "config.json").exists() else save_tiny(kind, path)
