"""scripts/gpu_check.sh and scripts/gpu_check.py on CPU: the one-line refusal, the report's format with every GPU
check skipped by name, and the pieces that run on any device (ZO exactness on CPU tensors, the benchmark rows)."""
import importlib.util
import re
import subprocess
from pathlib import Path

import gpu_check  # scripts/gpu_check.py: pytest.ini puts scripts/ on the path, as `python scripts/X.py` has it
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")




@pytest.mark.slow
@NO_CUDA
def test_sh_refuses_in_one_line_without_cuda(tmp_path):
    out = tmp_path / "gpu.md"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.sh: no CUDA device here")
    assert not out.exists()


@NO_CUDA
def test_py_refuses_without_cuda_unless_every_gpu_check_is_skipped(tmp_path, capsys):
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--out", str(out), "--skip", "pytest"]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not out.exists()


def test_report_with_the_gpu_checks_skipped_by_name(tmp_path):
    out = tmp_path / "sub" / "gpu.md"
    assert gpu_check.main(["--out", str(out), "--skip", ",".join(gpu_check.GPU_CHECKS)]) == 0
    text = out.read_text()
    names = list(gpu_check.checks())
    assert names == ["environment", "zo_exactness", "benchmark_smollm2", "benchmark_opt13b", "int8", "run_py_cuda",
                     "pytest", "two_gpus"]
    assert text.startswith("# GPU check (") and "| check | result | seconds | what |" in text
    rows = re.findall(r"^\| (\w+) \| (PASS|FAIL|skipped) \| [\d.]+ \| (.+) \|$", text, re.M)
    assert [r[0] for r in rows] == names and all(title for _, _, title in rows)
    sections = re.findall(r"^## (\w+): (PASS|FAIL|skipped)\n\n(.+)\n\n((?:- .*\n|\|.*\n)+)", text, re.M)
    assert [(s[0], s[1]) for s in sections] == [(n, "PASS" if n == "environment" else "skipped") for n in names]
    body = {s[0]: s[3] for s in sections}
    for name in gpu_check.GPU_CHECKS:
        assert body[name] == "- skipped: --skip\n"
    assert f"- torch {torch.__version__}\n" in body["environment"]
    assert "- skipped: they need two GPUs; this machine has" in body["two_gpus"]
    assert "FSDP" in dict((r[0], r[2]) for r in rows)["two_gpus"]


def test_skip_names_are_checked():
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", "x.md", "--skip", "zo_exactnes"])
    assert gpu_check.parse_args(["--out", "x.md", "--skip", "gpu"]).skip == set(gpu_check.GPU_CHECKS)


def test_zo_exactness_check_on_cpu():
    """The check's own logic on CPU tensors: adapters and out-of-place steps leave every bit; in place drifts in
    fp16 and bf16."""
    check = gpu_check.check_zo_exactness(60.0, device="cpu")
    assert check.status == "PASS" and len(check.lines) == 3
    for line in check.lines:
        assert "0 elements changed" in line and "out of place 0;" in line and line.endswith("forward: True")
    for line in check.lines[1:]:  # fp16, bf16
        drifted = int(re.search(r"in place (\d+) of", line).group(1))
        assert drifted > 0


def test_bench_lines_count_the_targets():
    ratios = {"a": {"label": "ZO step / 2 forwards (full)", "value": 1.2, "target": "<= 1.25", "pass": True},
              "b": {"label": "peak", "value": 1.3, "target": "<= 1", "pass": False},
              "c": {"label": "info", "value": 0.5, "target": "", "pass": None}}
    times = {"zo_step/full": {"median": 0.5}, "forward/full": {"median": 0.2}, "eval_single": {"median": 9.0}}
    lines, met, targets = gpu_check._bench_lines({"ratios": ratios, "times": times})
    assert (met, targets) == (1, 2)
    assert "| ZO step / 2 forwards (full) | 1.200 | <= 1.25 | pass |" in lines
    assert "| peak | 1.300 | <= 1 | FAIL |" in lines
    assert "| info | 0.500 | (info) |  |" in lines
    assert lines[:2] == ["zo_step/full: 0.5000 s (median)", "forward/full: 0.2000 s (median)"]


def test_a_check_that_raises_is_a_fail_and_a_spent_budget_skips():
    def broken(budget):
        raise ZeroDivisionError("division by zero")
    check = gpu_check.run_one("int8", broken, set(), 100.0)
    assert check.status == "FAIL" and check.lines == ["raised ZeroDivisionError: division by zero"]
    assert gpu_check.run_one("int8", broken, set(), 5.0).lines == ["skipped: the time budget (--budget-s) is spent"]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_int8_is_skipped_without_bitsandbytes():
    check = gpu_check.check_int8(100.0)
    assert check.status == "skipped" and check.lines == ["skipped: bitsandbytes not importable"]
