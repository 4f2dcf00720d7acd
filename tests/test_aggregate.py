"""scripts/aggregate.py on hand-made result files: mean +- std over seeds, counts, missing and failed runs."""
import csv
import io
import statistics

import pytest

from sweeps import aggregate
from sweeps.load import load_sweep
from tests.sweep_fixtures import result_json, write_result, write_sweep

BODY = '[fixed]\nTASK = "SST2"\n[grid]\nMODE = ["lora", "xgblora"]\nLR = ["1e-4"]\nSEED = [0, 1, 2]\n'


@pytest.fixture
def sweep_file(tmp_path):
    """lora: three completed seeds; xgblora: seed 0 completed, seed 1 diverged, seed 2 never ran."""
    path = write_sweep(tmp_path, BODY)
    lora0, lora1, lora2, xgb0, xgb1, _ = load_sweep(path).points()
    for point, acc, dev in ((lora0, 0.80, 0.7), (lora1, 0.84, 0.75), (lora2, 0.86, None), (xgb0, 0.9, 0.8)):
        write_result(point.result_file, result_json(accuracy=acc, dev=dev))
    write_result(xgb1.result_file, result_json(status="diverged at step 12"))
    return path


def test_table_cells_mean_std_and_counts(sweep_file):
    table = aggregate.build_table(load_sweep(sweep_file))
    assert table.by == ["MODE", "LR"] and table.metrics == ["eval.accuracy", "dev.accuracy"]
    lora, xgb = table.cells
    assert lora.key == ("lora", "1e-4") and (len(lora.done), len(lora.missing)) == (3, 0)
    mean, std, n = table.stats(lora, "eval.accuracy")
    assert mean == pytest.approx(0.8333333) and std == pytest.approx(statistics.stdev([0.80, 0.84, 0.86])) and n == 3
    assert table.stats(lora, "dev.accuracy")[2] == 2  # one lora run has no dev metric
    assert table.stats(xgb, "eval.accuracy") == (pytest.approx(0.9), None, 1)
    assert (len(xgb.done), len(xgb.missing)) == (1, 2)
    assert sorted(r.state.detail for r in table.missing()) == ["diverged at step 12", "no result yet"]


def test_csv_and_markdown(sweep_file, tmp_path, capsys):
    assert aggregate.main([str(sweep_file), "--out", str(tmp_path / "agg")]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "agg" / "summary.csv").read_text())))
    assert [r["MODE"] for r in rows] == ["lora", "xgblora"]
    assert float(rows[0]["eval.accuracy_mean"]) == pytest.approx(0.8333333)
    assert rows[0]["eval.accuracy_n"] == "3" and rows[0]["dev.accuracy_n"] == "2" and rows[0]["missing"] == "0"
    assert rows[1]["eval.accuracy_std"] == "" and rows[1]["runs"] == "1" and rows[1]["missing"] == "2"
    md = (tmp_path / "agg" / "summary.md").read_text()
    assert "| MODE | LR | eval.accuracy | dev.accuracy | runs | missing |" in md
    assert "| lora | 1e-4 | 0.8333 ± 0.0306 | 0.7250 ± 0.0354 (n=2) | 3 | 0 |" in md
    assert "| xgblora | 1e-4 | 0.9000 | 0.8000 | 1 | 2 |" in md
    assert "Not in the table: 2 of 6 runs." in md
    assert "- MODE=xgblora LR=1e-4 SEED=1: diverged at step 12" in md
    assert "- MODE=xgblora LR=1e-4 SEED=2: no result yet" in md
    assert md in capsys.readouterr().out


def test_over_another_variable_and_chosen_metric(sweep_file, tmp_path):
    table = aggregate.build_table(load_sweep(sweep_file), over="MODE", metrics=["eval.accuracy"])
    assert table.by == ["LR", "SEED"] and [c.key for c in table.cells] == [("1e-4", s) for s in "012"]
    assert table.stats(table.cells[0], "eval.accuracy")[0] == pytest.approx(0.85)  # lora 0.80, xgblora 0.90


def test_no_results_yet_gives_an_empty_table_not_an_error(tmp_path):
    table = aggregate.build_table(load_sweep(write_sweep(tmp_path, BODY)))
    assert table.metrics == [] and [len(c.missing) for c in table.cells] == [3, 3]
    assert "Not in the table: 6 of 6 runs." in aggregate.markdown_text(table, "t")


@pytest.mark.parametrize("flags, message", [
    (["--metric", "eval.f1"], "--metric eval.f1: no completed result has it (they have: eval.accuracy, dev.accuracy)"),
    (["--metric", "dev.acuracy"], "--metric dev.acuracy: no completed result has it; did you mean dev.accuracy?"),
    (["--over", "SEEDZ"], "--over SEEDZ: not a key of sweep t; did you mean SEED? (its keys: MODE, LR, SEED, TASK)"),
])
def test_an_unknown_metric_or_over_exits_non_zero_and_writes_nothing(sweep_file, tmp_path, flags, message):
    with pytest.raises(SystemExit) as err:
        aggregate.main([str(sweep_file), "--out", str(tmp_path / "agg"), *flags])
    assert err.value.code.startswith(f"aggregate.py: error: {message}") and not (tmp_path / "agg").exists()


def test_before_any_result_a_metric_must_at_least_look_like_one(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, BODY))
    assert aggregate.build_table(sweep, metrics=["eval.f1"]).metrics == ["eval.f1"]  # may come with the results
    with pytest.raises(aggregate.SweepError, match="--metric accuracy: give eval.<name> or dev.<name>"):
        aggregate.build_table(sweep, metrics=["accuracy"])
