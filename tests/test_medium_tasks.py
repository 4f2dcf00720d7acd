"""medium_models/tasks.py: each LM-BFF task's column layout read from fixtures in its own format, the k-shot
folder layout, and clear errors for a missing folder, a bad label or a short row."""
import pytest

from medium_models.tasks import TASKS, get_task
from mezo_engine.tasks import DataError
from tests.lmbff_fixtures import examples, write_kshot


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_reads_its_own_columns(name, tmp_path):
    task = TASKS[name]
    root = write_kshot(task, tmp_path, k=2, seed=13)
    folder = task.split_dir(root, 2, 13)
    for split, n in (("train", 2), ("dev", 2), ("test", 3)):
        samples = task.load(folder, split)
        expected = examples(task, n)
        assert [s.data["texts"] for s in samples] == [texts for texts, _ in expected]
        gold = [float(y) if task.regression else task.labels.index(y) for _, y in expected]
        assert [s.correct_candidate for s in samples] == gold
        assert all(s.candidates == list(range(len(task.labels))) for s in samples)


def test_csv_quoting_and_tsv_without_quoting(tmp_path):
    folder = tmp_path / "mr" / "16-42"
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text('1,"a ""quoted"", comma, sentence"\n0,plain\n')
    samples = TASKS["mr"].load(folder, "train")
    assert [s.data["texts"] for s in samples] == [['a "quoted", comma, sentence'], ["plain"]]
    sst = tmp_path / "SST-2" / "16-42"
    sst.mkdir(parents=True)
    (sst / "train.tsv").write_text('sentence\tlabel\n"quoted start\t1\n')  # GLUE TSV: quotes are text
    assert TASKS["SST-2"].load(sst, "train")[0].data["texts"] == ['"quoted start']


def test_mnli_reads_the_matched_dev_and_test_files(tmp_path):
    task = TASKS["MNLI"]
    folder = task.split_dir(write_kshot(task, tmp_path), 2, 42)
    assert sorted(p.name for p in folder.iterdir()) == ["dev_matched.tsv", "test_matched.tsv", "train.tsv"]
    assert len(task.load(folder, "dev")) == 6


def test_errors_name_the_file_line_and_problem(tmp_path):
    task = TASKS["RTE"]
    with pytest.raises(FileNotFoundError, match=r"no folder .*RTE/16-42 for task RTE, K=16, seed 42 .*--data_dir"):
        task.split_dir(tmp_path, 16, 42)
    folder = tmp_path / "RTE" / "16-42"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n1\ta\tb\tmaybe\n")
    with pytest.raises(DataError, match=r"train.tsv, line 2: label 'maybe' is not one of entailment, not_entailment"):
        task.load(folder, "train")
    (folder / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n1\ta\n")
    with pytest.raises(DataError, match=r"line 2: 2 field\(s\), expected at least 3"):
        task.load(folder, "train")
    (folder / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(DataError, match="no examples"):
        task.load(folder, "train")
    with pytest.raises(FileNotFoundError, match="no file .*dev.tsv for task RTE split dev"):
        task.load(folder, "dev")


def test_task_names_are_lm_bff_names():
    assert get_task("SST-2").name == "SST-2"
    with pytest.raises(ValueError, match="task 'SST2' unknown \\(LM-BFF's name is 'SST-2'\\)"):
        get_task("SST2")


def test_sts_b_reads_scores_and_refuses_one_outside_its_bounds(tmp_path):
    task = TASKS["STS-B"]
    folder = task.split_dir(write_kshot(task, tmp_path, k=2, seed=42), 2, 42)
    assert [s.correct_candidate for s in task.load(folder, "train")] == [1.0, 1.2, 4.0, 4.2]
    assert [task.demo_label(s.correct_candidate) for s in task.load(folder, "train")] == [0, 0, 1, 1]
    lines = (folder / "dev.tsv").read_text().splitlines()
    (folder / "dev.tsv").write_text("\n".join([lines[0], lines[1].rsplit("\t", 1)[0] + "\t5.5"]) + "\n")
    with pytest.raises(DataError, match=r"dev.tsv, line 2: score '5.5' is not a number from 0 to 5"):
        task.load(folder, "dev")
