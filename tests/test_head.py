"""LM head modes: --untie_emb, --head_tuning, --linear_probing (alone and before MeZO) on tiny OPT, LLaMA, GPT-2."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, HfArgumentParser

from large_models import run
from mezo_engine import head
from large_models.arguments import ArgumentError, Arguments, parse_args
from mezo_engine.data import encode_prompt
from mezo_engine.evaluation import evaluate
from mezo_engine.linear_probe import (ProbeError, features, fit_probe, head_rows, linear_probe, probe_settings,
                                       write_head)
from mezo_engine.models import load_model_and_tokenizer
from large_models.tasks import Sample, get_task
from tests.task_fixtures import write_sst2
from tests.tiny import make_model, make_tokenizer

KINDS = ["opt", "llama", "gpt2"]
WORDS = (" great", " terrible", "Yes", "No", "Maybe")  # SST-2's and CB's label words, one token each
POSITIVE = ["a gripping , funny film", "the best movie of the year", "warm and wise", "a joy to watch",
            "bright and moving", "sharp , clever fun"]
NEGATIVE = ["dull and lifeless", "a mess from start to end", "boring", "painfully slow", "flat , tired jokes",
            "a waste of time"]


@pytest.fixture(scope="module")
def word_tokenizer():
    tok = make_tokenizer(merges=True, words=WORDS)
    assert all(len(tok.encode(w)) == 1 for w in WORDS)
    return tok


def word_model(kind, tokenizer, **config):
    return make_model(kind, vocab_size=len(tokenizer), **config)


@pytest.fixture(scope="module", params=KINDS)
def word_model_dir(request, tmp_path_factory, word_tokenizer):
    """A tiny model of each family (OPT and GPT-2 tied, LLaMA untied) whose tokenizer has one-token label words."""
    path = tmp_path_factory.mktemp(f"words-{request.param}")
    word_model(request.param, word_tokenizer).save_pretrained(path)
    word_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sst2_twelve_dir(tmp_path_factory):
    """SST-2 files with this module's twelve sentences; dev sentences are the training sentences."""
    return write_sst2(tmp_path_factory.mktemp("data"), POSITIVE, NEGATIVE)


def sst2_samples():
    return [Sample(i, {"sentence": t, "label": y}, y, [0, 1])
            for i, (t, y) in enumerate([(t, 1) for t in POSITIVE] + [(t, 0) for t in NEGATIVE])]


def cb_samples():
    texts = [("the cat sat on the mat", "a cat sat"), ("it rained all day", "the ground is dry"),
             ("she sold the car", "she bought a bike"), ("he runs every day", "he is fit"),
             ("the shop is shut", "it is late"), ("we won the game", "we lost"), ("the tea is hot", "it burns"),
             ("the dog barked", "a dog made noise"), ("snow fell at night", "it is summer"),
             ("they moved away", "they will come back"), ("the lamp is on", "it is dark"),
             ("my phone died", "the battery is empty"), ("the door was open", "someone left"),
             ("the bread is old", "it is fresh"), ("he smiled", "he is happy")]
    return [Sample(i, {"premise": p, "hypothesis": h, "label": i % 3}, i % 3, [0, 1, 2])
            for i, (p, h) in enumerate(texts)]


# ---- untying ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_untie_copies_the_head_and_a_reload_keeps_it_apart(kind, tmp_path):
    model = make_model(kind, tie=True)
    ids = torch.tensor([[5, 9, 40, 77, 3]])
    emb = model.get_input_embeddings().weight.detach().clone()
    logits = model(ids).logits
    assert head.is_tied(model) and head.untie_embeddings(model) is True and not head.is_tied(model)
    assert torch.equal(model(ids).logits, logits)  # an exact copy
    with torch.no_grad():
        head.lm_head(model).weight.add_(torch.randn_like(emb))
    assert torch.equal(model.get_input_embeddings().weight, emb)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    reloaded.tie_weights()
    assert not head.is_tied(reloaded) and reloaded.config.tie_word_embeddings is False
    assert torch.equal(reloaded.get_input_embeddings().weight, emb)
    assert torch.equal(head.lm_head(reloaded).weight, head.lm_head(model).weight)
    assert not torch.equal(head.lm_head(reloaded).weight, emb)
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert head.untie_embeddings(reloaded) is False


# ---- head tuning ---------------------------------------------------------------------------------------------

