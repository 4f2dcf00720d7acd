"""Linear probing of masked LMs (medium_models/probe.py): the probe's features are what the decoder reads at the
mask, its fit is written into the label words' decoder rows so that their logits are the regression's decision
values; through run.py the probe alone (upstream's --trainer linearhead) and LP-then-MeZO (--from_linearhead).

The decision-value check runs in float64: the probe's features are handed to scikit-learn in float32 (as upstream),
so the logits computed by the model in float64 and the decision function on the float32 features differ by the
float32 rounding of the features, ~6e-8 relative to each term of the dot product: 1e-4 of the largest decision
value covers it, while a row written to the wrong label word flips the sign of every decision value.
"""
import json

import numpy as np
import pytest
import torch

from medium_models import run
from medium_models.probe import linear_probe, probe_features
from medium_models.prompts import encode, label_word_ids
from medium_models.scoring import Collator, Feature, all_label_logits
from medium_models.tasks import TASKS
from mezo_engine import head
from tests.lmbff_fixtures import write_kshot
from tests.tiny import make_mlm, save_tiny_mlm

SENTENCES = ["a great film", "great fun", "really great", "it is terrible", "terrible plot", "so terrible",
             "great acting , great story", "terrible , just terrible", "a great great day", "terrible terrible"]


def train_features(tokenizer):
    segments = "token_type_ids" in tokenizer.model_input_names
    out = []
    for text in SENTENCES:
        e = encode(tokenizer, TASKS["SST-2"].template, [text], False, 128, segments=segments)
        out.append(Feature(e.ids, e.position, int("great" in text and "terrible" not in text), e.token_type_ids))
    return out


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_probe_writes_its_decision_values_into_the_label_word_rows(kind):
    model, tokenizer = make_mlm(kind, dtype=torch.float64)
    head.untie_embeddings(model)
    ids = label_word_ids(tokenizer, ["terrible", "great"])
    feats, collate = train_features(tokenizer), Collator(tokenizer.pad_token_id, causal=False)
    X, y = probe_features(model, feats, collate, ids, batch_size=3)
    assert X.shape == (10, 32) and list(y) == [ids[f.label] for f in feats]
    embeddings = model.get_input_embeddings().weight.detach().clone()
    other = model.get_output_embeddings().weight.detach().clone()
    summary = linear_probe(model, feats, collate, ids, early_stopping=False, batch_size=4)
    logits = all_label_logits(model, feats, collate, ids, batch_size=4).numpy()
    from sklearn.linear_model import LogisticRegressionCV
    clf = LogisticRegressionCV(Cs=10, fit_intercept=True, scoring="accuracy", random_state=0, max_iter=5000,
                               l1_ratios=(0.0,), use_legacy_attributes=False).fit(X, y)
    low, high = (ids.index(c) for c in clf.classes_)  # classes_ in token-id order; rows -c/2 and c/2
    decision = clf.decision_function(X)  # the log-odds of classes_[1]
    assert np.abs(decision).max() > 1e-3  # a fit that says something, so a swapped row would show
    assert np.allclose(logits[:, high] - logits[:, low], decision, rtol=0, atol=1e-4 * np.abs(decision).max())
    assert summary["train_accuracy"] == clf.score(X, y) and summary["num_samples"] == 10
    weight = model.get_output_embeddings().weight.detach()
    rest = [i for i in range(weight.shape[0]) if i not in ids]
    assert torch.equal(weight[rest], other[rest]) and not torch.equal(weight[ids], other[ids])
    assert torch.equal(model.get_input_embeddings().weight, embeddings)  # untied: the embeddings stay


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return (save_tiny_mlm("roberta", tmp_path_factory.mktemp("tiny-roberta")),
            write_kshot(TASKS["SST-2"], tmp_path_factory.mktemp("kshot"), k=5, seed=42))


@pytest.mark.parametrize("trainer", ["none", "zo"])
def test_probe_alone_and_lp_then_mezo_through_run(dirs, tmp_path, trainer):
    model_dir, data_dir = dirs
    result = run.main(["--task_name", "SST-2", "--num_k", "5", "--seed", "42", "--data_dir", str(data_dir),
                       "--model_name", str(model_dir), "--linear_probing", "--trainer", trainer, "--max_steps", "2",
                       "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--disable_tqdm", "True",
                       "--result_file", str(tmp_path / "r.json")])
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["mode"] == ("lp" if trainer == "none" else "lp-ft")
    assert written["head"]["untied"] is True and written["head"]["linear_probe"]["num_samples"] == 10
    assert 0 <= written["head"]["linear_probe"]["train_accuracy"] <= 1
    assert ("train" in written) == (trainer == "zo") and result["eval"] == written["eval"]


def test_probing_a_regression_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.main(["--task_name", "STS-B", "--linear_probing", "--result_file", str(tmp_path / "r.json")])
    assert "--linear_probing with --task_name STS-B: a regression has no classes" in capsys.readouterr().err


def test_too_few_examples_per_label_for_the_folds_is_refused(dirs, tmp_path):
    model_dir, _ = dirs
    data = write_kshot(TASKS["SST-2"], tmp_path / "k4", k=4, seed=42)
    with pytest.raises(SystemExit, match="5 stratified folds need 5 training examples of every label; one label "
                                         "has 4"):
        run.main(["--task_name", "SST-2", "--num_k", "4", "--seed", "42", "--data_dir", str(data), "--model_name",
                  str(model_dir), "--linear_probing", "--disable_tqdm", "True", "--result_file",
                  str(tmp_path / "r.json")])
