"""Result files: their default name, the checks made before a run starts, and strict, atomic writing.

A result is never lost or silently replaced:

* ``check_result_path`` runs before the model is loaded: a result path that cannot be written (its parent is a
  file, it is a directory, its folder is not writable) or that holds a complete result (and ``--overwrite`` is
  not given) stops the run at once, not after hours of training.
* ``write_result`` writes strict JSON (non-finite floats become ``null``) to a temporary file in the same folder
  and renames it over the target, so a reader sees the old file or the new one, never half of one.
* ``run_name`` keeps the readable ``<task>-<model>-<tag>`` and appends a short hash of every setting that
  changes the result, so two settings never share a name while a re-run or resumed job keeps its own.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mezo_engine.ledger import Budget, Ledger
from mezo_engine.status import Kind, Status

# Settings that do not change what a run computes: where things are written, how progress is logged or shown,
# resuming and checkpointing, evaluation speed. They are left out of the name's hash, so that re-running or
# resuming a job (perhaps with a new --output_dir, --logging_steps or eval batch size) keeps its name.
# Everything else is in the hash, but only where it differs from the flag's default (``defaults``): a flag added
# later, left at a default that reproduces the old behaviour, does not rename earlier runs.
NOT_IN_HASH = frozenset({
    # output locations and overwriting
    "output_dir", "result_file", "result_dir", "overwrite", "save_model",
    "tag",  # the tag is in the readable part of the name already
    # logging, progress bars, reporting
    "logging_dir", "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter",
    "log_level", "log_level_replica", "log_on_each_node", "disable_tqdm", "verbose", "report_to", "run_name",
    "project", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id", "debug", "skip_memory_metrics",
    # checkpoints, resume and preemption; a warning threshold; the divergence stops (a run they do not stop ends
    # the same whatever their value)
    "merge_warn_ratio", "diverge_loss_ratio", "diverge_zero_grad_steps", "diverge_grad_norm_ratio",
    "resume_from_checkpoint", "save_strategy", "save_steps", "save_total_limit", "save_on_each_node",
    "save_only_model", "save_safetensors", "save_on_interrupt", "restore_callback_states_from_checkpoint",
    "ignore_data_skip", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo",
    "hub_always_push", "hub_revision",
    # speed only: evaluation is batch-size invariant (tested), data loading workers, process rank
    "per_device_eval_batch_size", "eval_accumulation_steps", "dataloader_num_workers", "dataloader_pin_memory",
    "dataloader_persistent_workers", "dataloader_prefetch_factor", "dataloader_multiprocessing_context",
    "torch_empty_cache_steps", "local_rank",
    # how long a rank waits for a stalled one: it ends a hung job, never changes a finished one
    "zo_stall_timeout",
    # speed only: a step's forwards share the blocks below the perturbed ones, the same losses bit for bit (tested)
    "zo_reuse_activations",
    # one more evaluation, of the last step's model, recorded beside the best dev model's (training is the same)
    "eval_last_model",
    # where the data files lie, not what they hold (local files and the hub give the same samples, tested)
    "data_dir",
    # aliases, copied into eval_strategy, zo_num_samples, zo_sample_scheduler and max_forwards
    "evaluation_strategy", "zero_order_sample", "zero_order_sample_scheduler", "max_zo_forward_steps",
    # budgets: they only end training early, after a step like any other (the schedule's horizon stays
    # --max_steps), so every step up to the stop is the same as a larger budget's; a larger budget continues the
    # run under the same name, from the checkpoint saved at the stop (completed_status), and the result records
    # the budget it was evaluated at
    "max_forwards", "max_time",
})
# When to evaluate on dev changes the result only when the best dev model is kept (do_eval follows eval_strategy).
EVAL_SCHEDULE = frozenset({"eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "do_eval", "eval_forwards"})


WHERE_ELSE = "choose another --result_file or --result_dir"


class ResultPathError(ValueError):
    """The result path cannot be used; the message names it and says what to do."""


_ABSENT = object()


def hashed_settings(config: dict, keep_best_model: bool, defaults: dict | None = None) -> dict:
    """The part of a resolved configuration that changes the result (see NOT_IN_HASH), without the settings that
    equal their value in ``defaults`` (the configuration of a run given no flags)."""
    left_out = NOT_IN_HASH if keep_best_model else NOT_IN_HASH | EVAL_SCHEDULE
    defaults = defaults or {}
    settings = {k: v for k, v in config.items()
                if k not in left_out and _canonical(v) != _canonical(defaults.get(k, _ABSENT))}
    settings["keep_best_model"] = keep_best_model
    if settings.get("world_size") == 1:  # a one-process run keeps the name it had before world_size was recorded
        del settings["world_size"]
    return settings


def _canonical(value: Any) -> Any:
    return value if value is _ABSENT else json.dumps(value, sort_keys=True, default=str)


def config_hash(config: dict, keep_best_model: bool, defaults: dict | None = None) -> str:
    """Eight hex digits identifying the result-changing settings of ``config`` (those that differ from
    ``defaults``)."""
    text = json.dumps(hashed_settings(config, keep_best_model, defaults), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_name(task: str, model_name: str, tag: str, digest: str, train_set: int | None = None) -> str:
    """``<task>-<model>-<tag>-<hash>[-trainset<k>]``; the model is the last part of its path, without .gguf."""
    model = Path(model_name.rstrip("/")).name.removesuffix(".gguf")
    name = "-".join(x for x in (task, model, tag, digest) if x)
    return name if train_set is None else f"{name}-trainset{train_set}"


def strict(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, so that it is valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_result(path: str | Path, result: dict) -> Path:
    """Write ``result`` as strict JSON to ``path`` atomically (temporary file in the same folder + rename)."""
    path = Path(path)
    text = json.dumps(strict(result), indent=2, default=str, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def completed_status(path: Path, budget: Budget | None = None) -> str | None:
    """Why the file at ``path`` must not be replaced without --overwrite, or None if it may be.

    A JSON object whose ``status`` is something other than ``completed`` (an interrupted or diverged run) may be
    replaced; a completed result, an older result without a status, or any other file may not. A ``budget
    reached`` result may be replaced by a run with a ``budget`` (default: none) that its recorded ledger has not
    reached: that run continues it.
    """
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return "it exists and is not a result JSON"
    if not isinstance(data, dict):
        return "it exists and is not a result JSON"
    status = Status.parse(data.get("status"))
    if status.kind is Kind.BUDGET:
        return _spent_budget(data.get("ledger"), budget or Budget())
    return f"it holds a {status} result" if status.is_completed else None


def _spent_budget(record, budget: Budget) -> str | None:
    """Why a ``budget reached`` result with ledger ``record`` cannot be continued under ``budget``, or None."""
    if not isinstance(record, dict):
        return "it holds a budget reached result without a ledger"
    ledger = Ledger.from_record(record)
    flag = budget.reached_by(ledger)
    if flag is None:
        return None
    return (f"it holds a budget reached result whose run has spent {budget.spent(ledger, flag)}; raise --{flag} "
            f"(or 0 for none) to continue it")


def unwritable(folder: Path, create: bool) -> str | None:
    """Why files cannot be made in ``folder`` (or, when it does not exist yet, in the nearest folder above it that
    does; ``create``: make ``folder`` first), or None when they can: one probe file made and removed."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    target = folder if create else existing
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=target, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"cannot write in {target} ({err.strerror or err})"
    return None