def test_train_head_only_freezes_all_but_the_head():
    model = make_model("llama")  # untied
    assert head.train_head_only(model) == ["lm_head.weight"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["lm_head.weight"]
    tied = make_model("gpt2")
    assert head.train_head_only(tied) == ["transformer.wte.weight"]


def test_backprop_through_a_tied_head_takes_the_gradient_of_the_head_alone():
    """As upstream (decoder under no_grad): the shared weight's gradient is that of its use as the head."""
    ids = torch.tensor([[5, 9, 40, 77, 3, 120, 8]])

    def loss_of(logits):
        return F.cross_entropy(logits[0, :-1], ids[0, 1:])

    model = make_model("opt")
    head.train_head_only(model)
    loss_of(model(ids).logits).backward()
    weight = head.lm_head(model).weight
    assert all(p.grad is None for p in model.parameters() if p is not weight)
    hidden = []
    handle = head.lm_head(model).register_forward_hook(lambda m, a, o: hidden.append(a[0].detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    ref_weight = weight.detach().clone().requires_grad_()
    loss_of(hidden[0] @ ref_weight.T).backward()
    torch.testing.assert_close(weight.grad, ref_weight.grad, rtol=1e-5, atol=1e-7)
    both_uses = make_model("opt")  # the gradient through the embedding lookup too: different
    loss_of(both_uses(ids).logits).backward()
    assert not torch.allclose(both_uses.get_input_embeddings().weight.grad, ref_weight.grad, atol=1e-6)


def _run(tmp_path, model_dir, data_dir, *flags):
    out = tmp_path / "result.json"
    run.main(["--model_name", str(model_dir), "--task_name", "SST2", "--data_dir", str(data_dir),
              "--result_file", str(out), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True",
              "--per_device_eval_batch_size", "4", "--train_set_seed", "0", *flags])
    return json.loads(out.read_text())


def _changed(before, after) -> set:
    a, b = before.state_dict(), after.state_dict()
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def _head_names(kind):
    emb = {"opt": "model.decoder.embed_tokens.weight", "llama": "model.embed_tokens.weight",
           "gpt2": "transformer.wte.weight"}[kind]
    return emb, "lm_head.weight"


@pytest.mark.parametrize("trainer, untie", [("zo", False), ("regular", False), ("zo", True)])
def test_head_tuning_changes_only_the_head_and_saves_it(tmp_path, word_model_dir, sst2_twelve_dir, trainer, untie):
    kind = AutoModelForCausalLM.from_pretrained(word_model_dir).config.model_type
    result = _run(tmp_path, word_model_dir, sst2_twelve_dir, "--trainer", trainer, "--head_tuning", "--num_train", "8",
                  "--max_steps", "3", "--per_device_train_batch_size", "4", "--train_as_classification",
                  "--learning_rate", "1e-2", "--zo_eps", "1e-2", "--save_model", *(["--untie_emb"] if untie else []))
    assert result["mode"] == "head" and result["train"]["global_step"] == 3
    before = AutoModelForCausalLM.from_pretrained(word_model_dir)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model").eval()
    emb, lm = _head_names(kind)
    tied = before.config.tie_word_embeddings and not untie  # OPT and GPT-2 tie; LLaMA does not
    assert _changed(before, after) == ({emb, lm} if tied else {lm})
    assert head.is_tied(after) == tied
    assert result["train"]["trainable"] == [emb if tied else lm]
    task = get_task("SST2")
    reloaded = evaluate(after, load_model_and_tokenizer(str(word_model_dir))[1], task,
                        task.load("validation", sst2_twelve_dir))
    assert [p.predicted_candidate for p in reloaded["predictions"]] == result["eval_predictions"]


# ---- linear probing: the pieces -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_probe_features_are_the_head_input_that_predicts_the_label_word(kind, word_tokenizer):
    model, task = word_model(kind, word_tokenizer), get_task("SST2")
    samples = sst2_samples()
    X, y = features(model, word_tokenizer, task, samples, batch_size=5)
    assert X.shape == (len(samples), 32) and X.dtype == np.float32
    words = {0: word_tokenizer.encode(" terrible")[0], 1: word_tokenizer.encode(" great")[0]}
    assert y.tolist() == [words[s.correct_candidate] for s in samples]
    weight = head.lm_head(model).weight.detach()
    for i, s in enumerate(samples):
        prompt = torch.tensor([encode_prompt(word_tokenizer, task.template, s)])
        with torch.no_grad():
            last = model(prompt).logits[0, -1]
        torch.testing.assert_close(torch.from_numpy(X[i]) @ weight.T, last, rtol=1e-4, atol=1e-5)


def test_probe_takes_every_token_of_a_longer_answer_as_upstream():
    tok = make_tokenizer()  # no merges: " great" is six tokens, " terrible" nine
    model, task, samples = make_model("opt"), get_task("SST2"), sst2_samples()
    X, y = features(model, tok, task, samples, batch_size=4)
    expected = [t for s in samples for t in tok.encode(" " + task.template.verbalizer[s.correct_candidate])]
    assert y.tolist() == expected and X.shape == (len(expected), 32)


def test_binary_coefficients_become_two_opposite_half_rows():
    weight, bias = head_rows(np.array([[2.0, -4.0]]), np.array([1.0]))
    np.testing.assert_array_equal(weight, [[-1.0, 2.0], [1.0, -2.0]])
    np.testing.assert_array_equal(bias, [-0.5, 0.5])
    three = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(head_rows(three)[0], three)


def test_probe_settings_are_upstreams():
    early, full = probe_settings(True, False), probe_settings(False, False)
    assert (early["tol"], early["max_iter"], full["tol"], full["max_iter"]) == (0.01, 1000, 1e-4, 5000)
    assert full["Cs"] == 10 and full["fit_intercept"] is False and full["scoring"] == "accuracy"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    clf = fit_probe(X, (X[:, 0] > 0).astype(int), early_stopping=True)
    assert (clf.tol, clf.max_iter, clf.fit_intercept) == (0.01, 1000, False) and len(clf.Cs_) == 10


def test_probe_with_fewer_samples_of_every_answer_than_folds_is_refused():
    """scikit-learn's stratified 5-fold split needs five samples of some answer; four and two are refused by us,
    five and one are fitted."""
    with pytest.raises(ProbeError, match="at most 4 of any one answer: the probe's 5-fold"):
        fit_probe(np.eye(6, 3), np.array([7, 7, 7, 7, 9, 9]))
    assert fit_probe(np.eye(6, 3), np.array([7, 7, 7, 7, 7, 9]), early_stopping=True).classes_.tolist() == [7, 9]


def test_probe_with_a_single_answer_is_refused():
    with pytest.raises(ProbeError, match="at least two different answers"):
        fit_probe(np.zeros((6, 3)), np.full(6, 7))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("task_name, samples", [("SST2", sst2_samples), ("CB", cb_samples)])
def test_written_head_reproduces_the_probe(kind, task_name, samples, word_tokenizer):
    """The label words' logits are the regression's decision values: same predictions and probabilities on the
    training features, and evaluation (shared-prefix scoring, unchanged) predicts what the regression predicts."""
    model, task, samples = word_model(kind, word_tokenizer, tie=True), get_task(task_name), samples()
    X, y = features(model, word_tokenizer, task, samples)
    clf = fit_probe(X, y)
    assert len(set(clf.predict(X))) > 1  # the check below would be weak with one predicted class
    head.untie_embeddings(model)
    emb = model.get_input_embeddings().weight.detach().clone()
    write_head(model, clf.classes_, clf.coef_)
    logits = torch.from_numpy(X) @ head.lm_head(model).weight.detach()[torch.as_tensor(clf.classes_)].T
    assert clf.classes_[logits.argmax(-1).numpy()].tolist() == clf.predict(X).tolist()
    np.testing.assert_allclose(logits.softmax(-1).numpy(), clf.predict_proba(X), atol=1e-5)
    assert torch.equal(model.get_input_embeddings().weight, emb)
    word = {c: word_tokenizer.encode(task.template.answer_text(samples[0], c))[-1] for c in samples[0].candidates}
    predicted = evaluate(model, word_tokenizer, task, samples)["predictions"]
    assert [word[p.predicted_candidate] for p in predicted] == clf.predict(X).tolist()


def test_linear_probe_refuses_a_tied_head(word_tokenizer):
    with pytest.raises(ProbeError, match="untie it first"):
        linear_probe(word_model("opt", word_tokenizer), word_tokenizer, get_task("SST2"), sst2_samples())


# ---- flags ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--task_name", "SQuAD", "--linear_probing"], "--linear_probing: task SQuAD is generation"),
    (["--task_name", "DROP", "--linear_probing", "--trainer", "zo", "--num_train", "4"], "task DROP is generation"),
    (["--head_tuning", "--trainer", "zo", "--num_train", "4", "--lora"], "--head_tuning and --lora: choose one"),
    (["--head_tuning", "--trainer", "zo", "--num_train", "4", "--xgblora"], "--head_tuning and --xgblora"),
    (["--head_tuning", "--trainer", "zo", "--num_train", "4", "--prefix_tuning"], "--head_tuning and --prefix_tuning"),
    (["--head_tuning"], "--head_tuning with --trainer none: nothing would train"),
    (["--linear_probing"], "--linear_probing with --num_train 0"),
    (["--linear_probing", "--num_train", "4"],
     "--linear_probing with --num_train 4: fewer training examples than the probe's 5 cross-validation folds; "
     "give --num_train >= 5"),
    (["--trainer", "zo", "--linear_probing", "--num_train", "8", "--num_dev", "4"],
     "--linear_probing with --num_train 8 and --num_dev 4: fewer training examples than the probe's 5"),
    (["--lp_early_stopping"], "--lp_early_stopping: needs --linear_probing"),
])
def test_bad_head_flags_are_refused_by_name(flags, message):
    with pytest.raises(ArgumentError) as err:
        HfArgumentParser(Arguments).parse_args_into_dataclasses(args=flags)
    assert message in str(err.value)


def test_head_flags_name_their_own_run():
    base = ["--task_name", "SST2", "--model_name", "org/opt-1.3b", "--trainer", "zo", "--num_train", "8"]
    variants = ([], ["--head_tuning"], ["--untie_emb"], ["--linear_probing"],
                ["--linear_probing", "--lp_early_stopping"])
    assert len({run.result_path(parse_args(base + v), 0, False).name for v in variants}) == len(variants)


@pytest.mark.parametrize("flags, mode", [
    ([], "ft"), (["--trainer", "zo", "--head_tuning"], "head"), (["--linear_probing"], "lp"),
    (["--trainer", "zo", "--linear_probing"], "lp-ft"),
    (["--trainer", "zo", "--linear_probing", "--head_tuning"], "lp-head"),
    (["--trainer", "regular", "--linear_probing", "--lora"], "lp-lora"),
])
def test_mode_names(flags, mode):
    assert parse_args(["--num_train", "8", *flags]).mode == mode


# ---- end to end ----------------------------------------------------------------------------------------------

def test_linear_probing_alone_writes_the_probe_and_evaluates_with_it(tmp_path, word_model_dir, sst2_twelve_dir):
    """Every training sentence three times; the dev sentences are the same, so evaluation accuracy must equal the
    probe's training accuracy."""
    result = _run(tmp_path, word_model_dir, sst2_twelve_dir, "--trainer", "none", "--linear_probing",
                  "--num_train", "36", "--lp_early_stopping")
    probe = result["head"]["linear_probe"]
    assert result["mode"] == "lp" and "train" not in result and result["num_train"] == 36
    assert probe["num_samples"] == 36 and probe["early_stopping"] and probe["C"] > 0
    assert sorted(probe["label_tokens"]) == [" great", " terrible"]
    assert result["eval"]["accuracy"] == pytest.approx(probe["train_accuracy"]) and probe["train_accuracy"] > 0.5
    assert result["head"]["untied"] == AutoModelForCausalLM.from_pretrained(word_model_dir).config.tie_word_embeddings


@pytest.mark.parametrize("extra, mode", [([], "lp-ft"), (["--head_tuning"], "lp-head")])
def test_linear_probing_then_mezo(tmp_path, word_tokenizer, sst2_twelve_dir, extra, mode):
    model_dir = tmp_path / "model"
    word_model("gpt2", word_tokenizer).save_pretrained(model_dir)
    word_tokenizer.save_pretrained(model_dir)
    result = _run(tmp_path, model_dir, sst2_twelve_dir, "--trainer", "zo", "--linear_probing", "--num_train", "20",
                  "--max_steps", "2", "--per_device_train_batch_size", "4", "--train_as_classification",
                  "--learning_rate", "1e-3", "--zo_eps", "1e-2", "--save_model", *extra)
    assert result["mode"] == mode and result["train"]["global_step"] == 2
    assert result["head"]["untied"] is True and 0.5 <= result["head"]["linear_probe"]["train_accuracy"] <= 1.0
    before = AutoModelForCausalLM.from_pretrained(model_dir)
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    assert not head.is_tied(after)
    changed = _changed(before, after)
    if extra:  # only the head: the probe's rows, then MeZO
        assert changed == {"lm_head.weight"}
    else:
        assert {"lm_head.weight", "transformer.h.0.attn.c_attn.weight"} <= changed


def test_a_training_set_with_one_answer_stops_with_the_task_named(tmp_path, word_tokenizer):
    word_model("opt", word_tokenizer).save_pretrained(tmp_path / "model")
    word_tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "SST-2").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "SST-2" / name).write_text("sentence\tlabel\n" + "".join(f"{t} \t1\n" for t in POSITIVE))
    with pytest.raises(SystemExit) as stop:
        _run(tmp_path, tmp_path / "model", tmp_path, "--linear_probing", "--num_train", "6")
    assert str(stop.value).startswith("run.py: error: --linear_probing on task SST2: every one of the")
