"""The SLURM executor: the points left to run as one job array, submitted through submitit.

Options come from the sweep file's ``[slurm]`` table, overridden by the command's flags:

    [slurm]
    partition = "gpu"
    time = "04:00:00"        # or minutes; per array task
    mem = "32G"              # or GB as a number
    cpus_per_run = 4         # --cpus-per-task; the run's OMP_NUM_THREADS
    gpus_per_run = 1         # --gpus-per-node
    jobs = 8                 # array tasks running at once (--array=0-N%jobs)
    signal_grace = 120       # seconds before the time limit at which run.py gets SIGTERM
    account = "..."          # also qos, constraint
    setup = ["module load cuda"]        # shell lines run before each task
    extra = {requeue = true}            # any other sbatch option, as sbatch spells it

Each array task runs ``worker.run_in_job`` under ``srun``: the driver in the foreground, its log beside the
results. ``--signal=TERM@<signal_grace>`` makes SLURM send SIGTERM to run.py ahead of the time limit, so it saves a
checkpoint, writes ``interrupted at step N`` and exits 75; a later ``sweep.py`` call (or SLURM's own requeue after
preemption, with ``extra = {requeue = true}``) resumes it through ``RESUME=auto``.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
from pathlib import Path

from tqdm import tqdm

from .spec import REPO
from .worker import Launch, run_in_job

logger = logging.getLogger("sweep")
KEYS = {"partition", "time", "mem", "cpus_per_run", "gpus_per_run", "jobs", "signal_grace", "account", "qos",
        "constraint", "setup", "extra"}
DEFAULTS = {"time": 60, "cpus_per_run": 1, "gpus_per_run": 0, "jobs": 256, "signal_grace": 120}


class SlurmOptionError(ValueError):
    """A ``[slurm]`` key or flag has a bad value; the message names it."""


def time_minutes(value) -> int:
    """SLURM time (``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``, ``HH:MM``) or minutes as a number -> whole minutes."""
    if isinstance(value, (int, float)) and value > 0:
        return max(1, round(value))
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not match:
        raise SlurmOptionError(f"time {value!r}: give minutes or HH:MM:SS (D-HH:MM:SS), e.g. 90 or 01:30:00")
    days, a, b, c = (int(x) if x else None for x in match.groups())
    if b is None:
        seconds = a * 3600 if days is not None else a * 60
    elif c is None:
        seconds = a * 3600 + b * 60 if days is not None else a * 60 + b
    else:
        seconds = a * 3600 + b * 60 + c
    return max(1, -(-((days or 0) * 86400 + seconds) // 60))


def slurm_options(table: dict, flags: dict) -> dict:
    """The ``[slurm]`` table with defaults filled in and the flags that were given laid over it, checked."""
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise SlurmOptionError(f"[slurm] {', '.join(unknown)}: unknown key; known: {', '.join(sorted(KEYS))}")
    options = {**DEFAULTS, **table, **{k: v for k, v in flags.items() if v is not None}}
    options["time"] = time_minutes(options["time"])
    for key in ("cpus_per_run", "gpus_per_run", "jobs", "signal_grace"):
        if not isinstance(options[key], int) or options[key] < (0 if key == "gpus_per_run" else 1):
            raise SlurmOptionError(f"{key} {options[key]!r}: give a whole number of at least "
                                   f"{0 if key == 'gpus_per_run' else 1}")
    if isinstance(options.get("mem"), (int, float)):
        options["mem"] = f"{int(options['mem'])}G"
    if not isinstance(options.get("extra", {}), dict) or not isinstance(options.get("setup", []), list):
        raise SlurmOptionError("[slurm] extra must be a table of sbatch options and setup a list of shell lines")
    return options


def executor_parameters(options: dict, name: str, cwd: str) -> dict:
    """submitit ``SlurmExecutor.update_parameters`` keywords for ``options`` (see slurm_options)."""
    pythonpath = os.pathsep.join([str(REPO), str(REPO / "scripts"), "${PYTHONPATH:-}"])
    params = {"job_name": name, "time": options["time"], "cpus_per_task": options["cpus_per_run"],
              "array_parallelism": options["jobs"], "stderr_to_stdout": True,
              "srun_args": ["--cpus-per-task", str(options["cpus_per_run"])],
              "setup": [f"cd {shlex.quote(cwd)}", f"export PYTHONPATH={pythonpath}", *options.get("setup", [])],
              "additional_parameters": {"signal": f"TERM@{options['signal_grace']}", **options.get("extra", {})}}
    if options["gpus_per_run"]:
        params["gpus_per_node"] = options["gpus_per_run"]
    params.update({k: options[k] for k in ("partition", "mem", "account", "qos", "constraint") if options.get(k)})
    return params


def submit(launches: list[Launch], params: dict, folder: Path) -> list:
    """Submit ``launches`` as one job array; the submitit jobs, one per launch."""
    import submitit  # only the SLURM path needs it

    executor = submitit.SlurmExecutor(folder=str(folder))
    executor.update_parameters(**params)
    try:
        jobs = executor.map_array(run_in_job, launches)
    except submitit.core.utils.FailedJobError as err:  # sbatch said no: its message names the option
        lines = str(err).strip().splitlines()
        raise SlurmOptionError(f"sbatch refused the job array: {lines[0] if lines else err}") from None
    logger.info("submitted job array %s (%d tasks); logs in %s", jobs[0].job_id.split("_")[0], len(jobs), folder)
    return jobs


def wait(jobs: list, launches: list[Launch]) -> dict[str, str]:
    """Wait for every job; ``{name: outcome}`` (a job that failed outside the driver reports submitit's error)."""
    outcomes = {}
    for job, launch in tqdm(list(zip(jobs, launches)), desc="slurm", unit="run"):
        try:
            outcomes[launch.name] = job.result()["outcome"]
        except Exception as err:  # submitit raises whatever ended the job; report it with its log
            outcomes[launch.name] = f"failed: {str(err).splitlines()[0]}; job log {job.paths.stdout}"
    return outcomes
