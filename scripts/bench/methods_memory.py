"""``--methods-memory``: the peak memory of each ZO method's real training step against the peak of inference on
as many rows.

Each case runs in its own child process (this script with ``--methods-memory --_memory-child CASE``), which builds
the MezoTrainer exactly as run.py does (``step.real_trainer``: the weights of ``--trainer-step-model``, ``--examples``
real SST-2 training examples from ``--data-dir``, LoRA r=8 on q/v or full-parameter training), collates the
examples into one batch (B = ``--examples`` rows), puts the model in eval mode, reads every weight once (a loader
that maps the weights from their safetensors file leaves them out of the resident set until they are first read:
without this the count would start without them and the first forward would add them) and only then starts
counting:

* a step case ("lora:adam", "full:hizoo", ...) runs ``--mem-steps`` steps as the Trainer's loop does:
  ``MezoTrainer.training_step`` on the batch (the method's ``zo_step``: its perturbations, forwards, restores),
  then ``optimizer.step()`` (the update of the methods that queue their estimate), then the next step;
* an inference case ("lora:infer_x1", "full:infer_x1") runs the same number of forwards of the training loss under
  ``no_grad``, as the ZO step runs each of them (in the mode's forward context: LoRA folded into its weights);
  "lora:infer_x9" runs the loss of N + 1 copies of the batch as one forward of (N + 1) B rows
  (``objective.copies_loss``, which repeats the collated batch with ``scoring.tile_batch``): the reference of
  FZOO with LoRA, whose base loss and N queries are that one forward (``batched_queries``).

What the peak counts. CPU: the largest resident set size of the child while the steps run (VmHWM, reset to the
current RSS after a garbage collection and ``malloc_trim`` once the trainer and the batch exist), which holds,
once each, the Python runtime and libraries, the weights, the trainer and the batch, plus whatever the steps
allocate (activations, perturbation vectors, the method's state, which every method here creates at its first
step); transient peaks of loading the model are not in it. CUDA: ``max_memory_allocated`` after
``reset_peak_memory_stats`` at the same moment (the weights and the batch, plus what the steps allocate). So the
ratio peak(step) / peak(inference) is the whole memory a run needs while training over what it needs to serve the
same rows, not the growth above the weights alone (``start_bytes``, the RSS or allocation when counting began, is
stored with each peak for that).

Each case also records ``optimizer_state_bytes`` (``runner.optimizer_state_bytes``: the tensors the ZO optimizer
keeps after the steps) and the most rows any forward of the model ran (``largest_forward_rows``, from a forward
pre-hook), and an inference case the rows of its batch (``rows``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench import step
from bench.harness import LoadMeter, meta
from bench.memory import SCRIPT, peak_during, run_child
from bench.ratios import Ratio, compute_ratios
from mezo_engine import methods
from mezo_engine.runner import optimizer_state_bytes
from mezo_engine.scoring import tile_batch

# The methods measured in each mode (sparse_mezo refuses LoRA: it ranks pretrained weights by magnitude).
METHODS = {"lora": ("sgd", "adam", "lozo", "lozo_m", "subzero", "hizoo", "fzoo"),
           "full": ("sgd", "lozo", "subzero", "hizoo", "sparse_mezo", "fzoo")}
MODE_FLAGS = {"lora": ("--lora",), "full": ()}
TARGET = 1.2
MiB = 2 ** 20
# Rows of the model's input that a forward of a collated batch runs: prompts (shared prefix), whole rows.
ROW_KEYS = ("prompt_ids", "input_ids")


def copies_of(mode: str, method: str, args: argparse.Namespace) -> int:
    """How many copies of the batch one forward of ``method``'s step runs: N + 1 for batched FZOO with LoRA
    (``--fzoo_batched``, its default), else 1."""
    return args.fzoo_num_queries + 1 if (mode, method) == ("lora", "fzoo") else 1


def infer_case(mode: str, copies: int) -> str:
    return f"{mode}:infer_x{copies}"


def cases(args: argparse.Namespace) -> list[str]:
    """The step case of every method of every mode, and the inference cases they are compared against."""
    steps = [f"{mode}:{method}" for mode, names in METHODS.items() for method in names]
    refs = {infer_case(mode, copies_of(mode, method, args)) for mode, names in METHODS.items() for method in names}
    return steps + sorted(refs | {infer_case(mode, 1) for mode in METHODS})


# ---- in the child ------------------------------------------------------------------------------------------------
def batch_rows(batch: dict) -> int:
    """The rows of the model's input in a collated batch (prompts and whole rows)."""
    return sum(int(batch[k].shape[0]) for k in ROW_KEYS if k in batch)


