"""What this project can check on one CUDA GPU, as one Markdown report (``scripts/gpu_check.sh`` runs it).

Each check is a function returning a ``Check`` (PASS / FAIL / skipped, and the numbers as lines); the report has a
summary table and one section per check, and is rewritten after every check, so a run cut short still leaves one.

    python scripts/gpu_check.py --out docs/gpu.md                 # everything (CUDA needed)
    python scripts/gpu_check.py --out /tmp/r.md --skip gpu        # every GPU check skipped by name: the format

Checks, in order (names for ``--skip``): zo_exactness, benchmark_smollm2, benchmark_opt13b, int8, run_py_cuda,
pytest; ``environment`` and ``two_gpus`` (FSDP and a model-parallel split: they need two GPUs) always run.
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PASS, FAIL, SKIPPED = "PASS", "FAIL", "skipped"
TABLE23_S = 0.45  # MeZO (Malladi et al. 2023) Table 23: OPT-1.3B, MultiRC, batch 8, one A100: seconds per step
BENCH_MODELS = {"benchmark_smollm2": "smollm2-135m-config", "benchmark_opt13b": "opt-1.3b-config"}
GPU_CHECKS = ("zo_exactness", *BENCH_MODELS, "int8", "run_py_cuda", "pytest")
PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "bitsandbytes", "pytest")
PYTEST_FILES = ("tests/test_zo_out_of_place.py", "tests/test_zo.py",
                "tests/test_run.py::test_training_writes_results_with_dev_and_train_summary")
BENCH = ("scripts/benchmark.py --model {} --dtype bf16 --device cuda --task multirc --examples 8: a MultiRC-shaped "
         "batch of 8 examples x 2 candidates (360-440 tokens), random weights.")
TITLES = {
    "environment": "Machine and package versions.",
    "zo_exactness": "CUDA: LoRA adapter restore bit for bit (kept originals); full-parameter drift at lr 0, in place "
                    "(MeZO's +eps, -2eps, +eps) against --zo_perturb out_of_place.",
    **{name: BENCH.format(model) for name, model in BENCH_MODELS.items()},
    "int8": "--load_int8 (bitsandbytes LLM.int8()) on a model built from the opt-125m config: load, 8-bit layers, a "
            "run.py zo LoRA run.",
    "run_py_cuda": "Tiny run.py zo runs on cuda (tiny OPT, SST-2 fixtures): full-parameter fp16 in place and out of "
                   "place, LoRA, XGBLoRA.",
    "pytest": "The suite has no CUDA-only tests; these run with CUDA visible (run.py then places models on the GPU): "
              + " ".join(PYTEST_FILES) + ".",
    "two_gpus": "FSDP (finetune_fsdp.sh) and a model split over several GPUs (device_map auto).",
}


@dataclass
class Check:
    """One section of the report."""

    name: str
    status: str = SKIPPED
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def title(self) -> str:
        return TITLES[self.name]


# ---- the report --------------------------------------------------------------------------------------------------

def summary_row(check: Check) -> str:
    return f"| {check.name} | {check.status} | {check.seconds:.1f} | {check.title} |"


def section(check: Check) -> str:
    body = "\n".join(line if line.startswith("|") else f"- {line}" for line in check.lines) or "- (nothing)"
    return f"## {check.name}: {check.status}\n\n{check.title}\n\n{body}\n"


def report(checks: list[Check], started: float, command: str) -> str:
    """The whole Markdown report."""
    head = [f"# GPU check ({time.strftime('%Y-%m-%d %H:%M %Z')})", "",
            f"`{command}`: {time.time() - started:.0f} s in all.", "",
            "| check | result | seconds | what |", "| --- | --- | ---: | --- |"]
    return "\n".join(head + [summary_row(c) for c in checks]) + "\n\n" + "\n".join(section(c) for c in checks)


# ---- helpers -----------------------------------------------------------------------------------------------------

def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` from the repository root with PYTHONPATH at it; a timeout comes back as return code 124."""
    # the repository first, then what the caller had (e.g. carried wheels: bitsandbytes on the GPU machine)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(cmd, 124, err.stdout or "", f"timed out after {timeout:.0f} s")


def _tail(text: str, lines: int = 6) -> list[str]:
    return [f"`{line[:200]}`" for line in (text or "").strip().splitlines()[-lines:]]


