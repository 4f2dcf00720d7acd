"""Result names are part of the interface: a sweep skips a point whose result file is complete and the drivers'
``RESUME=auto`` finds a run's checkpoints in the folder of the same name, so a refactor that renames a finished
run makes it run again from step 0. This pins the names of every run.py result JSON committed under docs/study/.

A result has two names, both recomputed here through the code the runs use:

* its file name, which a sweep chose: ``<grid values>-<hash>`` (scripts/sweeps/spec.py: the hash covers the
  driver, every setting of the point and the sweep's ``args``), recomputed from the committed sweep file
  (``load_sweep(...).points()``, the sweep's own code) and found equal to the file's stem and to the
  ``result_file`` recorded in its configuration; the point's command, built as the sweep builds it
  (``make_launch``) and passed through its driver, still gives run.py that result file and the checkpoint folder
  beside it;
* its run.py name, ``<task>-<model>-<tag>-<hash>`` (mezo_engine/results.py: the hash covers every setting that
  changes the result and differs from the current parser's default), which a run started by hand without
  ``--result_file`` gets, with its checkpoints in ``result/<name>/``. It is recomputed by ``run.result_path``
  (the app's defaults, as run.py calls it) twice: from the configuration recorded in the JSON, and from today's
  parse of the point's command; both must give the name written in ``RUN_NAMES``.

Fails when: the sweep file or the sweep's naming (``settings_hash``, ``point_name``, value formatting) changes;
a driver passes different flags for the same settings; a flag is renamed or its default changes
(``default_config``), ``NOT_IN_HASH`` or ``hashed_settings`` or ``run_name`` changes; or a result JSON is added,
removed or renamed without updating this file (the counts are asserted, so a glob that finds nothing fails).
A rename that is meant must move the committed results (and their checkpoint folders) and update ``RUN_NAMES``.

Not a result, so not named here: docs/study/alignment/*.json (scripts/merge_alignment.py's output); they
refer to results by name, which must exist. Named by hand (``--result_file``), so only their run.py name is
pinned: docs/study/baselines/dev-zero-shot-seed{0,1}.json. One point was cut from its grid after it ran (its
values are in ``CUT_POINTS``); its name is recomputed by the sweep's code with those values put back.
Needs bash (to run the drivers, with a stand-in ``python`` that only records the command); no model, no data,
no network.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest
import torch

from large_models import run
from large_models.arguments import parse_args
from mezo_engine.runner import run_output_dir
from sweeps.load import load_sweep
from sweeps.spec import Point, Sweep
from sweeps.worker import make_launch

REPO = Path(__file__).resolve().parent.parent
STUDY = REPO / "docs" / "study"

# Every run.py result under docs/study/ (path relative to it) -> its run.py name (generated once by
# run.result_path from the recorded configuration, when the names were checked against today's commands).
RUN_NAMES = {
    "baselines/TASK=RTE,NUM_TRAIN=0-7dda3169.json":
        "RTE-smollm2-135m-icl-0-onetrainpereval-8f1cbbfd",
    "baselines/TASK=SST2,NUM_TRAIN=0-e4ca8fee.json":
        "SST2-smollm2-135m-icl-0-onetrainpereval-e49dda82",
    "baselines/TASK=SST2,NUM_TRAIN=32-cbf94bf9.json":
        "SST2-smollm2-135m-icl-32-onetrainpereval-d6a54eba",
    "baselines/dev-zero-shot-seed0.json":
        "SST2-smollm2-135m-cbca70e8",
    "baselines/dev-zero-shot-seed1.json":
        "SST2-smollm2-135m-6a70b460",
    "sst2-ablations/MODE=lora,LORA_R=1-014b303b.json":
        "SST2-smollm2-135m-lora-1-8-5e-4-0-f0ae80bd",
    "sst2-ablations/MODE=xgblora,XGBLORA_STEPS=125-dd954ddf.json":
        "SST2-smollm2-135m-xgblora-k125-1-8-5e-4-0-69c3159c",
    "sst2-ablations/MODE=xgblora,XGBLORA_STEPS=25,XGBLORA_LAYERS=1-d771f0c8.json":
        "SST2-smollm2-135m-xgblora-k25-1-8-5e-4-0-a2763855",
    "sst2-ablations/MODE=xgblora,XGBLORA_STEPS=25,XGBLORA_LAYERS=8-79cd1572.json":
        "SST2-smollm2-135m-xgblora-k25-1-8-5e-4-0-ab3d1743",
    "sst2-ablations/MODE=xgblora,XGBLORA_STEPS=25,XGBLORA_RANK=2-f65c815f.json":
        "SST2-smollm2-135m-xgblora-k25-1-8-5e-4-0-cea16887",
    "sst2-ablations/MODE=xgblora,XGBLORA_STEPS=25,XGBLORA_RANK=4-2c17e0c7.json":
        "SST2-smollm2-135m-xgblora-k25-1-8-5e-4-0-c9dd5870",
    "sst2-ablations/MODE=xgblora,XGBLORA_STEPS=25,xgblora_merge_scale=0.5-abdc4dda.json":
        "SST2-smollm2-135m-xgblora-k25-1-8-5e-4-0-a608260d",
    "sst2-ablations/MODE=xgblora,XGBLORA_STEPS=25,xgblora_merge_scale=2-a69500e6.json":
        "SST2-smollm2-135m-xgblora-k25-1-8-5e-4-0-32ddab08",
    "sst2-ablations/MODE=xgblora,XGBLORA_STEPS=5-1b8c8c73.json":
        "SST2-smollm2-135m-xgblora-k5-1-8-5e-4-0-4b14862a",
    "sst2-ablations/MODE=xgblora,XGBLORA_STEPS=50-80c61fe4.json":
        "SST2-smollm2-135m-xgblora-k50-1-8-5e-4-0-ed4283e4",
    "sst2-regular/MODE=lora,SEED=0-674edddb.json":
        "SST2-smollm2-135m-lora-1-8-5e-4-0-802813d4",
    "sst2-regular/MODE=lora,SEED=1-9689e273.json":
        "SST2-smollm2-135m-lora-1-8-5e-4-1-17c35890",
    "sst2-regular/MODE=lora,SEED=2-6b5b485c.json":
        "SST2-smollm2-135m-lora-1-8-5e-4-2-9b6a35e5",
    "sst2-regular/MODE=xgblora,XGBLORA_STEPS=25,SEED=0-8b8fc98b.json":
        "SST2-smollm2-135m-xgblora-k25-1-8-5e-4-0-2184321e",
    "sst2-regular/MODE=xgblora,XGBLORA_STEPS=25,SEED=1-f99e0979.json":
        "SST2-smollm2-135m-xgblora-k25-1-8-5e-4-1-2f8d1cdd",
    "sst2-regular/MODE=xgblora,XGBLORA_STEPS=25,SEED=2-8342405b.json":
        "SST2-smollm2-135m-xgblora-k25-1-8-5e-4-2-fd6fe7d4",
    "sst2-regular-ft/SEED=0-731138e1.json":
        "SST2-smollm2-135m-ft-1-8-1e-5-0-9c02f2cc",
    "sst2-regular-ft/SEED=1-2bd7e418.json":
        "SST2-smollm2-135m-ft-1-8-1e-5-1-b1901d1d",
    "sst2-regular-ft/SEED=2-5a7c29d2.json":
        "SST2-smollm2-135m-ft-1-8-1e-5-2-6c6f6145",
    "sst2-zo/MODE=ft,EPS=1e-3,LR=3e-5,SEED=0-f52f783e.json":
        "SST2-smollm2-135m-mezo-ft-1000-16-3e-5-1e-3-0-665c529d",
    "sst2-zo/MODE=ft,EPS=1e-3,LR=3e-5,SEED=1-1a38bafb.json":
        "SST2-smollm2-135m-mezo-ft-1000-16-3e-5-1e-3-1-e03d5b6c",
    "sst2-zo/MODE=lora,EPS=1e-2,LR=1e-3,SEED=0-fd9f0a7a.json":
        "SST2-smollm2-135m-mezo-lora-1000-16-1e-3-1e-2-0-b5b58c1f",
    "sst2-zo/MODE=lora,EPS=1e-2,LR=1e-3,SEED=1-ae04424e.json":
        "SST2-smollm2-135m-mezo-lora-1000-16-1e-3-1e-2-1-97723a88",
    "sst2-zo/MODE=xgblora,XGBLORA_STEPS=100,EPS=1e-2,LR=1e-3,SEED=0-77525a79.json":
        "SST2-smollm2-135m-mezo-xgblora-k100-1000-16-1e-3-1e-2-0-e4883544",
    "sst2-zo/MODE=xgblora,XGBLORA_STEPS=100,EPS=1e-2,LR=1e-3,SEED=1-6cdfa60d.json":
        "SST2-smollm2-135m-mezo-xgblora-k100-1000-16-1e-3-1e-2-1-14c1924f",
    "sst2-zo-search/MODE=ft,EPS=1e-3,LR=1e-5-277cb69a.json":
        "SST2-smollm2-135m-mezo-ft-300-16-1e-5-1e-3-0-2ed0da55",
    "sst2-zo-search/MODE=ft,EPS=1e-3,LR=3e-5-cc36315f.json":
        "SST2-smollm2-135m-mezo-ft-300-16-3e-5-1e-3-0-c50a265a",
    "sst2-zo-search/MODE=lora,EPS=1e-2,LR=1e-3-3431277b.json":
        "SST2-smollm2-135m-mezo-lora-300-16-1e-3-1e-2-0-a67f78fc",
    "sst2-zo-search/MODE=lora,EPS=1e-2,LR=1e-4-a1bbb765.json":
        "SST2-smollm2-135m-mezo-lora-300-16-1e-4-1e-2-0-9d440e28",
    "sst2-zo-search/MODE=lora,EPS=1e-2,LR=3e-3-bb31cd28.json":
        "SST2-smollm2-135m-mezo-lora-300-16-3e-3-1e-2-0-6c7cfc0a",
    "sst2-zo-search/MODE=lora,EPS=1e-2,LR=3e-4-19ff1bb3.json":
        "SST2-smollm2-135m-mezo-lora-300-16-3e-4-1e-2-0-c505deb0",
    "sst2-zo-search/MODE=xgblora,XGBLORA_STEPS=100,EPS=1e-2,LR=1e-3-acd30436.json":
        "SST2-smollm2-135m-mezo-xgblora-k100-300-16-1e-3-1e-2-0-8105952a",
    "sst2-zo-search/MODE=xgblora,XGBLORA_STEPS=100,EPS=1e-2,LR=3e-3-067a7233.json":
        "SST2-smollm2-135m-mezo-xgblora-k100-300-16-3e-3-1e-2-0-f23ee8e5",
    "sst2-zo-search/MODE=xgblora,XGBLORA_STEPS=100,EPS=1e-2,LR=3e-4-c09ebe9b.json":
        "SST2-smollm2-135m-mezo-xgblora-k100-300-16-3e-4-1e-2-0-ca137e63",
}
HAND_NAMED = {"baselines/dev-zero-shot-seed0.json", "baselines/dev-zero-shot-seed1.json"}
# Points that ran and were then cut from their sweep's grid (see the comment in the sweep file): their values.
CUT_POINTS = {
    "sst2-zo-search/MODE=xgblora,XGBLORA_STEPS=100,EPS=1e-2,LR=3e-3-067a7233.json":
        {"MODE": "xgblora", "XGBLORA_STEPS": "100", "EPS": "1e-2", "LR": "3e-3"},
}
SWEEPS = ["baselines", "sst2-ablations", "sst2-regular", "sst2-regular-ft", "sst2-zo", "sst2-zo-search"]
NON_RESULTS = {"alignment/regular-xgblora-seed0.json", "alignment/zo-xgblora-lr1e-3-seed0.json"}


def _committed_jsons() -> dict[str, dict]:
    """The JSON files in docs/study/<folder>/, where results are committed (deeper folders are checkpoints, ignored
    by git: their trainer_state.json and config.json are not results)."""
    return {p.relative_to(STUDY).as_posix(): json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(STUDY.glob("*/*.json"))}


def _is_result(data) -> bool:
    """A run.py result: a JSON object with the resolved configuration run.py records."""
    return isinstance(data, dict) and isinstance(data.get("config"), dict) and "task_name" in data["config"]


class _Recorded:
    """A recorded configuration in the place of the parsed arguments ``run.result_path`` reads: ``to_dict()`` is
    what the run recorded (``EngineArguments.to_dict``, which keeps the user's ``--load_best_model_at_end``, i.e.
    ``keep_best_model``); no ``--result_file``, so the default name is computed."""

    def __init__(self, config: dict):
        self._config = config
        self.task_name, self.model_name, self.tag = config["task_name"], config["model_name"], config["tag"]
        self.task_label = self.task_name  # the name's task part (``custom-<name>`` only for a task file)
        self.keep_best_model = config["load_best_model_at_end"]
        self.result_file = self.result_dir = None

    def to_dict(self) -> dict:
        return dict(self._config)


def _default_name(args) -> str:
    """run.py's name for ``args`` (one train set, as every run here: ``num_train_sets`` unset)."""
    return run.result_path(args, None, False).name.removesuffix(".json")