def _step_fn(trainer, batch: dict):
    """One step as the Trainer's loop runs it: ``training_step``, ``optimizer.step()``, the step count."""
    def one_step() -> None:
        trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()
        trainer.state.global_step += 1
    return one_step


def _infer_fn(trainer, batch: dict, copies: int):
    """One forward of the training loss under ``no_grad`` in the mode's forward context, on ``copies`` copies of
    the batch as one batch."""
    model, mode = trainer.model, trainer.mode or methods.mode_for(trainer.args)

    def forward() -> float:
        with torch.no_grad(), mode.forward_context(model):
            if copies == 1:
                return float(trainer.compute_loss(model, batch))
            return float(trainer.objective.copies_loss(model, batch, copies).sum())
    return forward


def page_in(model: torch.nn.Module) -> None:
    """Read every parameter and buffer of ``model`` once, so that weights mapped from their file are resident."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.sum()


class RowCounter:
    """A forward pre-hook that keeps the most rows (first dimension of ``input_ids``) any forward ran."""

    def __init__(self):
        self.most = 0

    def __call__(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.most = max(self.most, int(ids.shape[0]))


def _trainer_extra(mode: str, what: str, args: argparse.Namespace) -> tuple[str, ...]:
    """run.py flags of the case: the method (inference builds the stateless ``sgd``), FZOO's query count, the
    LoRA rank."""
    method = "sgd" if what.startswith("infer") else what
    queries = ("--fzoo_num_queries", str(args.fzoo_num_queries)) if method == "fzoo" else ()
    rank = ("--lora_r", str(args.lora_r)) if mode == "lora" else ()
    return ("--zo_optimizer", method, *queries, *rank)


def measure_here(case: str, args: argparse.Namespace) -> dict:
    """Peak memory of ``case`` ("mode:method" or "mode:infer_x<copies>") in this process: see the module
    docstring for what is counted."""
    mode, what = case.split(":")
    with tempfile.TemporaryDirectory() as out_dir:
        trainer, _ = step.real_trainer(args, out_dir, MODE_FLAGS[mode], _trainer_extra(mode, what, args))
        # on the model's device, as training_step puts it (there it is then a no-op)
        batch = trainer._prepare_inputs(trainer.data_collator(list(trainer.train_dataset)))
        model = trainer.model
        model.eval()
        page_in(model)
        if what.startswith("infer_x"):
            copies = int(what.removeprefix("infer_x"))
            fn, rows = _infer_fn(trainer, batch, copies), batch_rows(tile_batch(batch, copies))
        else:
            fn, rows = _step_fn(trainer, batch), batch_rows(batch)
        counter = RowCounter()
        handle = model.register_forward_pre_hook(counter, with_kwargs=True)
        out = peak_during(fn, args.mem_steps, next(model.parameters()).device)
        handle.remove()
        trainable = [p for p in model.parameters() if p.requires_grad]
        return {**out, "rows": rows, "examples": len(trainer.train_dataset), "largest_forward_rows": counter.most,
                "optimizer": type(trainer.optimizer).__name__,
                "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer),
                "trainable_bytes": sum(p.numel() * p.element_size() for p in trainable)}


# ---- in the parent -----------------------------------------------------------------------------------------------
def _path_or_name(value: str) -> str:
    """A local path made absolute (children run from the repository root), an alias or hub id as it is."""
    return str(Path(value).resolve()) if Path(value).exists() else value


def child_command(case: str, args: argparse.Namespace) -> list[str]:
    """This script as the memory child of ``case``, with the settings a child reads."""
    return [sys.executable, str(SCRIPT), "--methods-memory", "--_memory-child", case,
            "--trainer-step-model", _path_or_name(args.trainer_step_model), "--data-dir", _path_or_name(args.data_dir),
            "--examples", str(args.examples), "--threads", str(args.threads), "--seed", str(args.seed),
            "--mem-steps", str(args.mem_steps), "--fzoo-num-queries", str(args.fzoo_num_queries),
            "--lora-r", str(args.lora_r), "--device", args.device]


def measure_all(args: argparse.Namespace) -> dict[str, dict]:
    """Every case in its own child process, ``--mem-jobs`` at a time; with ``--mem-jobs 0`` every case in this
    process in turn (quick, for tests: on the CPU a case's peak may then also hold what the allocator kept of an
    earlier case)."""
    if args.mem_jobs == 0:
        return {c: measure_here(c, args) for c in tqdm(cases(args), desc="methods memory", leave=False)}
    with ThreadPoolExecutor(args.mem_jobs) as pool:
        futures = {c: pool.submit(run_child, c, child_command(c, args)) for c in cases(args)}
        try:
            return {c: f.result() for c, f in tqdm(futures.items(), desc="methods memory", leave=False)}
        except BaseException:  # a failed case: start no more of them
            for f in futures.values():
                f.cancel()
            raise


def ratios(args: argparse.Namespace) -> list[Ratio]:
    """Each method's step peak over inference on the rows one of its forwards runs (target <= 1.2), then batched
    FZOO with LoRA over inference on B rows (information: its N + 1 growth)."""
    out = []
    for mode, names in METHODS.items():
        for method in names:
            copies = copies_of(mode, method, args)
            rows = "B rows" if copies == 1 else f"{copies} B rows"
            out.append(Ratio(f"peak_memory_over_inference/{mode}/{method}", f"m:{mode}:{method}",
                             f"m:{infer_case(mode, copies)}", 1.0, "<=", TARGET,
                             f"{method} ({mode}): ZO step peak / inference peak on {rows}"))
    if copies_of("lora", "fzoo", args) > 1:
        out.append(Ratio("peak_memory_over_inference_b_rows/lora/fzoo", "m:lora:fzoo", f"m:{infer_case('lora', 1)}",
                         1.0, "", 0.0, "fzoo (lora, batched): ZO step peak / inference peak on B rows"))
    return out


def table_rows(peaks: dict, found: dict) -> list[dict]:
    """One row per ratio: mode, method, the reference's rows, both peaks and their growth since counting began,
    the ratio, its target and result, and the optimizer's state."""
    rows = []
    for key, r in found.items():
        num, den = peaks[r["num"][2:]], peaks[r["den"][2:]]
        mode, method = key.split("/")[1:]
        method += "" if r["target"] else " (against B rows)"
        rows.append({"mode": mode, "method": method, "reference_rows": den["rows"],
                     "step_mib": num["peak_bytes"] / MiB, "infer_mib": den["peak_bytes"] / MiB,
                     "step_growth_mib": (num["peak_bytes"] - num["start_bytes"]) / MiB,
                     "infer_growth_mib": (den["peak_bytes"] - den["start_bytes"]) / MiB, "ratio": r["value"],
                     "target": r["target"] or "(info)",
                     "result": "" if r["pass"] is None else ("pass" if r["pass"] else "FAIL"),
                     "state_mib": num["optimizer_state_bytes"] / MiB})
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| mode | method | inference rows | ZO step peak MiB | inference peak MiB | ratio | target | pass/fail "
            "| step growth MiB | inference growth MiB | optimizer state MiB |")
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['mode']} | {r['method']} | {r['reference_rows']} | {r['step_mib']:.0f} | {r['infer_mib']:.0f} "
              f"| {r['ratio']:.3f} | {r['target']} | {r['result']} | {r['step_growth_mib']:.0f} "
              f"| {r['infer_growth_mib']:.0f} | {r['state_mib']:.2f} |" for r in rows]
    return "\n".join(lines)