def _tiny(kind: str, dtype: torch.dtype, device: str):
    from tests.tiny import make_model
    return make_model(kind, seed=0, dtype=dtype).to(device)


def _loss_fn(model, ids):
    def loss() -> float:
        with torch.no_grad():
            return model(input_ids=ids, labels=ids).loss.item()
    return loss


def _changed(params, start) -> int:
    return sum(int((p != p0).sum()) for p, p0 in zip(params, start))


# ---- checks ------------------------------------------------------------------------------------------------------

def check_environment(budget_s: float) -> Check:
    check = Check("environment", PASS)
    cuda = torch.cuda.is_available()
    check.lines = [f"python {platform.python_version()}, {platform.platform()}",
                   *(f"{p} {_version(p)}" for p in PACKAGES),
                   f"CUDA available: {cuda}" + (f", {torch.cuda.device_count()} device(s): "
                                                f"{torch.cuda.get_device_name(0)}, "
                                                f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB, "
                                                f"CUDA {torch.version.cuda}" if cuda else "")]
    return check


def _adapter_restore(dtype: torch.dtype, device: str) -> int:
    """LoRA (adapters cast to ``dtype``, B != 0) through zo_step with the kept originals at lr 0: elements changed."""
    from mezo_engine import lora, zo
    model = lora.attach_lora(_tiny("llama", dtype, device), r=4, alpha=8).eval()
    params = lora.trainable_lora_parameters(model)
    with torch.no_grad():
        for p in params:
            p.data = (p.data + 0.01 * torch.randn_like(p.data)).to(dtype)
    start = [p.detach().clone() for p in model.parameters()]
    ids = torch.randint(4, 200, (4, 16), device=device)
    for step in range(3):
        zo.zo_step(params, _loss_fn(model, ids), seed=zo.step_seed(0, step), eps=1e-3, lr=0.0, cache=True)
    return _changed(list(model.parameters()), start)


def _full_drift(dtype: torch.dtype, device: str, steps: int = 3) -> tuple[int, int, int, bool]:
    """Full-parameter steps at lr 0 on a tiny OPT: (elements in all, changed in place, changed out of place, whether
    the out-of-place losses equal a reference that sets W + eps z before the forward)."""
    from mezo_engine import zo, zo_out_of_place as oop
    model = _tiny("opt", dtype, device)
    in_place = copy.deepcopy(model)
    params, start = list(model.parameters()), [p.detach().clone() for p in model.parameters()]
    ids = torch.randint(4, 200, (4, 16), device=device)
    for step in range(steps):
        seed = zo.step_seed(0, step)
        zo.zo_step(list(in_place.parameters()), _loss_fn(in_place, ids), seed=seed, eps=1e-3, lr=0.0)
        losses = oop.two_losses(model, params, _loss_fn(model, ids), seed, 1e-3)
        oop.zo_step(model, params, _loss_fn(model, ids), seed=seed, eps=1e-3, lr=0.0)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for i, p in enumerate(ref.parameters()):
            p.add_(oop.param_z(p, seed, i), alpha=1e-3)
    same = losses[0] == _loss_fn(ref, ids)()
    return sum(p.numel() for p in params), _changed(list(in_place.parameters()), start), _changed(params, start), same


def check_zo_exactness(budget_s: float, device: str = "cuda") -> Check:
    """PASS when every adapter restore and every out-of-place step at lr 0 leaves the weights bit for bit; the
    in-place drift is reported (expected in fp16 / bf16: that is the difference). ``device``: cpu in the tests."""
    check = Check("zo_exactness")
    ok = True
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        restored = _adapter_restore(dtype, device)
        total, drift_in, drift_out, same = _full_drift(dtype, device)
        ok &= restored == 0 and drift_out == 0
        check.lines.append(f"{name}: LoRA adapter restore (3 steps, kept originals): {restored} elements changed; "
                           f"full-parameter, 3 steps at lr 0: in place {drift_in} of {total} elements drifted, out "
                           f"of place {drift_out}; out-of-place +eps loss equals the reference set before the "
                           f"forward: {same}")
    check.status = PASS if ok else FAIL
    return check


