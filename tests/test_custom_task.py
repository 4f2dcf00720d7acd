"""Tasks from one's own files (``--task_name custom --task_file``): the task file's checks, each bad record as one
line naming file, line and field, the three kinds end to end on a tiny OPT with the BPE tokenizer (real merges),
the same numbers as the built-in SST-2 task for a task file that restates it, the result name following the files'
content, and the drivers."""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from large_models import run, task_file
from large_models.arguments import parse_args
from large_models.custom_task import CustomTask, read_records
from large_models.task_file import TaskFileError, digest, read_task_file
from large_models.tasks import DataError
from tests.task_fixtures import NEGATIVE, POSITIVE, write_sst2
from tests.tiny import make_model, make_tokenizer

REPO = Path(__file__).resolve().parent.parent
SST2_LIKE = 'template = "{sentence} It was"\nlabel_field = "label"\n[label_words]\n0 = " terrible"\n1 = " great"\n'


@pytest.fixture(scope="module")
def bpe_opt_dir(tmp_path_factory):
    """A tiny OPT saved with the tokenizer that has real BPE merges."""
    path = tmp_path_factory.mktemp("tiny-opt-bpe")
    make_model("opt").save_pretrained(path)
    make_tokenizer(merges=True).save_pretrained(path)
    return path


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder / "task.toml"


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def sentiment(folder: Path, extra: str = "") -> Path:
    rows = [{"text": t, "mood": "good"} for t in POSITIVE] + [{"text": t, "mood": "bad"} for t in NEGATIVE]
    return write(folder, {"train.jsonl": jsonl(rows * 3), "test.jsonl": jsonl(rows),
                          "task.toml": 'name = "mood"\ntrain = "train.jsonl"\neval = "test.jsonl"\n'
                                       'template = "{text} It was"\nlabel_field = "mood"\n' + extra +
                                       '[label_words]\ngood = " great"\nbad = " terrible"\n'})


def run_custom(tmp_path: Path, model_dir: Path, task: Path, *flags: str, name: str = "result.json") -> dict:
    out = tmp_path / name
    run.main(["--model_name", str(model_dir), "--task_name", "custom", "--task_file", str(task), "--result_file",
              str(out), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True", "--report_to", "none",
              "--per_device_eval_batch_size", "4", *flags])
    return json.loads(out.read_text())


