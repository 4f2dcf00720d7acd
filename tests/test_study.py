"""scripts/study.py on hand-made result files: the method table's statistics, every run listed with its file,
the ablations against the reference's seeds, and the figures."""
import pytest

from sweeps import study
from sweeps.load import load_sweep
from tests.sweep_fixtures import result_json, write_result, write_sweep


def _result(accuracy, seed, merge_every=0, trainer="regular", task="SST2", **extra):
    result = result_json(accuracy=accuracy, dev=0.6 + seed / 100, steps=8, merge_every=merge_every, seed=seed)
    result.update(task=task, trainer=trainer, resources={"wall_s": 120.0 + 60 * seed, "peak_rss_mib": 2048.0})
    result["train"].update(trainable_parameters=1000, steps_per_s=0.5, global_step=8, **extra)
    return result


@pytest.fixture
def study_file(tmp_path):
    body = '[fixed]\nTASK = "SST2"\n[grid]\nMODE = ["lora", "xgblora"]\nSEED = [0, 1, 2]\n'
    main = load_sweep(write_sweep(tmp_path, body, name="main"))
    points = main.points()
    for point, acc in zip(points, [0.80, 0.82, 0.84, 0.70, 0.72, None]):  # xgblora seed 2 never ran
        if acc is not None:
            write_result(point.result_file, _result(acc, int(point.variables["SEED"]),
                                                    merge_every=4 * (point.variables["MODE"] == "xgblora")))
    abl = load_sweep(write_sweep(tmp_path, '[grid]\nXGBLORA_RANK = [2, 4]\n', name="abl"))
    for point, acc in zip(abl.points(), [0.75, 0.65]):
        write_result(point.result_file, _result(acc, 0))
    path = tmp_path / "study.toml"
    path.write_text(f'[study]\nout = "{tmp_path / "out"}"\n'
                    f'[[method]]\nlabel = "LoRA"\nsweep = "{main.path}"\nselect = {{MODE = "lora"}}\n'
                    f'[[method]]\nlabel = "XGB"\nsweep = "{main.path}"\nselect = {{MODE = "xgblora"}}\n'
                    f'[[ablation]]\nsweep = "{abl.path}"\nreference = "XGB"\n')
    return path


def test_method_table_has_mean_std_and_counts_of_the_picked_runs(study_file):
    table = study.method_table(study.load_study(study_file))
    lora, xgb = table.splitlines()[2:]
    # LoRA: 0.80, 0.82, 0.84 -> mean 0.820, sample std 0.020; wall 2, 3, 4 min -> 3.0; 2048 MiB -> 2.00 GiB
    assert lora == "| LoRA | SST2 | 0.820 ± 0.020 (3/3) | 1,000 | 3.0 | 0.500 | 2.00 |"
    assert xgb.startswith("| XGB | SST2 | 0.710 ± 0.014 (2/3) | 1,000 | 2.5 |")


def test_every_run_is_listed_with_its_status_and_result_file(study_file):
    rows = study.runs_table(study.load_study(study_file)).splitlines()[2:]
    assert len(rows) == 6
    assert "| XGB | SST2 | SEED=2 | missing |" in rows[-1]
    assert rows[0].startswith("| LoRA | SST2 | SEED=0 | completed | 0.800 | 0.600 | 8 | [MODE=lora,SEED=0-")
    assert "](../results/MODE=lora,SEED=0-" in rows[0]  # a link relative to the study's out folder


def test_ablations_are_compared_with_the_reference_mean(study_file):
    text = study.ablation_table(study.load_study(study_file))
    assert "Reference: XGB, eval.accuracy 0.710 ± 0.014 (2/2)." in text
    assert "| XGBLORA_RANK=2 | completed | 0.750 | +0.040 | 1,000 |" in text
    assert "| XGBLORA_RANK=4 | completed | 0.650 | -0.060 | 1,000 |" in text


def test_mean_curve_keeps_the_steps_every_run_has():
    steps, mean, low, high = study.mean_curve([([1, 2, 3], [1.0, 2.0, 3.0]), ([2, 3, 4], [4.0, 6.0, 8.0])])
    assert (steps, mean, low, high) == ([2, 3], [3.0, 4.5], [2.0, 3.0], [4.0, 6.0])


def test_main_writes_tables_and_figures(study_file, tmp_path):
    assert study.main([str(study_file)]) == 0
    out = tmp_path / "out"
    assert (out / "tables.md").read_text().startswith("<!-- written by scripts/study.py")
    for stem in ("dev_regular", "loss_regular", "ablations"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 10_000
    assert not (out / "figures" / "projected_grad.png").exists()  # no zo method in this study


def test_a_reference_that_is_no_method_is_refused(study_file):
    study_file.write_text(study_file.read_text().replace('reference = "XGB"', 'reference = "nope"'))
    with pytest.raises(study.SweepError, match="reference 'nope' is no method's label"):
        study.load_study(study_file)


@pytest.mark.parametrize("old, new, message", [
    ('select = {MODE = "lora"}', 'select = {MOD = "lora"}', "[[method]] 'LoRA' select MOD: not a key of"),
    ('select = {MODE = "lora"}', 'select = {MODE = "lorra"}', "select {'MODE': 'lorra'}: picks none of the 6 runs"),
    ('label = "XGB"', 'label = "LoRA"', "[[method]] label 'LoRA' is given to 2 methods"),
    ('[study]\n', '[study]\nmetric = "eval.f1"\n', "[study] metric: eval.f1: no completed result has it (they "
                                                     "have: eval.accuracy, dev.accuracy)"),
])
def test_a_select_label_or_metric_that_would_give_empty_or_ambiguous_tables_is_refused(study_file, old, new,
                                                                                         message):
    study_file.write_text(study_file.read_text().replace(old, new, 1))
    with pytest.raises(study.SweepError) as err:
        study.load_study(study_file)
    assert message in str(err.value)
    assert study.main([str(study_file)]) == 2 and not (study_file.parent / "out").exists()


def test_a_select_on_a_fixed_setting_and_a_float_value_picks_runs(tmp_path):
    """Select values are compared as the sweep writes them to the driver (1e-05 -> 1e-5)."""
    main = load_sweep(write_sweep(tmp_path, '[fixed]\nTASK = "SST2"\nLR = 1e-5\n[grid]\nSEED = [0, 1]\n'))
    for point in main.points():
        write_result(point.result_file, _result(0.8, int(point.variables["SEED"])))
    path = tmp_path / "study.toml"
    path.write_text(f'[[method]]\nlabel = "A"\nsweep = "{main.path}"\nselect = {{TASK = "SST2", LR = 1e-5}}\n')
    assert len(study.load_study(path).methods[0].runs) == 2