def _bench_lines(result: dict) -> tuple[list[str], int, int]:
    """Table rows of the benchmark's ratios, the step times against Table 23, and (targets met, targets)."""
    ratios, times = result["ratios"], result["times"]
    rows = ["| ratio | value | target | result |", "| --- | ---: | --- | --- |"]
    rows += [f"| {r['label']} | {r['value']:.3f} | {r['target'] or '(info)'} | "
             f"{'' if r['pass'] is None else ('pass' if r['pass'] else 'FAIL')} |" for r in ratios.values()]
    steps = [f"{k}: {v['median']:.4f} s (median)" for k, v in times.items()
             if k.split("/")[0] in ("zo_step", "zo_step_oop", "forward")]
    targeted = [r for r in ratios.values() if r["pass"] is not None]
    return steps + rows, sum(r["pass"] for r in targeted), len(targeted)


def check_benchmark(name: str, budget_s: float) -> Check:
    model = BENCH_MODELS[name]
    check = Check(name)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        proc = _run([sys.executable, "scripts/benchmark.py", "--device", "cuda", "--model", model, "--dtype", "bf16",
                     "--task", "multirc", "--examples", "8", "--repeats", "3", "--warmup", "1", "--mem-steps", "2",
                     "--out", str(out)], budget_s)
        if proc.returncode != 0:
            check.status, check.lines = FAIL, [f"exit {proc.returncode}", *_tail(proc.stderr)]
            return check
        result = json.loads(out.read_text())
    lines, met, targets = _bench_lines(result)
    step = result["times"]["zo_step/full"]["median"]
    check.lines = [f"targets met: {met} of {targets} (the CPU-derived targets; see the table)",
                   f"full-parameter ZO step {step:.3f} s; MeZO Table 23: {TABLE23_S} s a step for OPT-1.3B at batch "
                   f"8 on an A100 (MultiRC, real weights)", *lines]
    check.status = PASS
    return check


def _save_config_model(path: Path, name: str) -> Path:
    """A model built from ``name``'s config (random weights, fp16) and the tests' byte tokenizer, as a HF dir."""
    from bench.workload import build_model
    from tests.tiny import make_tokenizer
    build_model(name, torch.float16, torch.device("cpu"), 0).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def _run_py(model_dir: Path, data_dir: Path, out: Path, *flags: str, budget_s: float) -> tuple[bool, list[str]]:
    """run.py on SST-2 fixtures with ``flags``; (ok, lines)."""
    proc = _run([sys.executable, "large_models/run.py", "--model_name", str(model_dir), "--task_name", "SST2",
                 "--data_dir", str(data_dir), "--result_file", str(out), "--output_dir", str(out.with_suffix("")),
                 "--num_train", "8", "--num_dev", "4", "--num_eval", "8", "--train_set_seed", "0",
                 "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
                 "--train_as_classification", "--disable_tqdm", "True", "--report_to", "none", *flags], budget_s)
    if proc.returncode != 0:
        return False, [f"`run.py ... {' '.join(flags)}`: exit {proc.returncode}", *_tail(proc.stderr)]
    result = json.loads(out.read_text())
    train, used = result.get("train", {}), result.get("resources", {})
    ok = train.get("global_step") == int(flags[flags.index("--max_steps") + 1]) and bool(
        used.get("cuda_max_allocated_mib"))
    return ok, [f"`run.py ... {' '.join(flags)}`: accuracy {result['eval'].get('accuracy')}, steps "
                f"{train.get('global_step')}, CUDA peak {used.get('cuda_max_allocated_mib')} MiB"]


def check_int8(budget_s: float) -> Check:
    check = Check("int8")
    if importlib.util.find_spec("bitsandbytes") is None:
        check.lines = ["skipped: bitsandbytes not importable"]
        return check
    from mezo_engine.models import load_model_and_tokenizer
    from tests.task_fixtures import write_sst2
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _save_config_model(Path(tmp) / "opt-125m-config", "opt-125m-config")
        model, _ = load_model_and_tokenizer(str(model_dir), torch.float16, int8=True)
        eight = sum(type(m).__name__ == "Linear8bitLt" for m in model.modules())
        check.lines.append(f"loaded: {eight} Linear8bitLt layers, footprint {model.get_memory_footprint() / 2**20:.0f}"
                           f" MiB (fp16 weights: {sum(p.numel() for p in model.parameters()) * 2 / 2**20:.0f} MiB)")
        del model
        ok, lines = _run_py(model_dir, write_sst2(Path(tmp)), Path(tmp) / "int8.json", "--load_int8", "--trainer",
                            "zo", "--lora", "--max_steps", "5", "--learning_rate", "1e-3", budget_s=budget_s)
    check.lines += lines
    check.status = PASS if ok and eight > 0 else FAIL
    return check


