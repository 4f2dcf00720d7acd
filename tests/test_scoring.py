"""Answer log-likelihoods, losses, and batched evaluation on tiny models.

The equivalences (trimmed logits against full logits, padded batches against one row at a time) run in float64:
the two sides run other shapes and kernels, which in float32 round differently by a few ulps of a log-prob near 5
(4.8e-7). float64 rounds 2^-29 = 1.9e-9 times finer, ~1e-15 on scores and losses below 10, so ATOL = 1e-11 (and
rel 1e-12 on losses near 5) leaves a margin of 1000, far below what a wrong token or position changes.
"""
import pytest
import torch
import torch.nn.functional as F

from mezo_engine.data import TrainCollator, collate_rows, encode_option, training_feature
from mezo_engine.evaluation import EvalConfig, predict_candidates, score_rows
from mezo_engine.scoring import batch_loss, mean_option_logprob, token_logprobs
from large_models.tasks import Sample, get_task
from tests.tiny import make_model

F64 = torch.float64
ATOL = 1e-11  # float64 scores, see the module docstring
ROWS = [[5, 9, 12, 40, 41], [7, 8, 40, 41, 42, 43, 44], [3, 50], [60, 61, 62, 63]]
LENS = [2, 3, 1, 3]


def _reference_scores(model, rows, lens):
    """One row at a time, no padding, full logits: the definition of the score."""
    out = []
    for row, n in zip(rows, lens):
        ids = torch.tensor([row])
        logits = model(input_ids=ids).logits[0, :-1]
        lp = F.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        out.append(lp[-n:].mean().item())
    return out


@pytest.mark.parametrize("kind", ["opt", "llama", "gpt2"])
def test_trimmed_logits_on_padded_batch_equal_full_logits_one_at_a_time(kind):
    model = make_model(kind, dtype=F64)
    batch = collate_rows(ROWS, LENS, pad_id=0)
    with torch.no_grad():
        lp, mask = token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["option_len"])
        scores = mean_option_logprob(lp, mask)
        expected = _reference_scores(model, ROWS, LENS)
    assert lp.shape[1] == max(LENS)  # only the answer positions went through the LM head
    torch.testing.assert_close(scores, torch.tensor(expected, dtype=F64), rtol=0, atol=ATOL)


def test_lm_loss_with_trimmed_logits_equals_full_logits():
    model = make_model("llama", dtype=F64)
    batch = collate_rows(ROWS, LENS, pad_id=0)
    with torch.no_grad():
        trimmed = batch_loss(model, batch | {"group": torch.arange(4), "gold_row": torch.arange(4)}, False, True)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)).logits
        total, count = 0.0, 0
        for i, (row, n) in enumerate(zip(ROWS, LENS)):
            width = batch["input_ids"].shape[1]
            lp = F.log_softmax(full[i, width - n - 1:width - 1], -1)
            total -= lp.gather(-1, batch["input_ids"][i, width - n:, None]).sum().item()
            count += n
    assert trimmed.item() == pytest.approx(total / count, rel=1e-12)


def test_classification_loss_is_cross_entropy_over_candidate_scores():
    model = make_model("opt", dtype=F64)
    batch = collate_rows(ROWS, LENS, pad_id=0)
    batch |= {"group": torch.tensor([0, 0, 1, 1]), "gold_row": torch.tensor([1, 2])}
    with torch.no_grad():
        loss = batch_loss(model, batch, True).item()
    s = torch.tensor(_reference_scores(model, ROWS, LENS), dtype=F64)
    expected = (F.cross_entropy(s[None, :2], torch.tensor([1])) + F.cross_entropy(s[None, 2:], torch.tensor([0]))) / 2
    assert loss == pytest.approx(expected.item(), rel=1e-12)


def test_batched_scoring_equals_one_at_a_time():
    model = make_model("gpt2", dtype=F64)
    batched = score_rows(model, ROWS, LENS, pad_id=0, batch_size=3)
    single = score_rows(model, ROWS, LENS, pad_id=0, batch_size=1)
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(single), rtol=0, atol=ATOL)