# ---- the task file -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ('eval = "test.jsonl"\ntemplate = "{x}"\nanswer_feild = "y"\n', "unknown key 'answer_feild' (did you mean "
                                                                   "'answer_field'?)"),
    ('template = "{x}"\nanswer_field = "y"\n', "no 'eval': a task needs the file it is evaluated on"),
    ('eval = "test.jsonl"\nanswer_field = "y"\n', "no 'template': a task needs a prompt template"),
    ('eval = "test.jsonl"\ntemplate = "{x"\nanswer_field = "y"\n', "template '{x': expected '}'"),
    ('eval = "test.jsonl"\ntemplate = "{x}"\n[label_words]\na = " A"\n', "label_words without label_field"),
    ('eval = "test.jsonl"\ntemplate = "{x}"\nlabel_field = "y"\n', "label_field without label_words"),
    ('eval = "test.jsonl"\ntemplate = "{x}"\n', "no answer: give label_field and label_words"),
    ('eval = "test.jsonl"\ntemplate = "{x}"\nlabel_field = "y"\nchoices_field = "c"\n[label_words]\na = " A"\n',
     "both label_words and choices_field"),
    ('eval = "test.txt"\ntemplate = "{x}"\nanswer_field = "y"\n', "eval = 'test.txt': unknown format"),
    ('eval = "missing.jsonl"\ntemplate = "{x}"\nanswer_field = "y"\n', "eval = 'missing.jsonl': no such file"),
    ('eval = "test.jsonl"\ntemplate = 3\nanswer_field = "y"\n', "'template' must be a string, found int"),
    ('eval = "test.jsonl\n', "not valid TOML"),
])
def test_a_bad_task_file_is_one_line_naming_the_file_and_the_key(tmp_path, text, message):
    task = write(tmp_path, {"task.toml": text, "test.jsonl": jsonl([{"x": "a", "y": "b"}]), "test.txt": "x"})
    with pytest.raises(TaskFileError) as err:
        read_task_file(task)
    assert str(err.value).startswith(f"task file {task}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_the_kind_follows_the_answer_keys(tmp_path):
    (tmp_path / "t.jsonl").write_text(jsonl([{"x": "a"}]))
    kinds = {}
    for kind, keys in (("classification", 'label_field = "y"\n[label_words]\na = " A"\n'),
                       ("choice", 'choices_field = "c"\nanswer_field = "y"\n'), ("generation", 'answer_field = "y"\n')):
        kinds[kind] = read_task_file(write(tmp_path, {"task.toml": f'eval = "t.jsonl"\ntemplate = "{{x}}"\n{keys}'})).kind
    assert kinds == {k: k for k in kinds}


# ---- records ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("records, name, message", [
    ([{"text": "a", "mood": "good"}, {"txt": "b", "mood": "bad"}], "test.jsonl",
     "test.jsonl, line 2: no field 'text', which the template names"),
    ([{"text": "a", "mood": "good"}, {"text": "b"}], "test.jsonl",
     "test.jsonl, line 2: no field 'mood' (the task file's label_field)"),
    ([{"text": "a", "mood": "great"}], "test.jsonl",
     "test.jsonl, line 1: field 'mood': label 'great' is not one of the task file's label_words ('good', 'bad')"),
    ([], "test.jsonl", "test.jsonl: no examples (the file is empty or holds only a header)"),
])
def test_a_bad_record_is_one_line_naming_the_file_the_line_and_the_field(tmp_path, records, name, message):
    task = sentiment(tmp_path)
    (tmp_path / name).write_text(jsonl(records))
    with pytest.raises(DataError) as err:
        CustomTask(task).load("validation")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_csv_and_tsv_records_and_their_line_numbers(tmp_path):
    (tmp_path / "a.csv").write_text('text,mood\n"one, two",good\n\nthree,bad\n')
    (tmp_path / "a.tsv").write_text("text\tmood\none\tgood\ntwo\tbad\textra\n")
    assert read_records(tmp_path / "a.csv") == [(2, {"text": "one, two", "mood": "good"}),
                                                (4, {"text": "three", "mood": "bad"})]
    with pytest.raises(DataError, match=r"a.tsv, line 3: 3 fields, the header has 2 \(text, mood\)"):
        read_records(tmp_path / "a.tsv")
    (tmp_path / "h.csv").write_text("text,mood\n")
    with pytest.raises(DataError, match="no examples"):
        read_records(tmp_path / "h.csv")


def test_labels_match_as_text_and_choices_by_index_or_text(tmp_path):
    (tmp_path / "t.jsonl").write_text(jsonl([{"x": "a", "y": 1}, {"x": "b", "y": True}]))
    task = CustomTask(write(tmp_path, {"task.toml": 'eval = "t.jsonl"\ntemplate = "{x}"\nlabel_field = "y"\n'
                                                    '[label_words]\n1 = " one"\ntrue = " yes"\n'}))
    assert [s.correct_candidate for s in task.load("validation")] == ["1", "true"]
    (tmp_path / "c.jsonl").write_text(jsonl([{"q": "a", "opts": ["x", "y"], "gold": 1},
                                             {"q": "b", "opts": ["x", "y"], "gold": "x"},
                                             {"q": "c", "opts": ["x", "y"], "gold": 2}]))
    task = CustomTask(write(tmp_path, {"task.toml": 'eval = "c.jsonl"\ntemplate = "{q}"\nchoices_field = "opts"\n'
                                                    'answer_field = "gold"\n'}))
    with pytest.raises(DataError, match=r"c.jsonl, line 3: field 'gold': 2 is neither one of the 2 choices nor an "
                                        r"index 0..1"):
        task.load("validation")


