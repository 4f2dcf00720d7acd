"""The masked-LM app's tasks by name (LM-BFF's folder names): standard library only, so that the shell drivers
read it by path (``python3 medium_models/task_table.py names``). The tasks themselves (``tasks.py``: layouts,
label words, templates) are registered under the same names; a test checks that the two agree.
"""
from __future__ import annotations

import sys

NAMES = ("SST-2", "sst-5", "mr", "cr", "mpqa", "subj", "trec", "CoLA", "MNLI", "SNLI", "QNLI", "QQP", "MRPC", "RTE",
         "STS-B")


def main(argv: list[str]) -> int:
    if argv == ["names"]:
        print(" ".join(NAMES))
        return 0
    print("usage: task_table.py names", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