def run_methods_memory(args: argparse.Namespace, device: torch.device) -> dict:
    """Measure every case, then the ratios and the table."""
    if not (args.trainer_step_model and args.data_dir):
        raise SystemExit("--methods-memory: needs --trainer-step-model (e.g. smollm2-135m) and --data-dir")
    load = LoadMeter()
    peaks = measure_all(args)
    found = compute_ratios(ratios(args), {}, peaks)
    return {"meta": {**meta(args, device), "load": load.report(), "trainer_step_model": args.trainer_step_model,
                     "fzoo_num_queries": args.fzoo_num_queries, "target": TARGET},
            "memory": peaks, "ratios": found, "table": table_rows(peaks, found)}


def write_methods_memory(args: argparse.Namespace, result: dict, out: Path) -> dict:
    """Write the JSON to ``out``; print the run's line and the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    other = result["meta"]["load"].get("other_processes_cores", math.nan)
    print(f"\n{args.trainer_step_model} / SST-2 x{args.examples} (B) / FZOO N = {args.fzoo_num_queries} / "
          f"{result['meta']['device']} {result['meta']['device_name']} / {args.threads} threads / "
          f"{args.mem_steps} steps a case / other processes ~{other:.2f} cores\n")
    print(markdown(result["table"]))
    print(f"\nwrote {out}")
    return result