def test_an_answer_that_merges_with_the_prompt_is_refused_with_what_the_scorer_would_do(tmp_path, bpe_tokenizer):
    # with the merges of tests/tiny.py, "fine i" is [f, in, e, Ġi] but "fine in" is [f, in, e, Ġ, in] ("i n" merges
    # before "Ġ i"): the prompt's tokens are no prefix of the row's, whose last token holds part of the prompt
    (tmp_path / "t.jsonl").write_text(jsonl([{"x": "fine", "y": "bad"}, {"x": "it is", "y": "good"}]))
    task = CustomTask(write(tmp_path, {"task.toml": 'eval = "t.jsonl"\ntemplate = "{x} i"\nlabel_field = "y"\n'
                                                    '[label_words]\nbad = "s"\ngood = "n"\n'}))
    samples = task.load("validation")
    with pytest.raises(DataError) as err:
        task.check_tokenization(bpe_tokenizer, samples)
    assert str(err.value).startswith(f"{tmp_path / 't.jsonl'}, line 1: the answer 'n' merges with the end of the "
                                     f"prompt ('fine i') into other tokens")
    task.check_tokenization(make_tokenizer(merges=False), samples)  # byte tokens: nothing merges


# ---- end to end ---------------------------------------------------------------------------------------------
def test_a_task_file_that_restates_sst2_gives_the_builtin_tasks_numbers(tmp_path, bpe_opt_dir):
    """The same rows in the same order, the same prompt and label words: the sampled train set, the zo run's logged
    losses and the predictions must be identical (the same tokens through the same float ops)."""
    (tmp_path / "glue").mkdir()
    data = write_sst2(tmp_path / "glue")  # its sentences end in a space: the template strips field values as SST-2's
    task = write(data / "SST-2", {"task.toml": 'train = "train.tsv"\neval = "dev.tsv"\n' + SST2_LIKE})
    flags = ["--num_train", "8", "--train_set_seed", "0", "--num_eval", "8", "--max_steps", "3",
             "--per_device_train_batch_size", "4", "--train_as_classification", "--trainer", "zo", "--logging_steps",
             "1", "--load_float64"]
    custom = run_custom(tmp_path, bpe_opt_dir, task, *flags)
    out = tmp_path / "builtin.json"
    run.main(["--model_name", str(bpe_opt_dir), "--task_name", "SST2", "--data_dir", str(data), "--result_file",
              str(out), "--output_dir", str(tmp_path / "out2"), "--disable_tqdm", "True", "--report_to", "none",
              "--per_device_eval_batch_size", "4", *flags])
    builtin = json.loads(out.read_text())
    losses = [[r["loss"] for r in res["train"]["log_history"] if "loss" in r] for res in (custom, builtin)]
    assert len(losses[0]) == 3 and losses[0] == losses[1]
    assert custom["eval_predictions"] == [str(p) for p in builtin["eval_predictions"]]
    assert custom["eval"] == builtin["eval"]


def test_classification_trains_and_names_the_result_after_the_task_and_its_content(tmp_path, bpe_opt_dir):
    task = sentiment(tmp_path)
    flags = ["--num_train", "8", "--num_dev", "4", "--train_set_seed", "0", "--max_steps", "2",
             "--per_device_train_batch_size", "4", "--train_as_classification", "--trainer", "zo"]
    result = run_custom(tmp_path, bpe_opt_dir, task, *flags)
    assert result["task"] == "custom" and result["num_train"] == 8 and result["num_dev"] == 4
    assert 0 <= result["eval"]["accuracy"] <= 1 and set(result["eval_predictions"]) <= {"good", "bad"}
    assert result["config"]["task_file_sha256"] == digest(task)
    names = [run.result_path(parse_args(["--task_name", "custom", "--task_file", str(task), "--tag", "t"]), 0, False)]
    (tmp_path / "test.jsonl").write_text((tmp_path / "test.jsonl").read_text().replace("boring", "so boring"))
    names.append(run.result_path(parse_args(["--task_name", "custom", "--task_file", str(task), "--tag", "t"]), 0,
                                 False))
    assert names[0].name.startswith("custom-mood-") and names[0] != names[1]  # an edited data file: a new run


def test_a_dev_file_gives_the_dev_examples(tmp_path, bpe_opt_dir):
    task = sentiment(tmp_path)
    (tmp_path / "dev.jsonl").write_text(jsonl([{"text": "fine", "mood": "good"}, {"text": "awful", "mood": "bad"}]))
    task.write_text('dev = "dev.jsonl"\n' + task.read_text())
    sets = CustomTask(task).sample_train_sets(CustomTask(task).load("train"), 6, 2, [0])
    assert len(sets[0]) == 8 and {s.data["text"] for s in sets[0][6:]} == {"fine", "awful"}


