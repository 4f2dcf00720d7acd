"""What trains on a masked LM in medium_models, against upstream MeZO's own rules (its medium_models/run.py and
src/models.py), on tiny RoBERTa and BERT through medium_models/run.py:

* the MLM decoder is untied from the input embeddings before training (upstream's prompt models never tie it);
* full-parameter training trains every parameter, the decoder as a weight of its own;
* LoRA freezes only the encoder's non-LoRA weights (upstream: ``name.startswith('roberta') and 'lora' not in name``),
  so the whole MLM head trains beside the adapters;
* head tuning trains every parameter of the MLM head (upstream: ``'lm_head' in name``; BERT's head is ``cls``).

The expected sets are written here from upstream's expressions, not from medium_models/trainable.py. A trainer spy
(``runner.train`` wrapped) records which parameters require grad and what they hold after training.
"""
import pytest
import torch

from medium_models import run
from medium_models.tasks import TASKS
from tests.lmbff_fixtures import write_kshot
from tests.tiny import save_tiny_mlm

PEFT = "base_model.model."
DECODER = {"roberta": "lm_head.decoder.weight", "bert": "cls.predictions.decoder.weight"}
EMBEDDINGS = {"roberta": "roberta.embeddings.word_embeddings.weight", "bert": "bert.embeddings.word_embeddings.weight"}


