"""scripts/race.py: successive halving over a fake driver whose dev accuracy is a known function of the LR and of
the forwards, so the choice, the grid extensions, the continuation of runs and the snapshots are all known."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

from sweeps.race import load_race, make_plan, progress
from sweeps.race_run import main
from sweeps.spec import SweepError

# A stand-in for mezo.sh, in Python: continues its result from where it stands to MAX_FORWARDS, two forwards a
# step, dev evaluated every 500 forwards and at the stop. Dev accuracy peaks at BEST_LR (log scale), test accuracy
# is dev - 0.05; each call appends "<ZO>:<LR> <RUN_SEED> <from> <to>" to calls.txt beside the result.
FAKE = r'''#!/usr/bin/env python3
import json, math, os, sys, time
from pathlib import Path
began = time.time()
result = Path(sys.argv[sys.argv.index("--result_file") + 1])
lr, seed, budget = float(os.environ["LR"]), int(os.environ["RUN_SEED"]), int(os.environ["MAX_FORWARDS"])
best = float(os.environ.get("BEST_LR", "1e-3"))
late = float(os.environ.get("BEST_LR_LATE", best))  # dev's peak past 1,000 forwards
old = json.loads(result.read_text()) if result.exists() else {"train": {"log_history": []}, "ledger": {"forwards": 0}}
start = old["ledger"]["forwards"]
release = result.parent / "release"  # HOLD_LR's first run waits (60 s at most) for a run from RELEASE_AT
if os.environ.get("RELEASE_AT") == str(start):
    release.parent.mkdir(parents=True, exist_ok=True)
    release.touch()
if os.environ.get("HOLD_LR") == os.environ["LR"] and start == 0:
    while not release.exists() and time.time() - began < 60:
        time.sleep(0.05)
def dev(f):
    peak = late if f > 1000 else best
    return round(0.9 - 0.1 * abs(math.log10(lr / peak)) - 20.0 / (100 + f) + 0.001 * seed, 6)
rows = old["train"]["log_history"]
for f in range(start + 2, budget + 1, 2):
    rows.append({"loss": 1.0 / (1 + f * lr), "forwards": f, "train_cpu_s": f * 0.1})
    if f % 500 == 0 or f == budget:
        rows.append({"eval_accuracy": dev(f), "forwards": f, "train_cpu_s": f * 0.1})
out = {"status": "budget reached", "train": {"log_history": rows}, "dev": {"accuracy": dev(budget)},
       "eval": {"accuracy": dev(budget) - 0.05}, "config": {"max_forwards": budget},
       "ledger": {"forwards": budget, "train_wall_s": budget * 0.1, "train_cpu_s": budget * 0.1},
       "resources": {"peak_rss_mib": 100.0}}
result.parent.mkdir(parents=True, exist_ok=True)
result.write_text(json.dumps(out))
with open(result.parent / "calls.txt", "a") as calls:
    calls.write(f"{os.environ['ZO']}:{os.environ['LR']} {seed} {start} {budget}\n")
with open(result.parent / "times.txt", "a") as times:
    times.write(f"{os.environ['ZO']}:{os.environ['LR']} {start} {began} {time.time()}\n")
'''


def write_race(tmp_path: Path, methods: str, head: str = "") -> Path:
    driver = tmp_path / "fake.py"
    driver.write_text(FAKE)
    (tmp_path / "drv.sh").write_text(f'#!/usr/bin/env bash\nexec python "{driver}" "$@"\n')
    path = tmp_path / "race.toml"
    path.write_text(f'[race]\nname = "t"\ndriver = "{tmp_path / "drv.sh"}"\nresult_dir = "{tmp_path / "res"}"\n'
                    f'budget = 3000\nfirst_budget = 750\nseeds = [0, 1]\nfinalists = 1\n{head}\n'
                    f'[fixed]\nTASK = "SST2"\n{methods}')
    return path


def calls(tmp_path: Path) -> list[tuple[str, int, int, int]]:
    lines = (tmp_path / "res" / "calls.txt").read_text().split("\n")
    return [(a, int(b), int(c), int(d)) for a, b, c, d in (line.split() for line in lines if line)]


def test_the_race_halves_continues_and_snapshots(tmp_path):
    race_file = write_race(tmp_path, '[[method]]\nlabel = "A"\nZO = "sgd"\nLR = ["1e-4", "3e-4", "1e-3", "3e-3"]\n'
                                     '[[method]]\nlabel = "B"\nZO = "lozo"\nBEST_LR = "1e-4"\nLR = ["1e-4", "1e-3"]\n')
    assert load_race(race_file).rung_budgets() == [750, 1500, 3000]
    jobs = min(2, len(os.sched_getaffinity(0)))  # two at once where the machine has two cores to give them
    assert main([str(race_file), "--jobs", str(jobs)]) == 0
    summary = json.loads((tmp_path / "res" / "race.json").read_text())
    methods = {m["label"]: m for m in summary["methods"]}
    assert methods["A"]["chosen_lr"] == "1e-3"
    # B's best LR (1e-4) was its grid's lower end at rung 0: one LR below (3e-5) joined that rung, and lost
    assert methods["B"]["grid"] == ["1e-4", "1e-3", "3e-5"] and methods["B"]["chosen_lr"] == "1e-4"
    assert methods["B"]["rungs"][0]["dev"] == {"1e-4": pytest.approx(0.9 - 20 / 850), "1e-3": pytest.approx(
        0.8 - 20 / 850), "3e-5": pytest.approx(0.9 - 0.1 * math.log10(1 / 0.3) - 20 / 850)}
    runs = calls(tmp_path)
    # no forward is spent twice: each (LR, seed) continues where it stood
    for lr, seed in {(lr, seed) for lr, seed, _, _ in runs}:
        spans = sorted((a, b) for x, s, a, b in runs if (x, s) == (lr, seed))
        assert spans[0][0] == 0 and all(prev[1] == nxt[0] for prev, nxt in zip(spans, spans[1:]))
    # A's search: 4 LRs to 750, 2 to 1500 (stopping at 1000, a third of 3000), 1 to 3000
    a_search = [(lr, b) for lr, s, _, b in runs if s == 0 and lr.startswith("sgd:")]
    assert sorted(a_search) == sorted([("sgd:1e-4", 750), ("sgd:3e-4", 750), ("sgd:3e-3", 750), ("sgd:1e-3", 750),
                                       ("sgd:3e-3", 1000), ("sgd:3e-3", 1500), ("sgd:1e-3", 1000),
                                       ("sgd:1e-3", 1500), ("sgd:1e-3", 3000)])
    # finals: seed 1 for the best method (A, dev 0.9 at its best LR) only: finalists = 1
    assert sorted((lr, b) for lr, s, _, b in runs if s == 1) == [("sgd:1e-3", 1000), ("sgd:1e-3", 3000)]
    final = {f["name"].split("seed=")[1][0]: f for f in methods["A"]["finals"]}
    dev_third = 0.9 - 20.0 / 1100
    assert final["1"]["test_at_third"] == pytest.approx(dev_third + 0.001 - 0.05, abs=1e-6)
    assert final["0"]["test"] == pytest.approx(0.9 - 20.0 / 3100 - 0.05, abs=1e-6)
    assert methods["B"]["finals"][0]["forwards"] == 3000 and len(methods["B"]["finals"]) == 1
    assert "| A | 1e-3 | 2 |" in (tmp_path / "res" / "race.md").read_text()
    assert (tmp_path / "res" / "dev_vs_forwards.png").stat().st_size > 0
    assert main([str(race_file)]) == 0 and len(calls(tmp_path)) == len(runs)  # decided: nothing runs again


def test_a_method_raced_with_the_winner(tmp_path):
    race_file = write_race(tmp_path, '[[method]]\nlabel = "A"\nZO = "sgd"\nLR = ["3e-4", "1e-3", "3e-3"]\n'
                                     '[[method]]\nlabel = "X"\nMODE = "xgblora"\nZO = "{winner}"\n'
                                     'LR = ["3e-4", "1e-3", "3e-3"]\n')
    assert main([str(race_file)]) == 0
    plan = make_plan(load_race(race_file))
    assert plan.winner.label == "A" and not plan.tasks()
    x = next(s for s in plan.searches if s.method.label == "X")
    point = load_race(race_file).point(x.method, x.chosen, "1", "sgd")
    assert point.variables["ZO"] == "sgd" and progress(point.result_file).forwards == 3000


RECHECK = 'rungs = [600, 3000]\nkeep = "best_and_upper"\nselect_last = 3\nthird = false\nspacing = 2\n'


def test_a_recheck_search_continues_the_best_lr_and_its_upper_neighbour(tmp_path):
    """A controlled study's search: every LR to 600 forwards, ranked on the mean of its last three dev evaluations
    (here the two it has: 500 and 600), then the best (4e-4) and the next larger LR (8e-4) to the full budget,
    where the peak has moved to 2e-3 (BEST_LR_LATE): 8e-4 is kept and 1.6e-3, which halving would have continued,
    is not; the other seeds run at 8e-4 without a stop at a third."""
    race_file = write_race(tmp_path, '[[method]]\nlabel = "A"\nZO = "sgd"\nBEST_LR = "4e-4"\nBEST_LR_LATE = "2e-3"\n'
                                     'LR = ["1e-4", "2e-4", "4e-4", "8e-4", "1.6e-3"]\n', RECHECK)
    race = load_race(race_file)
    assert race.rung_budgets() == [600, 3000] and race.third() == 0
    assert main([str(race_file)]) == 0
    summary = json.loads((tmp_path / "res" / "race.json").read_text())["methods"][0]
    assert summary["grid"] == ["1e-4", "2e-4", "4e-4", "8e-4", "1.6e-3"] and summary["chosen_lr"] == "8e-4"

    def dev(lr, peak, f, seed=0):
        return round(0.9 - 0.1 * abs(math.log10(lr / peak)) - 20.0 / (100 + f) + 0.001 * seed, 6)
    assert summary["rungs"][0]["dev"]["4e-4"] == pytest.approx((dev(4e-4, 4e-4, 500) + dev(4e-4, 4e-4, 600)) / 2)
    assert summary["rungs"][1]["dev"]["8e-4"] == pytest.approx(sum(dev(8e-4, 2e-3, f) for f in (2000, 2500, 3000))
                                                               / 3)
    assert sorted(calls(tmp_path)) == sorted([("sgd:1e-4", 0, 0, 600), ("sgd:2e-4", 0, 0, 600),
                                              ("sgd:4e-4", 0, 0, 600), ("sgd:8e-4", 0, 0, 600),
                                              ("sgd:1.6e-3", 0, 0, 600),
                                              ("sgd:4e-4", 0, 600, 3000), ("sgd:8e-4", 0, 600, 3000),
                                              ("sgd:8e-4", 1, 0, 3000)])
    assert not list((tmp_path / "res").glob("*.third.json"))


def test_a_recheck_won_by_the_grids_top_adds_no_lr(tmp_path):
    """The upper neighbour (8e-4) is the grid's top and wins the recheck: halving would now extend the grid past it
    (and run the new LR to the full budget); a recheck keeps it."""
    race_file = write_race(tmp_path, '[[method]]\nlabel = "A"\nZO = "sgd"\nBEST_LR = "4e-4"\nBEST_LR_LATE = "2e-3"\n'
                                     'LR = ["2e-4", "4e-4", "8e-4"]\n', RECHECK)
    assert main([str(race_file)]) == 0
    summary = json.loads((tmp_path / "res" / "race.json").read_text())["methods"][0]
    assert summary["grid"] == ["2e-4", "4e-4", "8e-4"] and summary["chosen_lr"] == "8e-4"
    assert {lr for lr, _, _, _ in calls(tmp_path)} == {"sgd:2e-4", "sgd:4e-4", "sgd:8e-4"}


def test_an_added_lr_keeps_the_significant_digits_asked_for():
    """One digit (the first race's rule): 2.7e-3 is written 3e-3; three: the x2 grid of a study stays x2."""
    from sweeps.race import _extend
    assert _extend(["3e-4", "9e-4"], "9e-4", 3) == "3e-3" and _extend(["3e-4", "9e-4"], "9e-4", 3, 3) == "2.7e-3"
    assert _extend(["6.4e-2", "1.28e-1"], "1.28e-1", 2, 3) == "2.56e-1"
    assert _extend(["1.6e-2", "3.2e-2"], "1.6e-2", 2, 3) == "8e-3" and _extend(["1e-3", "1e-2"], "1e-3", 3) == "3e-4"


def test_the_mean_of_the_last_dev_evaluations_up_to_a_budget():
    """The first evaluation at or past the budget and those before it; an evaluation after it is not read."""
    from sweeps.race import Progress
    run = Progress(1500, {500: 0.6, 1000: 0.7, 1200: 0.5, 1500: 0.9}, 0.3, "budget reached", 1500)
    assert run.dev_at(1200) == 0.5 and run.dev_at(1100) == 0.5 and run.dev_at(1300) == 0.9
    assert run.dev_at(1200, 3) == pytest.approx(0.6) and run.dev_at(1200, 2) == pytest.approx(0.6)
    assert run.dev_at(1000, 5) == pytest.approx(0.65) and run.dev_at(1600, 3) is None


@pytest.mark.parametrize("body, message", [
    ('[[method]]\nlabel = "A"\nLR = []\n', "LR = []: give a list of learning rates"),
    ('[[method]]\nlabel = "A"\nLR = ["1e-3"]\n[[method]]\nlabel = "A"\nLR = ["1e-3"]\n', "label 'A' appears twice"),
    ('[[method]]\nlabel = "A"\nLR = ["1e-3"]\n', "always_final 'Z': no [[method]] has that label"),
    ('[[method]]\nlabel = "A"\nLR = ["1e-3"]\n', "rungs = [600, 2000]: must increase and end at the budget (3000)"),
    ('[[method]]\nlabel = "A"\nLR = ["1e-3"]\n', "keep = 'quarter': give one of half, best_and_upper"),
    ('[[method]]\nlabel = "A"\nLR = ["1e-3"]\n', "select_last = 0: give how many dev evaluations to average"),
    ('[[method]]\nlabel = "A"\nLR = ["1e-3"]\n', "lr_digits = 0: give the significant digits of an added LR"),
])
def test_bad_race_files_are_refused_by_name(tmp_path, body, message):
    heads = {"always_final": 'always_final = ["Z"]', "rungs": "rungs = [600, 2000]", "keep": 'keep = "quarter"',
             "select_last": "select_last = 0", "lr_digits": "lr_digits = 0"}
    head = next((line for key, line in heads.items() if message.startswith(key) or key + " 'Z'" in message), "")
    with pytest.raises(SweepError, match=re.escape(message)):
        load_race(write_race(tmp_path, body, head))


def test_the_checkpoints_the_race_continues_from(tmp_path, capsys):
    """After rung 0 (three LRs at 750 forwards), only the better two continue: --checkpoints prints their newest
    checkpoint folders and nothing of the third, which the race no longer needs."""
    import os
    import subprocess
    import sys
    race_file = write_race(tmp_path, '[[method]]\nlabel = "A"\nZO = "sgd"\nLR = ["1e-4", "1e-3", "1e-2"]\n')
    race = load_race(race_file)
    for lr in ("1e-4", "1e-3", "1e-2"):
        point = race.point(race.methods[0], lr, "0")
        env = {**os.environ, "LR": lr, "RUN_SEED": "0", "MAX_FORWARDS": "750", "ZO": "sgd"}
        subprocess.run([sys.executable, str(tmp_path / "fake.py"), "--result_file", str(point.result_file)], env=env,
                       check=True)
        for step in (100, 375):
            (point.result_file.with_suffix("") / f"checkpoint-{step}").mkdir(parents=True)
    assert main([str(race_file), "--checkpoints"]) == 0
    printed = capsys.readouterr().out.split()
    # dev peaks at 1e-3; of 1e-4 and 1e-2 (equal dev) the lower last training loss goes on: 1e-2's
    kept = [race.point(race.methods[0], lr, "0").result_file.with_suffix("") / "checkpoint-375" for lr in
            ("1e-3", "1e-2")]
    assert sorted(printed) == sorted(str(k) for k in kept)


def test_a_run_interrupted_on_its_way_to_the_third_is_not_snapshotted(tmp_path):
    """A process stopped by a signal before a third of the budget records the same --max_forwards as one that
    reached it: only the one that reached it (status "budget reached") is copied to <name>.third.json."""
    from sweeps.race import snapshot_path, take_snapshots
    race = load_race(write_race(tmp_path, '[[method]]\nlabel = "A"\nZO = "sgd"\nLR = ["1e-3"]\n'))
    point = race.point(race.methods[0], "1e-3", "0")
    point.result_file.parent.mkdir(parents=True)
    result = {"status": "interrupted at step 450", "config": {"max_forwards": race.third()},
              "ledger": {"forwards": 900}, "train": {"log_history": []}}
    point.result_file.write_text(json.dumps(result))
    take_snapshots(race, [point])
    assert progress(point.result_file).stopped_at_budget == 0 and not snapshot_path(point).exists()
    point.result_file.write_text(json.dumps({**result, "status": "budget reached", "ledger": {"forwards": 1000}}))
    take_snapshots(race, [point])
    assert json.loads(snapshot_path(point).read_text())["ledger"]["forwards"] == 1000


def test_paired_tests_pool_the_seeds_both_methods_have_scores_for(tmp_path):
    """A against B: seed 0 (A right alone on 2 examples), seed 1 (each right alone on 1): pooled 3 against 1 of 4
    discordant examples, p = 2 P[Binomial(4, 1/2) <= 1] = 10/16. The last models were scored on seed 0 only; C's
    results have no scores and pair with nothing."""
    from sweeps.race_run import paired_tests
    race = load_race(write_race(tmp_path, "".join(f'[[method]]\nlabel = "{x}"\nZO = "sgd"\nLR = ["1e-3"]\n'
                                                  for x in "ABC")))
    scores = {("A", "0"): [1, 1, 1, 0], ("B", "0"): [0, 1, 0, 0], ("A", "1"): [1, 0, 1], ("B", "1"): [0, 1, 1]}
    points = {}
    for method in race.methods:
        points[method.label] = [race.point(method, "1e-3", seed) for seed in ("0", "1")]
        for point in points[method.label]:
            result = {"status": "budget reached"}
            key = (method.label, point.variables["RUN_SEED"])
            if key in scores:
                result["eval_scores"] = [float(x) for x in scores[key]]
                if key[1] == "0":
                    result["eval_last"] = {"accuracy": 0.5, "scores": [1.0, 0.0, 0.0, 0.0] if key[0] == "A"
                                           else [1.0, 1.0, 1.0, 0.0]}
            point.result_file.parent.mkdir(parents=True, exist_ok=True)
            point.result_file.write_text(json.dumps(result))
    tests = paired_tests(points)
    assert tests == [{"a": "A", "b": "B", "model": "best dev", "seeds": ["0", "1"], "a_only": 3, "b_only": 1,
                      "p": 10 / 16},
                     {"a": "A", "b": "B", "model": "last", "seeds": ["0"], "a_only": 0, "b_only": 2, "p": 0.5}]


def test_a_free_core_takes_the_next_task_without_waiting_for_the_slowest_run(tmp_path, monkeypatch):
    """A's LR 1e-4 holds its slot at rung 0 until a run of B continues from 750 forwards (B's second rung,
    which needs only B's own first rung): with a plan made whenever a slot is free, that run starts while A's run
    still goes (run in rounds, it would wait for it; two slots, here on one core)."""
    import sweeps.race_run as race_run
    from sweeps.local import Slot
    core = min(os.sched_getaffinity(0))
    monkeypatch.setattr(race_run, "make_slots", lambda jobs, *rest: [Slot((core,), None), Slot((core,), None)])
    race_file = write_race(tmp_path, '[[method]]\nlabel = "A"\nZO = "sgd"\nHOLD_LR = "1e-4"\nLR = ["1e-4", "1e-3"]\n'
                                     '[[method]]\nlabel = "B"\nZO = "lozo"\nRELEASE_AT = "750"\n'
                                     'LR = ["1e-4", "1e-3"]\n')
    assert main([str(race_file), "--jobs", "2"]) == 0
    rows = [line.split() for line in (tmp_path / "res" / "times.txt").read_text().splitlines()]
    slow_end = next(float(end) for lr, start, _, end in rows if lr == "sgd:1e-4" and start == "0")
    b_second = [float(began) for lr, start, began, _ in rows if lr.startswith("lozo:") and start == "750"]
    assert b_second and b_second[0] < slow_end
