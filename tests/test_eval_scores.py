"""scripts/eval_scores.py: the per-example scores it rebuilds from a result's predictions and configuration are
those run.py wrote (tiny OPT, the SST-2 fixture, three ways of drawing the evaluation examples)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from large_models import run

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import eval_scores  # noqa: E402


@pytest.mark.parametrize("flags", [
    ["--num_train", "2", "--train_set_seed", "1", "--num_eval", "5"],  # a train set's seed draws the examples
    ["--num_train", "2", "--num_eval", "5"],  # in-context, one demonstration set per example: seed 0
    ["--num_train", "3", "--train_set_seed", "2", "--train_from_validation", "--num_eval", "4"],  # what is left
])
def test_rebuilt_scores_are_the_ones_run_py_wrote(tmp_path, tiny_opt_dir, sst2_dir, flags):
    out = tmp_path / "r.json"
    run.main(["--model_name", str(tiny_opt_dir), "--task_name", "SST2", "--data_dir", str(sst2_dir),
              "--trainer", "none", "--result_file", str(out), "--disable_tqdm", "True", *flags])
    written = json.loads(out.read_text())
    assert eval_scores.main([str(out)]) == 0  # checked against the scores it has
    stripped = {k: v for k, v in written.items() if k != "eval_scores"}
    out.write_text(json.dumps(stripped))
    assert eval_scores.main([str(out)]) == 0
    assert json.loads(out.read_text())["eval_scores"] == written["eval_scores"]
    assert len(written["eval_scores"]) == written["num_eval"]


def test_predictions_that_are_not_the_runs_are_refused(tmp_path, tiny_opt_dir, sst2_dir, capsys):
    """One prediction flipped (SST-2's labels are 0 and 1): against the scores run.py wrote they differ, and
    without them the scores' mean is no longer the recorded accuracy."""
    out = tmp_path / "r.json"
    run.main(["--model_name", str(tiny_opt_dir), "--task_name", "SST2", "--data_dir", str(sst2_dir),
              "--trainer", "none", "--result_file", str(out), "--disable_tqdm", "True", "--num_train", "2",
              "--train_set_seed", "1", "--num_eval", "8"])
    written = json.loads(out.read_text())
    flipped = [1 - written["eval_predictions"][0], *written["eval_predictions"][1:]]
    out.write_text(json.dumps({**written, "eval_predictions": flipped}))
    assert eval_scores.main([str(out)]) == 1 and "THEY DIFFER" in capsys.readouterr().out
    out.write_text(json.dumps({k: v for k, v in written.items() if k != "eval_scores"} | {"eval_predictions": flipped}))
    assert eval_scores.main([str(out)]) == 1
    assert "is not the recorded accuracy" in capsys.readouterr().err
    assert "eval_scores" not in json.loads(out.read_text())