def check_run_py_cuda(budget_s: float) -> Check:
    check = Check("run_py_cuda")
    from tests.task_fixtures import write_sst2
    from tests.tiny import save_tiny
    runs = {"ft-in-place": ["--load_float16"], "ft-out-of-place": ["--load_float16", "--zo_perturb", "out_of_place"],
            "lora": ["--lora"], "xgblora": ["--xgblora", "--xgblora_steps_per_iteration", "2"]}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, data_dir = save_tiny("opt", Path(tmp) / "tiny-opt"), write_sst2(Path(tmp))
        for name, flags in runs.items():
            good, lines = _run_py(model_dir, data_dir, Path(tmp) / f"{name}.json", "--trainer", "zo", "--max_steps",
                                  "4", "--learning_rate", "1e-3", *flags, budget_s=budget_s / len(runs))
            ok &= good
            check.lines += lines
    check.status = PASS if ok else FAIL
    return check


def check_pytest(budget_s: float) -> Check:
    check = Check("pytest")
    if importlib.util.find_spec("pytest") is None:
        check.lines = ["skipped: pytest not importable"]
        return check
    proc = _run([sys.executable, "-m", "pytest", *PYTEST_FILES, "-q", "-p", "no:cacheprovider"], budget_s)
    check.status = PASS if proc.returncode == 0 else FAIL
    check.lines = [f"exit {proc.returncode}", *_tail(proc.stdout, 3)]
    check.lines += _tail(proc.stderr, 3) if proc.returncode else []
    return check


def check_two_gpus(budget_s: float) -> Check:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Check("two_gpus", SKIPPED, [f"skipped: they need two GPUs; this machine has {n}"])


# ---- driver ------------------------------------------------------------------------------------------------------

def checks() -> dict[str, Callable[[float], Check]]:
    """Name -> check(budget seconds), in report order."""
    bench = {name: (lambda budget, n=name: check_benchmark(n, budget)) for name in BENCH_MODELS}
    return {"environment": check_environment, "zo_exactness": check_zo_exactness, **bench, "int8": check_int8,
            "run_py_cuda": check_run_py_cuda, "pytest": check_pytest, "two_gpus": check_two_gpus}


def skipped(name: str, reason: str) -> Check:
    return Check(name, SKIPPED, [f"skipped: {reason}"])


def run_one(name: str, fn: Callable[[float], Check], skip: set[str], left_s: float) -> Check:
    """One check, timed; a check that raises is a FAIL with the error."""
    if name in skip:
        return skipped(name, "--skip")
    if left_s <= 10:
        return skipped(name, "the time budget (--budget-s) is spent")
    start = time.time()
    try:
        check = fn(left_s)
    except Exception as err:  # a broken check must not take the report down
        check = Check(name, FAIL, [f"raised {type(err).__name__}: {err}"])
    check.seconds = time.time() - start
    return check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="where to write the Markdown report")
    p.add_argument("--skip", default="", help=f"comma-separated checks to skip ({', '.join(GPU_CHECKS)}; gpu: all)")
    p.add_argument("--budget-s", type=float, default=450.0, help="stop starting checks after this many seconds")
    args = p.parse_args(argv)
    args.skip = {s for s in args.skip.split(",") if s}
    if "gpu" in args.skip:
        args.skip = (args.skip - {"gpu"}) | set(GPU_CHECKS)
    if unknown := args.skip - set(GPU_CHECKS):
        p.error(f"--skip: unknown {sorted(unknown)}; known: {', '.join(GPU_CHECKS)}, gpu")
    return args


def main(argv: list[str] | None = None) -> int:
    args, started = parse_args(argv), time.time()
    if not torch.cuda.is_available() and set(GPU_CHECKS) - args.skip:
        print("gpu_check.py: no CUDA device (torch.cuda.is_available() is False); skip the GPU checks "
              "(--skip gpu) to write the report's format alone", file=sys.stderr)
        return 2
    out, done = Path(args.out), []
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "scripts/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for name, fn in checks().items():
        done.append(run_one(name, fn, args.skip, args.budget_s - (time.time() - started)))
        out.write_text(report(done, started, command))
        print(f"{name}: {done[-1].status} ({done[-1].seconds:.1f} s)", flush=True)
    print(f"wrote {out}")
    return 1 if any(c.status == FAIL for c in done) else 0


if __name__ == "__main__":
    sys.exit(main())