def _sweeps(monkeypatch) -> dict[str, Sweep]:
    monkeypatch.chdir(REPO)  # sweep files give result_dir relative to the repository root, where sweeps run
    return {name: load_sweep(STUDY / f"{name}.toml") for name in SWEEPS}


def _points(sweep: Sweep) -> dict[str, Point]:
    """The sweep's points by result path (relative to docs/study), the cut points included."""
    cut = [dataclasses.replace(sweep, grids=[{k: [v] for k, v in values.items()}]).points()[0]
           for path, values in CUT_POINTS.items() if path.startswith(f"{sweep.name}/")]
    return {p.result_file.relative_to(STUDY).as_posix(): p for p in [*sweep.points(), *cut]}


def test_every_committed_json_is_accounted_for():
    """Fails when a result JSON is added, removed or renamed under docs/study/ without updating RUN_NAMES, or
    when an alignment file refers to a result that is not there."""
    found = _committed_jsons()
    results = {path for path, data in found.items() if _is_result(data)}
    assert len(found) == 41 and len(results) == 39
    assert results == set(RUN_NAMES)
    assert set(found) - results == NON_RESULTS
    assert HAND_NAMED <= results and set(CUT_POINTS) <= results
    for path in NON_RESULTS:
        assert found[path]["result"].removeprefix("docs/study/") in results
        assert (REPO / found[path]["result"]).with_suffix("") == (REPO / found[path]["checkpoint"]).parent