def test_generation_from_csv_trains_on_the_answer_and_scores_f1(tmp_path, bpe_opt_dir):
    rows = "".join(f"Who is number {i}?,Ann {i}\n" for i in range(6))
    task = write(tmp_path, {"qa.csv": "question,answer\n" + rows,
                            "task.toml": 'train = "qa.csv"\neval = "qa.csv"\ntemplate = "Question: {question}\\n'
                                         'Answer:"\nanswer_field = "answer"\n'})
    result = run_custom(tmp_path, bpe_opt_dir, task, "--num_train", "4", "--train_set_seed", "0", "--max_steps", "2",
                        "--per_device_train_batch_size", "2", "--trainer", "zo", "--num_eval", "3",
                        "--max_new_tokens", "4", "--logging_steps", "1")
    assert set(result["eval"]) == {"f1"} and 0 <= result["eval"]["f1"] <= 1
    # the LM loss on the answer's tokens of an untrained model: about ln(vocabulary) = ln 279 = 5.63 nats a token
    assert abs(result["train"]["log_history"][0]["loss"] - math.log(279)) < 1


def test_multiple_choice_in_context(tmp_path, bpe_opt_dir):
    rows = [{"premise": f"Event {i}", "options": ["it rained", "the sun shone"], "gold": i % 2} for i in range(6)]
    task = write(tmp_path, {"mc.jsonl": jsonl(rows),
                            "task.toml": 'train = "mc.jsonl"\neval = "mc.jsonl"\ntemplate = "{premise} so"\n'
                                         'choices_field = "options"\nanswer_field = "gold"\n'})
    result = run_custom(tmp_path, bpe_opt_dir, task, "--trainer", "none", "--num_train", "2", "--train_set_seed",
                        "0", "--num_eval", "4")
    assert result["num_train"] == 2 and set(result["eval_predictions"]) <= {"it rained", "the sun shone"}


@pytest.mark.parametrize("flags, message", [
    (["--task_name", "custom"], "--task_name custom needs --task_file"),
    (["--task_file", "x.toml"], "--task_file x.toml: only with --task_name custom"),
    (["--task_name", "custom", "--task_file", "missing.toml"], "--task_file: task file missing.toml: no such file"),
])
def test_task_flags_are_checked_before_anything_loads(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(flags)
    assert message in capsys.readouterr().err


def test_generation_checks_follow_the_task_files_kind(tmp_path, capsys):
    (tmp_path / "qa.jsonl").write_text(jsonl([{"q": "a", "a": "b"}]))
    task = write(tmp_path, {"task.toml": 'eval = "qa.jsonl"\ntemplate = "{q}"\nanswer_field = "a"\n'})
    with pytest.raises(SystemExit):
        parse_args(["--task_name", "custom", "--task_file", str(task), "--sfc"])
    assert "--sfc: task custom is generation" in capsys.readouterr().err


def test_the_drivers_read_the_task_file(tmp_path):
    task = sentiment(tmp_path)
    assert task_file.driver_assignments(str(task)) == (
        f"DEFAULT_DEV=100\nTASK_ARGS=(--task_file {task} --train_as_classification)")
    for path, message in ((tmp_path / "no.toml", f"TASK_FILE={tmp_path / 'no.toml'}: task file {tmp_path / 'no.toml'}: "
                                                 f"no such file"), ("", "TASK=custom needs TASK_FILE=")):
        proc = subprocess.run(["python3", "large_models/task_file.py", "driver", str(path)], cwd=REPO,
                              capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr
    assert "custom" in subprocess.run(["python3", "large_models/task_table.py", "names"], cwd=REPO,
                                      capture_output=True, text=True).stdout.split()


@pytest.mark.slow
def test_mezo_driver_trains_a_task_file(tmp_path, bpe_opt_dir):
    task = sentiment(tmp_path)
    out = tmp_path / "r.json"
    env = {**os.environ, "MODEL": str(bpe_opt_dir), "TASK": "custom", "TASK_FILE": str(task), "MODE": "lora",
           "STEPS": "2", "TRAIN": "8", "DEV": "4", "EVAL": "4", "EVAL_STEPS": "2", "BS": "4"}
    proc = subprocess.run(["bash", "mezo.sh", "--result_file", str(out), "--disable_tqdm", "True"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["config"]["task_file"] == str(task) and result["config"]["train_as_classification"]
    assert result["num_dev"] == 4 and "accuracy" in result["eval"]
