"""Tasks, templates and sampling, on tiny fixtures written in each data set's original file format."""
from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from mezo_engine import hub
from large_models.tasks import TASKS, Sample, drop_answer_strings, fix_wsc_spans, get_task, sample_subset

# ---------------------------------------------------------------------------------------------------------
# Fixtures in the original formats


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _write_sst2(root: Path) -> None:
    (root / "SST-2").mkdir()
    (root / "SST-2/train.tsv").write_text(
        "sentence\tlabel\nhide new secretions from the parental units \t0\n"
        "a gorgeous , witty , seductive movie . \t1\ncontains no wit , only labored gags \t0\n")
    (root / "SST-2/dev.tsv").write_text("sentence\tlabel\nit 's a charming journey . \t1\nunflinchingly bleak \t0\n")


def _write_rte_cb(root: Path) -> None:
    _jsonl(root / "RTE/train.jsonl", [
        {"premise": "No Weapons of Mass Destruction Found in Iraq Yet.",
         "hypothesis": "Weapons of Mass Destruction Found in Iraq.", "label": "not_entailment", "idx": 0},
        {"premise": "A place of sorrow.", "hypothesis": "A place.", "label": "entailment", "idx": 1}])
    _jsonl(root / "RTE/val.jsonl", [{"premise": "P.", "hypothesis": "H.", "label": "entailment", "idx": 0}])
    _jsonl(root / "CB/train.jsonl", [
        {"premise": "It was a complex language.", "hypothesis": "the language was peeled down",
         "label": "entailment", "idx": 0},
        {"premise": "A.", "hypothesis": "B", "label": "contradiction", "idx": 1},
        {"premise": "C.", "hypothesis": "D", "label": "neutral", "idx": 2}])
    _jsonl(root / "CB/val.jsonl", [{"premise": "E.", "hypothesis": "F", "label": "neutral", "idx": 0}])


def _write_boolq(root: Path) -> None:
    _jsonl(root / "BoolQ/train.jsonl", [
        {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "idx": 0, "label": True}])
    _jsonl(root / "BoolQ/val.jsonl", [
        {"question": "does ethanol take more energy make that produces",
         "passage": "Ethanol fuel -- All biomass goes through steps -- many of them.", "idx": 0, "label": False},
        {"question": "is water wet?", "passage": "Water -- Water is wet.", "idx": 1, "label": True}])


def _write_wic_wsc(root: Path) -> None:
    wic = {"word": "place", "sentence1": "Do you want to come over to my place later?",
           "sentence2": "A political system with no place for the less prominent groups.", "idx": 0,
           "label": False, "start1": 31, "start2": 27, "end1": 36, "end2": 32, "version": 1.1}
    _jsonl(root / "WiC/train.jsonl", [wic, {**wic, "idx": 1, "label": True}])
    _jsonl(root / "WiC/val.jsonl", [wic])
    _jsonl(root / "WSC/train.jsonl", [
        {"text": "Mark told Pete many lies about himself. He should have been more skeptical.",
         "target": {"span2_index": 7, "span1_index": 0, "span1_text": "Mark", "span2_text": "He"},
         "idx": 0, "label": False},
        # "the lawyer" is not in the text (case) and "the cup." neither (period): both need the repair.
        {"text": "The lawyer poured water from the bottle into the cup until it was full.",
         "target": {"span2_index": 11, "span1_index": 8, "span1_text": "the cup.", "span2_text": "it"},
         "idx": 1, "label": True}])
    _jsonl(root / "WSC/val.jsonl", [
        {"text": "The lawyer asked the witness a question, but he was reluctant to repeat it.",
         "target": {"span2_index": 8, "span1_index": 0, "span1_text": "the lawyer", "span2_text": "he"},
         "idx": 0, "label": True}])


def _write_multirc(root: Path) -> None:
    passage = {"idx": 0, "version": 1.1, "passage": {
        "text": "<b>Sent 1: </b>Tom has a cat.<br>",
        "questions": [
            {"question": "What does Tom have?", "idx": 0, "answers": [
                {"text": "A cat", "idx": 0, "label": 1}, {"text": "A dog", "idx": 1, "label": 0}]},
            {"question": "Who has a cat?", "idx": 1, "answers": [{"text": "Tom", "idx": 2, "label": 1}]}]}}
    _jsonl(root / "MultiRC/train.jsonl", [passage, {**passage, "idx": 1}])
    _jsonl(root / "MultiRC/val.jsonl", [passage])