@pytest.fixture(scope="module", params=["roberta", "bert"])
def kind_dir(request, tmp_path_factory):
    return request.param, save_tiny_mlm(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_kshot(TASKS["SST-2"], tmp_path_factory.mktemp("kshot"), k=2, seed=42, test_per_label=1)


@pytest.fixture
def spy(monkeypatch):
    """Records, from the trainer ``medium_models/run.py`` built, the names of the parameters that require grad
    when training starts, and every parameter (PEFT prefix removed) before and after training."""
    seen = {}
    original = run.runner.train

    def train(args, trainer, *rest):
        named = dict(trainer.model.named_parameters())
        seen["trainable"] = {n for n, p in named.items() if p.requires_grad}
        seen["names"] = set(named)
        seen["before"] = {n.removeprefix(PEFT): p.detach().clone() for n, p in named.items()}
        out = original(args, trainer, *rest)
        seen["after"] = {n.removeprefix(PEFT): p.detach().clone() for n, p in trainer.model.named_parameters()}
        return out
    monkeypatch.setattr(run.runner, "train", train)
    return seen


def train_one(model_dir, data_dir, tmp_path, *flags, trainer="zo"):
    return run.main(["--task_name", "SST-2", "--num_k", "2", "--seed", "42", "--data_dir", str(data_dir),
                     "--model_name", str(model_dir), "--trainer", trainer, "--max_steps", "1",
                     "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--disable_tqdm", "True",
                     "--result_file", str(tmp_path / "r.json"), *flags])


def test_full_parameter_training_trains_an_untied_decoder(kind_dir, data_dir, tmp_path, spy):
    kind, model_dir = kind_dir
    result = train_one(model_dir, data_dir, tmp_path)
    assert result["head"] == {"untied": True}
    assert spy["trainable"] == spy["names"]  # upstream: every parameter (its unused classifier aside)
    assert DECODER[kind] in spy["names"]  # tied, the decoder would be the embeddings under their name
    before, after = spy["before"], spy["after"]
    assert torch.equal(before[DECODER[kind]], before[EMBEDDINGS[kind]])  # the checkpoint's copy, as upstream
    for name in (DECODER[kind], EMBEDDINGS[kind]):
        assert not torch.equal(after[name], before[name]), name
    assert not torch.equal(after[DECODER[kind]], after[EMBEDDINGS[kind]])  # two weights, two perturbations


def test_lora_trains_the_adapters_and_the_whole_mlm_head(kind_dir, data_dir, tmp_path, spy):
    kind, model_dir = kind_dir
    result = train_one(model_dir, data_dir, tmp_path, "--lora", "--lora_r", "2")
    upstream = {n for n in spy["names"] if not (n.removeprefix(PEFT).startswith(kind) and "lora" not in n)}
    assert spy["trainable"] == upstream
    head = {n for n in upstream if "lora" not in n}
    assert {n.removeprefix(PEFT) for n in head} == {n for n in spy["before"] if not n.startswith(kind)}
    assert PEFT + DECODER[kind] in head and len(head) == 6  # bias, dense (2), LayerNorm (2), decoder
    assert sorted(result["train"]["also_trained"]) == sorted(head)


def test_regular_lora_optimizer_covers_the_head(kind_dir, data_dir, tmp_path, spy):
    kind, model_dir = kind_dir
    train_one(model_dir, data_dir, tmp_path, "--lora", "--lora_r", "2", trainer="regular")
    before, after = spy["before"], spy["after"]
    head = [n for n in before if not n.startswith(kind)]
    assert all(not torch.equal(before[n], after[n]) for n in head if not n.endswith("bias"))
    assert torch.equal(before[EMBEDDINGS[kind]], after[EMBEDDINGS[kind]])


def test_head_tuning_trains_every_head_parameter(kind_dir, data_dir, tmp_path, spy):
    kind, model_dir = kind_dir
    result = train_one(model_dir, data_dir, tmp_path, "--head_tuning")
    upstream = {n for n in spy["names"] if ("lm_head" in n if kind == "roberta" else n.startswith("cls."))}
    assert spy["trainable"] == upstream and len(upstream) == 6
    assert sorted(result["train"]["trainable"]) == sorted(upstream)
    assert torch.equal(spy["before"][EMBEDDINGS[kind]], spy["after"][EMBEDDINGS[kind]])  # untied: not moved


def test_earlier_rules_behind_flags(kind_dir, data_dir, tmp_path, spy):
    """--adapters_train_head False: the adapters alone; --tie_emb: the decoder stays the embeddings."""
    kind, model_dir = kind_dir
    train_one(model_dir, data_dir, tmp_path, "--lora", "--adapters_train_head", "False")
    assert spy["trainable"] and all("lora_" in n for n in spy["trainable"])
    result = train_one(model_dir, data_dir, tmp_path, "--tie_emb", "--overwrite")
    assert "head" not in result and DECODER[kind] not in spy["names"]


@pytest.mark.parametrize("trainer", ["zo", "regular"])
def test_lora_run_resumes_the_head_it_trains_beside_the_adapters(kind_dir, data_dir, tmp_path, spy, trainer):
    """A PEFT checkpoint holds the adapter only; the head trained beside it comes back from run_state.pt, so
    4 steps in one go equal 2 steps, a checkpoint and 2 resumed steps, bit for bit."""
    kind, model_dir = kind_dir
    flags = ["--lora", "--lora_r", "2", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
             "--logging_steps", "1"]
    whole = train_one(model_dir, data_dir, tmp_path, *flags, "--output_dir", str(tmp_path / "whole"),
                      trainer=trainer)
    after_whole = spy["after"]
    resumed = train_one(model_dir, data_dir, tmp_path, *flags, "--output_dir", str(tmp_path / "resumed"),
                        "--resume_from_checkpoint", str(tmp_path / "whole" / "checkpoint-2"), "--overwrite",
                        trainer=trainer)
    losses = [[(h["step"], h["loss"]) for h in r["train"]["log_history"] if "loss" in h] for r in (whole, resumed)]
    assert len(losses[0]) == 4 and losses[1] == losses[0]  # the resumed history holds the restored steps
    head = [n for n in after_whole if not n.startswith(kind)]
    assert len(head) == 6 and not torch.equal(after_whole[DECODER[kind]], spy["before"][DECODER[kind]])
    for name in after_whole:
        assert torch.equal(after_whole[name], spy["after"][name]), name
