"""medium_models/scoring.py with the engine: label-word logits at the mask on tiny RoBERTa and BERT (the head on
the mask rows equals the full forward; padding changes nothing), the causal route, STS-B's regression loss and
readout, copies of an example averaged, bit-exact restore around a zo estimate, XGBLoRA merges that keep the
function, and the trainer's merge count.

The equivalences run in float64 models: the two sides run other shapes (the head on the mask rows against the full
forward, a padded batch against one row, W + s B A merged against the adapter beside W), which in float32 round by
a few ulps of logits of size ~1-10 (an ulp is up to 9.5e-7) against tolerances of 1e-5. float64 rounds 2^-29 = 1.9e-9
times finer, ~1e-15, so ATOL = 1e-12 leaves a margin of 1000, far below what a wrong row or a lost merge changes.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from medium_models.prompts import encode, label_word_ids
from medium_models.scoring import Collator, Feature, LabelLoss, RegressionLoss, label_logits, metrics, predict
from medium_models.tasks import TASKS
from mezo_engine import lora, zo
from tests.tiny import make_mlm, make_model, make_tokenizer

F64 = torch.float64
ATOL = 1e-12  # float64 logits, see the module docstring
SENTENCES = [["a great film , really"], ["it is terrible"], ["the plot , well , it is great and it is long"],
             ["terrible"]]


def features(tokenizer, causal=False, labels=(1, 0, 1, 0)):
    segments = "token_type_ids" in tokenizer.model_input_names and not causal
    out = []
    for texts, label in zip(SENTENCES, labels):
        e = encode(tokenizer, TASKS["SST-2"].template, texts, causal, 128, segments=segments)
        out.append(Feature(e.ids, e.position, label, e.token_type_ids))
    return out


@pytest.fixture(params=["roberta", "bert"])
def mlm(request):
    model, tokenizer = make_mlm(request.param, dtype=F64)
    return model, tokenizer, label_word_ids(tokenizer, ["terrible", "great"])


@pytest.fixture
def scored(mlm):
    """The masked LM, its label ids, the features, their collator, one batch of all four and its label logits."""
    model, tokenizer, ids = mlm
    feats = features(tokenizer)
    collate = Collator(tokenizer.pad_token_id, causal=False)
    batch = collate(feats)
    return model, ids, feats, collate, batch, label_logits(model, batch, ids, causal=False)


def test_mask_logits_equal_the_full_forward_and_do_not_depend_on_padding(scored):
    model, ids, feats, collate, batch, got = scored
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    full = model(**inputs).logits[torch.arange(4), batch["position"]][:, ids]
    assert got.dtype == F64 and torch.allclose(got, full, rtol=0, atol=ATOL)
    alone = torch.cat([label_logits(model, collate([f]), ids, causal=False) for f in feats])
    assert torch.allclose(got, alone, rtol=0, atol=ATOL)
    assert got.shape == (4, 2) and not torch.allclose(got[0], got[1])


def test_causal_route_scores_the_next_token_after_the_prompt():
    model, tokenizer = make_model("gpt2", dtype=F64), make_tokenizer(merges=True, words=[" terrible", " great"])
    model.resize_token_embeddings(len(tokenizer))
    ids = label_word_ids(tokenizer, ["terrible", "great"])
    feats = features(tokenizer, causal=True)
    got = label_logits(model, Collator(tokenizer.pad_token_id, causal=True)(feats), ids, causal=True)
    for row, f in zip(got, feats):
        plain = model(input_ids=torch.tensor([f.ids])).logits[0, -1, ids]
        assert torch.allclose(row, plain, rtol=0, atol=ATOL)


def test_loss_is_cross_entropy_over_label_words_and_predictions_follow_the_logits(scored):
    model, ids, feats, collate, batch, logits = scored
    loss = LabelLoss(ids, causal=False)(model, batch)
    assert loss.item() == F.cross_entropy(logits, batch["labels"]).item()  # the same ops on the same batch
    predicted = predict(model, feats, collate, LabelLoss(ids, causal=False), batch_size=3)
    assert predicted == logits.argmax(-1).tolist()
    scores = metrics([f.label for f in feats], predicted, "mcc")
    assert scores["accuracy"] == sum(p == f.label for p, f in zip(predicted, feats)) / 4 and "mcc" in scores


def test_zo_estimate_restores_lora_parameters_bit_for_bit(mlm):
    model, tokenizer, ids = mlm
    model = lora.attach_lora(model, r=4, alpha=8)
    params = lora.trainable_lora_parameters(model)
    for p in params:  # B is zero at start: make the adapter count
        torch.nn.init.normal_(p.data, std=0.1)
    before = [p.detach().clone() for p in params]
    batch, objective = Collator(tokenizer.pad_token_id, False)(features(tokenizer)), LabelLoss(ids, False)
    with torch.no_grad():
        pairs = zo.estimate(params, lambda: objective(model, batch).item(), [7, 8], 1e-2, cache=True)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(math.isfinite(g) and g != 0 for _, g in pairs)


def test_xgblora_merge_keeps_the_function_and_restarts_the_booster(mlm):
    model, tokenizer, ids = mlm
    model = lora.attach_lora(model, r=1, alpha=16)
    assert {n.split(".")[-1] for n, _ in lora.lora_layers(model)} == {"query", "value"}
    for _, layer in lora.lora_layers(model):
        for p in layer.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p.data, std=0.2)
    batch = Collator(tokenizer.pad_token_id, False)(features(tokenizer))
    with torch.no_grad():
        before = label_logits(model, batch, ids, False)
        report = lora.merge_and_reinit(model, generator=torch.Generator().manual_seed(0))
        after = label_logits(model, batch, ids, False)
    assert report.num_modules == 4 and report.delta_norm > 0  # query and value of 2 layers
    assert torch.allclose(before, after, rtol=0, atol=ATOL)
    assert all(float(layer.lora_B["default"].weight.detach().abs().sum()) == 0 for _, layer in lora.lora_layers(model))


def test_regression_loss_is_the_kl_divergence_to_the_scaled_score(scored):
    """STS-B: KL([1 - y', y'] || softmax(logits)), averaged over the batch; zero where the softmax equals the
    target, which LM-BFF's log_target=True version is not (it reads the probabilities as log-probabilities)."""
    model, ids, feats, collate, batch, logits = scored
    objective = RegressionLoss(ids, causal=False, bounds=(0.0, 5.0))
    batch["labels"] = torch.tensor([4.0, 1.0, 2.5, 0.0], dtype=F64)
    t = torch.tensor([[0.2, 0.8], [0.8, 0.2], [0.5, 0.5], [1.0, 0.0]], dtype=F64)
    logp = logits.log_softmax(-1)
    by_hand = sum(sum(ti * (math.log(ti) - li) for ti, li in zip(tr.tolist(), lr.tolist()) if ti > 0)
                  for tr, lr in zip(t, logp)) / 4
    assert math.isclose(objective(model, batch).item(), by_hand, rel_tol=0, abs_tol=ATOL)
    exact = torch.nn.functional.kl_div(t.clamp_min(1e-300).log(), t, reduction="batchmean")
    assert abs(exact.item()) < ATOL  # the minimum is the target itself
    lm_bff = torch.nn.KLDivLoss(log_target=True)(t.clamp_min(1e-300).log(), t)
    assert lm_bff.item() > 0.1
    assert objective.readout(logits[:1]) == pytest.approx(5 * logits[0].softmax(-1)[1].item(), abs=ATOL)


def test_copies_of_an_example_are_averaged(scored):
    """With demonstrations an example has several prompts: classification averages their logits, a regression
    its predicted scores."""
    model, ids, feats, collate, batch, logits = scored
    labels = LabelLoss(ids, causal=False)
    assert predict(model, feats, collate, labels, batch_size=3, copies=2) == \
        [int(logits[:2].mean(0).argmax()), int(logits[2:].mean(0).argmax())]
    regression = RegressionLoss(ids, causal=False, bounds=(0.0, 5.0))
    got = predict(model, feats, collate, regression, batch_size=3, copies=4)
    assert got == pytest.approx([5 * logits.softmax(-1)[:, 1].mean().item()], abs=ATOL)
    scores = metrics([0.5, 1.0, 4.0], [0.3, 1.4, 3.0], "pearson")
    assert set(scores) == {"pearson", "spearman"} and scores["spearman"] == 1.0 and scores["pearson"] < 1