def _write_copa(root: Path) -> None:
    # Named "Copa" on purpose: the loader looks for COPA case-insensitively.
    _jsonl(root / "Copa/train.jsonl", [
        {"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
         "choice2": "The grass was cut.", "question": "cause", "label": 0, "idx": 0},
        {"premise": "I was tired.", "choice1": "The dog barked.", "choice2": "I went to bed.",
         "question": "effect", "label": 1, "idx": 1}])
    _jsonl(root / "Copa/val.jsonl", [
        {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
         "choice2": "Water flowed from the spout.", "question": "effect", "label": 1, "idx": 0}])


RECORD_TEXT = "Obama met Merkel in Berlin.\n@highlight\nObama visits Berlin"


def _span(text: str, word: str, start_from: int = 0) -> dict:
    start = text.index(word, start_from)
    return {"start": start, "end": start + len(word) - 1}  # ReCoRD's end offsets are inclusive


def _write_record(root: Path) -> None:
    entities = [_span(RECORD_TEXT, "Obama"), _span(RECORD_TEXT, "Merkel"), _span(RECORD_TEXT, "Berlin"),
                _span(RECORD_TEXT, "Obama", 5), _span(RECORD_TEXT, "Berlin", 25)]
    row = {"idx": 0, "source": "Daily mail", "passage": {"text": RECORD_TEXT, "entities": entities}, "qas": [
        {"query": "@placeholder is the capital of Germany.", "idx": 0,
         "answers": [{**_span(RECORD_TEXT, "Berlin"), "text": "Berlin"},
                     {**_span(RECORD_TEXT, "Berlin", 25), "text": "Berlin"}]},
        {"query": "@placeholder met the chancellor.", "idx": 1,
         "answers": [{**_span(RECORD_TEXT, "Obama"), "text": "Obama"}]}]}
    _jsonl(root / "ReCoRD/train.jsonl", [row])
    _jsonl(root / "ReCoRD/val.jsonl", [{**row, "qas": row["qas"][:1]}])


def _squad(questions: list[dict]) -> dict:
    return {"version": "1.1", "data": [{"title": "Super_Bowl_50", "paragraphs": [
        {"context": "Super Bowl 50 was won by the Denver Broncos.", "qas": questions}]}]}


def _write_squad(root: Path) -> None:
    q1 = {"id": "a1", "question": " Who won Super Bowl 50? ", "answers": [
        {"answer_start": 25, "text": "the Denver Broncos"}, {"answer_start": 29, "text": "Denver Broncos"},
        {"answer_start": 29, "text": "Denver Broncos"}]}
    q2 = {"id": "a2", "question": "Which Super Bowl?", "answers": [{"answer_start": 0, "text": "Super Bowl 50"}]}
    _json(root / "SQuAD/train-v1.1.json", _squad([q1, q2]))
    _json(root / "SQuAD/dev-v1.1.json", _squad([q1]))


NO_DATE = {"day": "", "month": "", "year": ""}


def _drop_answer(number: str = "", date: dict = NO_DATE, spans: tuple = ()) -> dict:
    return {"number": number, "date": date, "spans": list(spans)}


