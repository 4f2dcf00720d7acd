"""mezo_engine.status: the one status type of the runner, the result checks and the sweeps. The strings it writes
are the ones committed results and the sweep tests hold; the sweeps import it without torch."""
import subprocess
import sys
from pathlib import Path

import pytest

from mezo_engine.status import Kind, Status

REPO = Path(__file__).resolve().parent.parent


def test_the_runner_s_statuses_are_today_s_strings():
    assert Status.completed().format() == "completed"
    assert str(Status.interrupted(40)) == "interrupted at step 40"
    assert Status.diverged(7).format() == "diverged at step 7"
    assert (Status.diverged(7).kind, Status.diverged(7).step) == (Kind.DIVERGED, 7)
    assert Status.completed() == "completed" and type(Status.completed().format()) is str  # a string, as before


@pytest.mark.parametrize("text, kind, step", [
    ("completed", Kind.COMPLETED, None), ("interrupted at step 40", Kind.INTERRUPTED, 40),
    ("diverged at step 3", Kind.DIVERGED, 3), ("diverged", Kind.DIVERGED, None),
    ("queued", Kind.OTHER, None), ("failed: exit status 3; log x.log", Kind.OTHER, None),
])
def test_parse_reads_the_first_word_and_formats_back_the_same_string(text, kind, step):
    status = Status.parse(text)
    assert (status.kind, status.step, status.format()) == (kind, step, text)
    assert Status.parse(text) == status == text  # a value: equal strings, equal statuses


def test_a_budget_reached_run_is_finished_but_not_completed():
    status = Status.budget_reached()
    assert (status.format(), status.kind, status.step) == ("budget reached", Kind.BUDGET, None)
    assert status.is_finished and not status.is_completed  # evaluated; a larger budget continues it
    assert Status.completed().is_finished
    assert not any(s.is_finished for s in (Status.interrupted(3), Status.diverged(3), Status.parse("queued")))


def test_a_result_without_status_is_an_older_completed_one():
    assert Status.parse(None) == Status.completed() and Status.parse(None).is_completed
    assert not Status.parse("interrupted at step 2").is_completed


def test_the_sweeps_import_it_without_torch():
    # as `python scripts/sweep.py` imports them: scripts/ first on the path, the repository (mezo_engine) after it
    code = (f"import sys; sys.path[:0] = [{str(REPO / 'scripts')!r}, {str(REPO)!r}]; "
            "import sweeps.cli, sweeps.aggregate, sweeps.state; "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