def test_sweep_results_are_named_by_their_sweep_points(monkeypatch):
    """Fails when a committed sweep result's file name is no longer a point of its committed sweep file (the
    sweep would not find it and would run the point again), or when the name recorded in the result
    (``config.result_file``) is not its file name."""
    sweeps = _sweeps(monkeypatch)
    assert sorted(p.stem for p in STUDY.glob("*.toml") if "sweep" in tomllib.loads(p.read_text())) == sorted(SWEEPS)
    found = {path: data for path, data in _committed_jsons().items() if _is_result(data)}
    named = set()
    for name, sweep in sweeps.items():
        assert sweep.result_dir == STUDY / name
        points = _points(sweep)
        mine = {path for path in found if path.startswith(f"{name}/")} - HAND_NAMED
        assert mine and mine <= set(points), f"{name}: not a point of {name}.toml: {sorted(mine - set(points))}"
        for path in mine:
            assert found[path]["config"]["result_file"] == f"docs/study/{path}"
        named |= mine
    assert len(named) == 37 and named == set(RUN_NAMES) - HAND_NAMED


@pytest.mark.parametrize("path", sorted(RUN_NAMES))
def test_run_name_from_the_recorded_configuration(path):
    """Fails when the name run.py gives a configuration changes: a flag renamed or its default changed, a setting
    moved in or out of the hash, or the hash or the name's layout changed."""
    config = json.loads((STUDY / path).read_text(encoding="utf-8"))["config"]
    assert config["num_train_sets"] is None and config["world_size"] == 1
    assert _default_name(_Recorded(config)) == RUN_NAMES[path]