def _write_drop(root: Path) -> None:
    train = {"nfl_1": {"passage": "The Patriots won 7-3.", "qa_pairs": [
        {"question": "How many points did the Patriots score?", "answer": _drop_answer("7"), "query_id": "q1",
         "validated_answers": []},
        {"question": "Who scored?", "answer": _drop_answer(spans=("Tom Brady", "Randy Moss")), "query_id": "q2"},
        {"question": "When?", "answer": _drop_answer(date={"day": "9", "month": "March", "year": "2021"}),
         "query_id": "q3"},
        {"question": "Unanswered?", "answer": _drop_answer(), "query_id": "q4"}]}}
    dev = {"nfl_2": {"passage": "The Jets lost 3-10.", "qa_pairs": [
        {"question": "How many points did the Jets score?", "answer": _drop_answer("4"), "query_id": "d1",
         "validated_answers": [_drop_answer("3"), _drop_answer("3")]},
        {"question": "No validated answers?", "answer": _drop_answer("1"), "query_id": "d2",
         "validated_answers": []},
        {"question": "Which month?", "answer": _drop_answer("1"), "query_id": "d3",
         "validated_answers": [_drop_answer(date={"day": "", "month": "May", "year": "1990"})]}]}}
    _json(root / "DROP/drop_dataset_train.json", train)
    _json(root / "DROP/drop_dataset_dev.json", dev)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw_data")
    for write in (_write_sst2, _write_rte_cb, _write_boolq, _write_wic_wsc, _write_multirc, _write_copa,
                  _write_record, _write_squad, _write_drop):
        write(root)
    return root


def load(name: str, split: str, root: Path) -> list[Sample]:
    return get_task(name).load(split, str(root))


# ---------------------------------------------------------------------------------------------------------
# Every task

ALL = ["SST2", "RTE", "CB", "BoolQ", "WSC", "WIC", "MultiRC", "Copa", "ReCoRD", "SQuAD", "DROP"]
COUNTS = {"SST2": (3, 2), "RTE": (2, 1), "CB": (3, 1), "BoolQ": (1, 2), "WSC": (2, 1), "WIC": (2, 1),
          "MultiRC": (6, 3), "Copa": (2, 1), "ReCoRD": (2, 1), "SQuAD": (2, 1), "DROP": (3, 2)}


def test_registry_names_and_attributes():
    assert list(TASKS) == ALL
    for name in ALL:
        task = get_task(name)
        assert task.name == name
        assert task.generation == (name in ("SQuAD", "DROP"))
        assert task.metric == ("f1" if task.generation else "accuracy")


@pytest.mark.parametrize("name", ALL)
def test_both_splits_load_with_prompts_that_extend_the_encoding(name, data_dir):
    task = get_task(name)
    for split, count in zip(("train", "validation"), COUNTS[name]):
        samples = task.load(split, data_dir)
        assert len(samples) == count
        assert [s.id for s in samples] == list(range(count))
        for s in samples:
            prompt = task.template.encode(s)
            options = [s.correct_candidate] if task.generation else s.candidates
            for candidate in options:
                full = task.template.verbalize(s, candidate)
                assert full.startswith(prompt) and len(full) > len(prompt)
            gold = s.correct_candidate
            if task.generation:
                assert s.candidates is None and isinstance(gold, list) and gold
            elif isinstance(gold, list):  # ReCoRD: any of several gold entities
                assert set(gold) <= set(s.candidates)
            else:
                assert gold in s.candidates
    demos = [task.template.verbalize(s, s.correct_candidate).strip() for s in samples]
    assert "\n\n".join(demos)


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError) as err:
        get_task("SST")
    assert str(err.value) == ("task 'SST' unknown; known: "
                              "SST2, RTE, CB, BoolQ, WSC, WIC, MultiRC, Copa, ReCoRD, SQuAD, DROP")


def test_task_names_match_case_insensitively():
    assert get_task("copa").name == "Copa" and get_task("sst2").name == "SST2"


def test_bad_split_is_refused(data_dir):
    with pytest.raises(ValueError, match="split must be one of train, validation"):
        get_task("RTE").load("test", data_dir)


def test_missing_file_names_the_expected_path(tmp_path):
    _jsonl(tmp_path / "BoolQ/val.jsonl", [{"question": "q", "passage": "T -- p", "idx": 0, "label": True}])
    assert len(get_task("BoolQ").load("validation", tmp_path)) == 1
    with pytest.raises(FileNotFoundError) as err:
        get_task("BoolQ").load("train", tmp_path)
    message = str(err.value)
    assert f"no file {tmp_path / 'BoolQ' / 'train.jsonl'} for task BoolQ split train" in message
    assert "--data_dir / DATA_DIR" in message and "SuperGLUE" in message
    with pytest.raises(FileNotFoundError, match=r"SST-2/dev\.tsv for task SST2 split validation"):
        get_task("SST2").load("validation", tmp_path)


