"""Demonstrations (--few_shot_type prompt-demo, medium_models/demos.py): LM-BFF's template with one demonstration
per label, the choice of demonstrations, a new draw every epoch that a resumed run repeats, --num_sample draws per
evaluated example, BERT's widened segment embeddings, and the refusals; on tiny RoBERTa and BERT."""
import json
import random

import pytest
from transformers import TrainerState

from medium_models import demos, run
from medium_models.arguments import parse_args
from medium_models.prompts import encode, label_word_ids
from medium_models.tasks import TASKS
from mezo_engine.tasks import DataError
from tests.lmbff_fixtures import write_kshot
from tests.tiny import make_mlm_tokenizer, save_tiny, save_tiny_mlm


def test_demo_template_is_lm_bff_auto_demo():
    assert demos.demo_template(TASKS["SST-2"].template, 2) == (
        "*cls**sent_0*_It_was*mask*.*sep+**sent_1*_It_was*label_0*.*sep+**sent_2*_It_was*label_1*.*sep+*")
    assert demos.demo_template(TASKS["MNLI"].template, 3) == (
        "*cls**sent-_0*?*mask*,*+sentl_1**sep+*"
        "*sent-_2*?*label_0*,*+sentl_3**sep+**sent-_4*?*label_1*,*+sentl_5**sep+**sent-_6*?*label_2*,*+sentl_7**sep+*")


def test_a_demonstration_shows_its_label_word_where_the_query_has_the_mask():
    t = make_mlm_tokenizer()
    words = label_word_ids(t, ["terrible", "great"])
    template = demos.demo_template(TASKS["SST-2"].template, 2)
    out = encode(t, template, ["a film", "so bad", "so good"], False, 256, label_ids=words)
    enc = lambda text: t.encode(text, add_special_tokens=False)  # noqa: E731
    was = enc(" It was")
    expected = [t.cls_token_id, *enc("a film"), *was, t.mask_token_id, *enc("."), t.sep_token_id,
                *enc("so bad"), *was, words[0], *enc("."), t.sep_token_id,
                *enc("so good"), *was, words[1], *enc("."), t.sep_token_id]
    assert out.ids == expected and out.ids.count(t.mask_token_id) == 1
    assert out.position == expected.index(t.mask_token_id)


def test_choice_is_one_per_label_and_never_the_query_itself(tmp_path):
    task = TASKS["SST-2"]
    samples = task.load(task.split_dir(write_kshot(task, tmp_path, k=3, seed=42), 3, 42), "train")
    groups = demos.by_label(task, samples)
    assert groups == [[0, 1, 2], [3, 4, 5]]
    rng = random.Random(0)
    for query in range(6):
        for _ in range(20):
            chosen = demos.choose(groups, rng, exclude=query)
            assert query not in chosen and [samples[i].correct_candidate for i in chosen] == [0, 1]
    with pytest.raises(DataError, match="no training example of label group 1 besides the query"):
        demos.choose([[0, 1], [2]], rng, exclude=2)


def test_training_draws_depend_on_the_epoch_and_the_example_only():
    built = demos.DemoDataset(6, lambda i, rng: (i, rng.random()), seed=3)
    first = [built[i] for i in range(6)]
    assert [built[i] for i in range(6)] == first  # asked again: the same draw
    callback = demos.EpochCallback(built)
    callback.on_epoch_begin(None, TrainerState(epoch=1.5), None)  # resumed inside the second epoch
    assert built.epoch == 1 and [built[i] for i in range(6)] != first
    callback.on_epoch_begin(None, TrainerState(epoch=0), None)
    assert [built[i] for i in range(6)] == first
    with pytest.raises(IndexError):
        built[6]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_kshot(TASKS["SST-2"], tmp_path_factory.mktemp("kshot"), k=2, seed=42)


def demo_run(model_dir, data_dir, out, *flags):
    return run.main(["--task_name", "SST-2", "--num_k", "2", "--seed", "42", "--data_dir", str(data_dir),
                     "--model_name", str(model_dir), "--few_shot_type", "prompt-demo", "--num_sample", "3",
                     "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--disable_tqdm", "True",
                     "--logging_steps", "1", "--result_file", str(out), *flags])


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_demonstrations_train_and_evaluate_with_num_sample_draws(kind, data_dir, tmp_path):
    model_dir = save_tiny_mlm(kind, tmp_path / kind)
    result = demo_run(model_dir, data_dir, tmp_path / "r.json", "--trainer", "zo", "--max_steps", "2")
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["prompt"]["demonstrations"]["num_sample"] == 3 and written["prompt"]["max_length"] == 128
    assert written["prompt"]["demonstrations"]["template"].endswith("*sent_2*_It_was*label_1*.*sep+*")
    assert len(written["eval_predictions"]) == 6 and result["dev"] == written["dev"]
    assert written.get("segment_types_widened", False) == (kind == "bert")  # 3 segments; tiny BERT has 2


def test_a_resumed_run_sees_the_demonstrations_an_unbroken_one_saw(data_dir, tmp_path, monkeypatch):
    model_dir = save_tiny_mlm("roberta", tmp_path / "roberta")
    epochs, original = [], demos.EpochCallback.on_epoch_begin

    def record(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        epochs.append(self.dataset.epoch)
    monkeypatch.setattr(demos.EpochCallback, "on_epoch_begin", record)
    flags = ["--trainer", "zo", "--max_steps", "5", "--save_strategy", "steps", "--save_steps", "3"]
    whole = demo_run(model_dir, data_dir, tmp_path / "a.json", *flags, "--output_dir", str(tmp_path / "a"))
    assert epochs == [0, 1, 2]  # 4 training examples in batches of 2: epochs of 2 steps
    resumed = demo_run(model_dir, data_dir, tmp_path / "b.json", *flags, "--output_dir", str(tmp_path / "b"),
                       "--resume_from_checkpoint", str(tmp_path / "a" / "checkpoint-3"))
    assert epochs == [0, 1, 2, 1, 2]
    losses = [[h["loss"] for h in r["train"]["log_history"] if "loss" in h] for r in (whole, resumed)]
    assert len(losses[0]) == 5 and losses[1] == losses[0]  # the cut falls inside the second epoch
    assert resumed["eval_predictions"] == whole["eval_predictions"]


def test_refusals(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run.main(["--num_sample", "4", "--result_file", str(tmp_path / "x.json")])
    assert "--num_sample 4 without --few_shot_type prompt-demo" in capsys.readouterr().err
    causal = save_tiny("gpt2", tmp_path / "gpt2")
    with pytest.raises(SystemExit, match="prompt-demo with a causal LM: the demonstrations follow the query's mask"):
        demo_run(causal, data_dir, tmp_path / "c.json")


def test_double_demo_is_the_task_default_for_sst5():
    assert parse_args(["--task_name", "sst-5", "--few_shot_type", "prompt-demo"]).seq_length == 256
    assert parse_args(["--task_name", "sst-5"]).seq_length == 128
    assert parse_args(["--task_name", "SST-2", "--few_shot_type", "prompt-demo", "--double_demo", "True"]
                      ).seq_length == 256
