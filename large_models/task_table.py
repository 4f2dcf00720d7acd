"""The causal-LM app's tasks by name, with MeZO's per-task driver settings: standard library only, so that the shell
drivers read it by path (``python3 large_models/task_table.py``), as they read the methods' registry.

    python3 large_models/task_table.py names          # SST2 RTE CB ... DROP
    python3 large_models/task_table.py driver TASK    # shell assignments: DEFAULT_DEV, TASK_ARGS
    python3 large_models/task_file.py driver FILE     # the same for TASK=custom TASK_FILE=FILE

The task classes (``tasks.py``: loaders, templates, metrics) are registered under the same names; a test checks
that the two agree, and ``run.py``'s ``--task_name`` check reads the names from here.
"""
from __future__ import annotations

import sys
from typing import NamedTuple


class DriverSettings(NamedTuple):
    """MeZO's choices per task: the dev-set size when DEV is not given, and whether training is classification over
    the candidates (``--train_as_classification``) or an LM loss on the answer tokens."""

    default_dev: int = 500
    classification: bool = True


TASKS: dict[str, DriverSettings] = {
    "SST2": DriverSettings(), "RTE": DriverSettings(), "CB": DriverSettings(default_dev=100),
    "BoolQ": DriverSettings(), "WSC": DriverSettings(), "WIC": DriverSettings(), "MultiRC": DriverSettings(),
    "Copa": DriverSettings(default_dev=100, classification=False), "ReCoRD": DriverSettings(classification=False),
    "SQuAD": DriverSettings(classification=False), "DROP": DriverSettings(classification=False),
}


CUSTOM = "custom"  # a task of one's own: --task_name custom --task_file FILE (task_file.py gives its driver settings)


def driver_assignments(name: str) -> str:
    """The shell assignments ``large_models/common.sh`` evaluates for task ``name``."""
    settings = TASKS[name]
    task_args = "(--train_as_classification)" if settings.classification else "()"
    return f"DEFAULT_DEV={settings.default_dev}\nTASK_ARGS={task_args}"


def main(argv: list[str]) -> int:
    if argv == ["names"]:
        print(" ".join([*TASKS, CUSTOM]))
        return 0
    if len(argv) == 2 and argv[0] == "driver" and argv[1] in TASKS:
        print(driver_assignments(argv[1]))
        return 0
    known = " ".join([*TASKS, CUSTOM])
    if len(argv) == 2 and argv[0] == "driver":
        print(f"TASK={argv[1]} unknown; known: {known}", file=sys.stderr)
    else:
        print(f"usage: task_table.py names | driver TASK (one of {known})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