@pytest.mark.filterwarnings("ignore:--load_float16 without CUDA")
def test_sweep_points_run_today_keep_their_names(monkeypatch, tmp_path):
    """Each point's command as the sweep builds it, through its driver and today's parser: run.py writes to the
    committed result file, keeps checkpoints beside it (where RESUME=auto looks), and without --result_file
    names the run as RUN_NAMES says. Fails when a driver or the parser turns the same settings into another run."""
    stand_in = tmp_path / "bin" / "python"  # the drivers call `python`; this one records its arguments
    stand_in.parent.mkdir()
    stand_in.write_text('#!/bin/sh\nprintf \'%s\\0\' "$@" > "$ARGV_FILE"\n')
    stand_in.chmod(0o755)
    (tmp_path / "data").mkdir()
    # The results were run on CPUs, where --load_float16 resolves to float32; one process (world_size 1).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    checked = 0
    for sweep in _sweeps(monkeypatch).values():
        for path, point in _points(sweep).items():
            if not (STUDY / path).exists():
                continue
            launch = make_launch(sweep, point)
            argv_file = tmp_path / "argv"
            env = {"PATH": f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}", "ARGV_FILE": str(argv_file),
                   **launch.env, "DATA_DIR": str(tmp_path / "data")}  # data_dir is not in the name's hash
            proc = subprocess.run(launch.command(), env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, f"{path}: {proc.stderr[-2000:]}"
            script, *argv = argv_file.read_text().split("\0")[:-1]
            assert Path(script).name == "run.py", f"{path}: the driver ran {script}"
            args = parse_args(argv)
            result_file = run.result_path(args, args.train_set_seed, False)
            assert result_file == STUDY / path
            assert run_output_dir(args, result_file, False) == str(point.output_dir)
            args.result_file = None
            assert _default_name(args) == RUN_NAMES[path], path
            argv_file.unlink()
            checked += 1
    assert checked == 37