def test_unlabelled_rows_are_refused(tmp_path):
    _jsonl(tmp_path / "RTE/train.jsonl", [{"premise": "P.", "hypothesis": "H.", "idx": 0}])
    with pytest.raises(ValueError, match="no label"):
        get_task("RTE").load("train", tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Per task: fields, labels and the exact prompt


def test_sst2(data_dir):
    task = get_task("SST2")
    train = task.load("train", data_dir)
    assert [s.correct_candidate for s in train] == [0, 1, 0]
    s = train[0]
    assert s.data["sentence"] == "hide new secretions from the parental units"
    assert s.candidates == [0, 1]
    assert task.template.encode(s) == "hide new secretions from the parental units It was"
    assert task.template.verbalize(s, 0) == "hide new secretions from the parental units It was terrible"
    assert task.template.verbalize(s, 1) == "hide new secretions from the parental units It was great"
    assert [s.data["label"] for s in task.load("validation", data_dir)] == [1, 0]


def test_rte(data_dir):
    task = get_task("RTE")
    s, s2 = task.load("train", data_dir)
    assert (s.correct_candidate, s2.correct_candidate) == (1, 0)
    assert s.data["premise"] == "No Weapons of Mass Destruction Found in Iraq Yet."
    assert s.candidates == [0, 1]
    prompt = ('No Weapons of Mass Destruction Found in Iraq Yet.\nDoes this mean that '
              '"Weapons of Mass Destruction Found in Iraq." is true? Yes or No?\n')
    assert task.template.encode(s) == prompt
    assert task.template.verbalize(s, 0) == prompt + "Yes"
    assert task.template.verbalize(s, 1) == prompt + "No"


def test_cb(data_dir):
    task = get_task("CB")
    train = task.load("train", data_dir)
    assert [s.correct_candidate for s in train] == [0, 1, 2]
    assert train[0].candidates == [0, 1, 2]
    prompt = ('Suppose It was a complex language. Can we infer that "the language was peeled down"? '
              'Yes, No, or Maybe?\n')
    assert task.template.encode(train[0]) == prompt
    assert [task.template.verbalize(train[0], c) for c in (0, 1, 2)] == [prompt + w for w in ("Yes", "No", "Maybe")]


def test_boolq_strips_the_title_and_answers_yes_no(data_dir):
    task = get_task("BoolQ")
    s, s2 = task.load("validation", data_dir)
    assert s.data["passage"] == "All biomass goes through steps -- many of them."
    assert s.data["title"] == "Ethanol fuel"
    assert s.data["label"] == 0 and s2.data["label"] == 1
    assert s.candidates == ["Yes", "No"]
    assert (s.correct_candidate, s2.correct_candidate) == ("No", "Yes")
    prompt = "All biomass goes through steps -- many of them. Does ethanol take more energy make that produces?\n"
    assert task.template.encode(s) == prompt
    assert task.template.verbalize(s, "No") == prompt + "No"
    assert task.template.encode(s2) == "Water is wet. Is water wet?\n"


def test_wic(data_dir):
    task = get_task("WIC")
    s = task.load("train", data_dir)[0]
    assert set(s.data) == {"word", "sentence1", "sentence2", "start1", "start2", "end1", "end2", "idx", "label"}
    assert s.correct_candidate == 0 and task.load("train", data_dir)[1].correct_candidate == 1
    prompt = ('Does the word "place" have the same meaning in these two sentences? Yes, No?\n'
              'Do you want to come over to my place later?\n'
              'A political system with no place for the less prominent groups.\n')
    assert task.template.encode(s) == prompt
    assert task.template.verbalize(s, 1) == prompt + "Yes"


def test_wsc_fields_and_span_repair(data_dir):
    task = get_task("WSC")
    plain, repaired = task.load("train", data_dir)
    assert set(plain.data) == {"text", "span1_index", "span2_index", "span1_text", "span2_text", "idx", "label"}
    assert (plain.data["span1_text"], plain.data["span2_text"]) == ("Mark", "He")
    assert (plain.correct_candidate, repaired.correct_candidate) == (0, 1)
    assert repaired.data["span1_text"] == "the cup"  # trailing period dropped
    assert repaired.data["span1_index"] == 8
    val = task.load("validation", data_dir)[0]
    assert val.data["span1_text"] == "The lawyer"  # case taken from the text's word at span1_index
    prompt = ('The lawyer asked the witness a question, but he was reluctant to repeat it.\n'
              'In the previous sentence, does the pronoun "he" refer to The lawyer? Yes or No?\n')
    assert task.template.encode(val) == prompt
    assert task.template.verbalize(val, 1) == prompt + "Yes"
    assert task.template.encode(plain).endswith('does the pronoun "he" refer to Mark? Yes or No?\n')


def test_wsc_repair_rules():
    row = {"text": "They went home.\nThen they slept", "span1_index": 0, "span2_index": 3,
           "span1_text": "they went", "span2_text": "then\nthey."}
    fixed = fix_wsc_spans(row)
    assert fixed["span1_text"] == "They went" and fixed["span2_text"] == "Then they"
    assert row["span1_text"] == "they went"  # the input is not modified
    stuck = {**row, "span1_text": "Kamenev and Zinoviev"}
    assert fix_wsc_spans(stuck)["span1_text"] == "Kamenev and Zinoviev"


def test_multirc_flattens_one_row_per_answer(data_dir):
    task = get_task("MultiRC")
    val = task.load("validation", data_dir)
    assert [(s.data["question"], s.data["answer"], s.correct_candidate) for s in val] == [
        ("What does Tom have?", "A cat", 1), ("What does Tom have?", "A dog", 0), ("Who has a cat?", "Tom", 1)]
    assert [s.data["idx"] for s in val] == [{"paragraph": 0, "question": 0, "answer": a} for a in (0, 1)] + [
        {"paragraph": 0, "question": 1, "answer": 2}]
    assert set(val[0].data) == {"paragraph", "question", "answer", "label", "idx"}
    assert [s.data["idx"]["paragraph"] for s in task.load("train", data_dir)] == [0, 0, 0, 1, 1, 1]
    prompt = ('<b>Sent 1: </b>Tom has a cat.<br>\nQuestion: What does Tom have?\n'
              'I found this answer "A cat". Is that correct? Yes or No?\n')
    assert task.template.encode(val[0]) == prompt
    assert task.template.verbalize(val[0], 1) == prompt + "Yes"
    assert task.template.verbalize(val[0], 0) == prompt + "No"


def test_copa_candidates_are_choices(data_dir):
    task = get_task("Copa")
    cause, effect = task.load("train", data_dir)
    assert cause.candidates == ["The sun was rising.", "The grass was cut."]
    assert cause.correct_candidate == "The sun was rising."
    assert effect.correct_candidate == "I went to bed."
    assert cause.data["label"] == 0 and effect.data["label"] == 1
    assert task.template.encode(cause) == "My body cast a shadow over the grass because "
    assert task.template.verbalize(cause, cause.candidates[1]) == (
        "My body cast a shadow over the grass because the grass was cut.")
    assert task.template.encode(effect) == "I was tired so "
    assert task.template.verbalize(effect, "I went to bed.") == "I was tired so I went to bed."
    val = task.load("validation", data_dir)[0]
    assert task.template.verbalize(val, val.correct_candidate) == (
        "The man turned on the faucet so water flowed from the spout.")


def test_record_entities_answers_and_prompt(data_dir):
    task = get_task("ReCoRD")
    first, second = task.load("train", data_dir)
    assert first.candidates == ["Berlin", "Merkel", "Obama"]  # unique and sorted, as on the hub
    assert first.correct_candidate == ["Berlin"]
    assert second.correct_candidate == ["Obama"]
    assert first.data["idx"] == {"passage": 0, "query": 0} and second.data["idx"] == {"passage": 0, "query": 1}
    prompt = "Obama met Merkel in Berlin.\n- Obama visits Berlin\n-"
    assert task.template.encode(first) == prompt
    assert task.template.verbalize(first, "Merkel") == prompt + " Merkel is the capital of Germany."
    assert task.template.verbalize(first, first.correct_candidate) == prompt + " Berlin is the capital of Germany."
    assert len(task.load("validation", data_dir)) == 1


def test_squad_gold_answers_and_prompt(data_dir):
    task = get_task("SQuAD")
    s = task.load("validation", data_dir)[0]
    assert s.correct_candidate == ["the Denver Broncos", "Denver Broncos", "Denver Broncos"]
    assert s.candidates is None
    assert s.data["title"] == "Super_Bowl_50"
    prompt = ("Title: Super_Bowl_50\nContext: Super Bowl 50 was won by the Denver Broncos.\n"
              "Question: Who won Super Bowl 50?\nAnswer:")
    assert task.template.encode(s) == prompt
    assert task.template.verbalize(s, "Denver Broncos") == prompt + " Denver Broncos\n"
    assert task.template.verbalize(s, s.correct_candidate) == prompt + " the Denver Broncos\n"
    assert [t.correct_candidate for t in task.load("train", data_dir)][1] == ["Super Bowl 50"]


def test_drop_answers_and_prompt(data_dir):
    task = get_task("DROP")
    train = task.load("train", data_dir)
    assert [s.correct_candidate for s in train] == [["7"], ["Tom Brady", "Randy Moss"], ["9 March 2021"]]
    val = task.load("validation", data_dir)  # validated answers only; a question without any is dropped
    assert [s.correct_candidate for s in val] == [["3", "3"], ["May 1990"]]
    assert val[0].data["query_id"] == "d1"
    prompt = "Passage: The Patriots won 7-3.\nQuestion: How many points did the Patriots score?\nAnswer:"
    assert task.template.encode(train[0]) == prompt
    assert task.template.verbalize(train[0], train[0].correct_candidate) == prompt + " 7\n"


def test_drop_answer_parsing():
    assert drop_answer_strings([_drop_answer(date={"day": "9", "month": "", "year": "2021"})]) == ["9  2021"]
    assert drop_answer_strings([_drop_answer("5", spans=("x",))]) is None  # mixed kinds
    assert drop_answer_strings([]) is None
    assert drop_answer_strings([_drop_answer("1"), _drop_answer(spans=("a", "b"))]) == ["1", "a", "b"]


# ---------------------------------------------------------------------------------------------------------
# Sampling


def _samples(n: int) -> list[Sample]:
    return [Sample(id=i, data={}, correct_candidate=0, candidates=[0, 1]) for i in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 42, 1234])