def _sst2_samples():
    texts = ["a gripping , funny film", "dull and lifeless", "the best movie of the year", "a mess"]
    return [Sample(i, {"sentence": t, "label": i % 2}, i % 2, [0, 1]) for i, t in enumerate(texts)]


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_batched_predictions_equal_one_at_a_time_with_demonstrations(kind, tokenizer):
    model, task = make_model(kind), get_task("SST2")
    samples = _sst2_samples()
    demos = samples[:2]
    batched = predict_candidates(model, tokenizer, task.template, samples, demos, EvalConfig(batch_size=8, progress=False))
    single = predict_candidates(model, tokenizer, task.template, samples, demos, EvalConfig(batch_size=1, progress=False))
    assert batched == single


def test_option_tokens_are_the_answer(tokenizer):
    task = get_task("SST2")
    sample = _sst2_samples()[0]
    ids, n = encode_option(tokenizer, task.template, sample, 1)
    assert tokenizer.decode(ids[-n:]) == " great"
    ids_t, n_t = encode_option(tokenizer, task.template, sample, 0)
    assert tokenizer.decode(ids_t[-n_t:]) == " terrible"


def test_training_features_and_collator(tokenizer):
    task = get_task("SST2")
    samples = _sst2_samples()
    feats = [training_feature(tokenizer, task.template, s, True, 512) for s in samples[:2]]
    batch = TrainCollator(pad_id=0, shared=False)(feats)
    assert batch["group"].tolist() == [0, 0, 1, 1]
    assert batch["gold_row"].tolist() == [0, 3]  # sample 0 gold label 0 -> row 0; sample 1 gold label 1 -> row 3
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: every row ends with a real token
    lm = training_feature(tokenizer, task.template, samples[1], False, 512)
    assert len(lm.rows) == 1 and tokenizer.decode(lm.rows[0][-lm.option_lens[0]:]) == " great"


def _copa_sample():
    data = {"premise": "The toilet overflowed.", "question": "effect", "choice1": "The toilet filled with water.",
            "choice2": "The toilet was fixed."}
    return Sample(0, data, data["choice1"], [data["choice1"], data["choice2"]])


def test_copa_answer_span_includes_the_word_after_the_space(bpe_tokenizer):
    """COPA's prompt ends in a space ("... so "); with a BPE that merges " the", the answer is " the toilet ...".

    Counting the answer on the prompt with its trailing space kept (the old code) loses the first token.
    """
    task, sample = get_task("Copa"), _copa_sample()
    ids, n = encode_option(bpe_tokenizer, task.template, sample, sample.candidates[0])
    assert bpe_tokenizer.decode(ids[-n:]) == " the toilet filled with water."
    assert bpe_tokenizer.convert_ids_to_tokens(ids[-n:])[0] == "Ġthe"
    feature = training_feature(bpe_tokenizer, task.template, sample, False, 512)
    assert bpe_tokenizer.decode(feature.rows[0][-feature.option_lens[0]:]) == " the toilet filled with water."


def test_answer_span_is_counted_without_demonstrations(tokenizer):
    """Demonstrations come before the prompt and never change the answer span (counted on the bare prompt)."""
    task, sample = get_task("Copa"), _copa_sample()
    demo = Sample(1, dict(_copa_sample().data, premise="The sink broke."), "The toilet was fixed.",
                  ["The toilet filled with water.", "The toilet was fixed."])
    bare = encode_option(tokenizer, task.template, sample, sample.candidates[1])
    with_demos = encode_option(tokenizer, task.template, sample, sample.candidates[1], [demo])
    assert with_demos[1] == bare[1]
    assert tokenizer.decode(with_demos[0][-with_demos[1]:]) == " the toilet was fixed."
    assert tokenizer.decode(with_demos[0]).startswith("The sink broke so the toilet was fixed.\n\nThe toilet")


def test_multirc_paragraph_loses_its_leading_space(tokenizer):
    task = get_task("MultiRC")
    sample = Sample(0, {"paragraph": " Sent 1: It rained.", "question": "Did it rain?", "answer": "yes",
                        "label": 1}, 1, [0, 1])
    ids, _ = encode_option(tokenizer, task.template, sample, 1)
    assert tokenizer.decode(ids).startswith("Sent 1: It rained.")
