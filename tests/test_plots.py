"""scripts/plots.py on hand-made result files: every figure written as a non-empty PNG and PDF, with the curves,
merge marks and bars the results hold."""
import pytest

from sweeps import plots
from sweeps.aggregate import build_table
from sweeps.load import load_sweep
from tests.sweep_fixtures import result_json, write_result, write_sweep

BODY = '[grid]\nMODE = ["lora", "xgblora"]\nSEED = [0, 1]\n'


@pytest.fixture
def sweep(tmp_path):
    """lora: two seeds, 12 steps; xgblora: seed 0 with a merge every 4 steps, seed 1 diverged."""
    sweep = load_sweep(write_sweep(tmp_path, BODY))
    lora0, lora1, xgb0, xgb1 = sweep.points()
    write_result(lora0.result_file, result_json(accuracy=0.8, steps=12, seed=0))
    write_result(lora1.result_file, result_json(accuracy=0.82, steps=12, seed=1))
    write_result(xgb0.result_file, result_json(accuracy=0.85, steps=12, merge_every=4))
    write_result(xgb1.result_file, result_json(status="diverged at step 5", steps=4))
    return sweep


def test_every_figure_is_written_as_png_and_pdf(sweep, tmp_path, capsys):
    out = tmp_path / "figs"
    assert plots.main([str(sweep.path), "--out", str(out)]) == 0
    for stem in ("loss", "dev", "bars", "delta_norm"):
        png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1_000
    assert "delta_norm: " + str(out / "delta_norm.png") in capsys.readouterr().out


def test_figures_hold_the_results_curves_and_merges(sweep):
    table = build_table(sweep)
    loss = plots.plot_loss(table)
    lora_ax, xgb_ax = loss.axes
    assert [len(line.get_xdata()) for line in lora_ax.lines] == [12, 12]  # two seeds, a loss per step
    merge_marks = [line for line in xgb_ax.lines if line.get_linestyle() == ":"]
    assert sorted(line.get_xdata()[0] for line in merge_marks) == [4, 8, 12]
    dev_ax = plots.plot_dev(table, "accuracy").axes[0]
    assert list(dev_ax.lines[0].get_xdata()) == [2, 4, 6, 8, 10, 12]
    bars = plots.plot_bars(table, "eval.accuracy").axes[0]
    assert [round(p.get_height(), 3) for p in bars.patches] == [0.81, 0.85]
    norms = plots.plot_delta_norms(table).axes[0].lines[0]
    assert list(norms.get_xdata()) == [4, 8, 12] and list(norms.get_ydata()) == pytest.approx([0.1, 0.11, 0.12])


def test_figures_without_data_are_left_out_with_the_reason(tmp_path, capsys):
    sweep = load_sweep(write_sweep(tmp_path, '[grid]\nSEED = [0]\n'))
    write_result(sweep.points()[0].result_file, result_json(accuracy=0.7))  # no training, no merges
    assert plots.main([str(sweep.path), "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert "delta_norm: left out (no boosting merges" in out and "loss: left out" in out
    assert (tmp_path / "figs" / "bars.png").stat().st_size > 0 and not (tmp_path / "figs" / "loss.png").exists()


def test_no_results_at_all_is_an_error_that_says_what_to_do(tmp_path):
    sweep_file = write_sweep(tmp_path, '[grid]\nSEED = [0]\n')
    with pytest.raises(SystemExit, match="run the sweep first"):
        plots.main([str(sweep_file)])