def test_sample_subset_matches_the_globally_seeded_permutation(seed):
    samples = _samples(50)
    np.random.seed(999)
    before = np.random.get_state()[1].copy()
    picked = sample_subset(samples, seed, 10)
    assert np.array_equal(np.random.get_state()[1], before)  # global state untouched
    np.random.seed(seed)
    expected = np.random.permutation(50).tolist()[:10]
    assert [s.id for s in picked] == expected


def test_sample_train_sets_with_dev_at_the_end():
    task = get_task("SST2")
    train = _samples(100)
    sets = task.sample_train_sets(train, num_train=16, num_dev=8, seeds=[0, 1, 2])
    assert [len(s) for s in sets] == [24, 24, 24]
    for seed, chosen in zip([0, 1, 2], sets):
        assert [s.id for s in chosen] == [s.id for s in task.sample_subset(train, seed, 24)]
        assert chosen[:16] == task.sample_subset(train, seed, 16)  # the train part is the same draw
        assert len({s.id for s in chosen}) == 24
    assert [len(s) for s in task.sample_train_sets(train, 16, None, [5])] == [16]


def test_sample_train_sets_warns_when_short():
    task = get_task("RTE")
    with pytest.warns(UserWarning, match="only 10 exist"):
        sets = task.sample_train_sets(_samples(10), num_train=8, num_dev=8, seeds=[3])
    assert sorted(s.id for s in sets[0]) == list(range(10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task.sample_train_sets(_samples(10), num_train=5, num_dev=5, seeds=[3])


# ---------------------------------------------------------------------------------------------------------
# Hub path, with a stand-in for `datasets` (no network)

HUB_ROWS = {
    ("nyu-mll/glue", "sst2"): {"sentence": "hide new secretions ", "label": 0, "idx": 0},
    ("google/boolq", None): {"question": "is water wet", "answer": True, "passage": "Water is wet."},
    ("aps/super_glue", "rte"): {"premise": "P.", "hypothesis": "H.", "idx": 0, "label": 1},
    ("aps/super_glue", "wsc.fixed"): {"text": "Mark lied. He", "span1_index": 0, "span2_index": 2,
                                      "span1_text": "Mark", "span2_text": "He", "idx": 0, "label": 0},
    ("aps/super_glue", "copa"): {"premise": "I was tired.", "choice1": "A.", "choice2": "B.",
                                 "question": "effect", "idx": 0, "label": 1},
    ("aps/super_glue", "record"): {"passage": "Obama met Merkel.", "query": "@placeholder spoke.",
                                   "entities": ["Merkel", "Obama"], "answers": ["Obama"],
                                   "idx": {"passage": 0, "query": 0}},
    ("rajpurkar/squad", None): {"id": "a1", "title": "T", "context": "C.", "question": "Q?",
                                "answers": {"text": ["x", "y"], "answer_start": [0, 1]}},
    ("ucinlp/drop", None): {"section_id": "s", "query_id": "q", "passage": "P.", "question": "Q?",
                            "answers_spans": {"spans": ["3"], "types": ["number"]}},
}


def test_hub_rows_become_the_same_samples(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return [dict(HUB_ROWS[(path, name)])]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset))
    monkeypatch.setattr(hub, "offline_reason", lambda: None)  # the fake answers as a reachable hub would
    got = {name: get_task(name).load("validation")[0]
           for name in ("SST2", "BoolQ", "RTE", "WSC", "Copa", "ReCoRD", "SQuAD", "DROP")}
    assert calls == [(path, name, "validation") for path, name in HUB_ROWS]
    assert got["SST2"].data["sentence"] == "hide new secretions" and got["SST2"].correct_candidate == 0
    assert (got["BoolQ"].correct_candidate, got["BoolQ"].data["label"]) == ("Yes", 1)
    assert got["RTE"].correct_candidate == 1 and got["WSC"].correct_candidate == 0
    assert got["Copa"].correct_candidate == "B." and got["Copa"].candidates == ["A.", "B."]
    assert got["ReCoRD"].candidates == ["Merkel", "Obama"] and got["ReCoRD"].correct_candidate == ["Obama"]
    assert got["SQuAD"].correct_candidate == ["x", "y"] and got["SQuAD"].data["title"] == "T"
    assert got["DROP"].correct_candidate == ["3"] and got["DROP"].data["context"] == "P."
    assert get_task("DROP").template.encode(got["DROP"]) == "Passage: P.\nQuestion: Q?\nAnswer:"


# ---- the task tables the shell drivers read ------------------------------------------------------------------
def test_the_drivers_task_table_names_the_registered_tasks():
    """large_models/task_table.py (standard library, read by the drivers) and the task classes agree; the driver
    settings are MeZO's: CB and Copa keep 100 dev examples, Copa/ReCoRD/SQuAD/DROP train as a language model."""
    from large_models import task_table
    from large_models.tasks import TASKS

    assert tuple(task_table.TASKS) == tuple(TASKS)
    assert [n for n, s in task_table.TASKS.items() if s.default_dev != 500] == ["CB", "Copa"]
    assert [n for n, s in task_table.TASKS.items() if not s.classification] == ["Copa", "ReCoRD", "SQuAD", "DROP"]
    assert all(task_table.TASKS[n].classification is False for n, cls in TASKS.items() if cls.generation)


def test_the_medium_drivers_task_table_names_the_registered_tasks():
    from medium_models import task_table
    from medium_models.tasks import TASKS

    assert tuple(task_table.NAMES) == tuple(TASKS)


@pytest.mark.parametrize("app", ["large_models", "medium_models"])
def test_the_task_tables_run_by_path_without_the_project(app, tmp_path):
    """The drivers run the tables as `python3 <app>/task_table.py`: from any folder, importing nothing heavy."""
    import subprocess

    table = Path(__file__).resolve().parent.parent / app / "task_table.py"
    code = (f"import runpy, sys; sys.argv = [{str(table)!r}, 'names']; runpy.run_path({str(table)!r}, "
            "run_name='__main__')")
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "SST" in proc.stdout, proc.stderr