def _check_parent(path: Path) -> None:
    if problem := unwritable(path.parent, create=True):
        raise ResultPathError(f"result file {path}: {problem}; {WHERE_ELSE}")


def check_output_dir(folder: str | Path) -> None:
    """Raise ResultPathError unless checkpoints and saved models can be written to ``folder`` (``--output_dir``),
    made where it is missing; checked before anything loads, as the result path. Creates nothing."""
    if problem := unwritable(Path(folder), create=False):
        raise ResultPathError(f"output folder {folder} (--output_dir): {problem}; choose another --output_dir")


def check_result_path(path: str | Path, overwrite: bool, budget: Budget | None = None) -> None:
    """Raise ResultPathError unless a result can be written to ``path`` without replacing a complete one (a run
    with ``budget`` may continue a ``budget reached`` one that has room under it)."""
    path = Path(path)
    if path.is_dir():
        raise ResultPathError(f"result file {path}: is a directory; give a file name such as {path / 'result.json'}")
    _check_parent(path)
    reason = None if overwrite else completed_status(path, budget)
    if reason:
        raise ResultPathError(f"result file {path}: {reason}; pass --overwrite to replace it, or choose "
                              f"another --result_file or --tag")


def publish_result(path: Path, result: dict, overwrite: bool, budget: Budget | None = None) -> Path:
    """Write ``result`` to ``path``, or beside it if another run completed ``path`` while this one ran.

    The check before the run cannot see a run started at the same time; rather than replace that run's result,
    this one is written to ``<name>.<time>-<pid>.json`` and the returned path says where.
    """
    if not overwrite and completed_status(path, budget):
        path = path.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}{path.suffix}")
    return write_result(path, result)
