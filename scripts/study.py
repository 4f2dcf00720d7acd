"""The tables and figures of a study made of several sweeps: ``python scripts/study.py docs/study/study.toml``.

Writes ``tables.md`` and ``figures/`` in the study's ``out`` folder; see ``scripts/sweeps/study.py``.
"""
import sys

from sweeps.study import main

if __name__ == "__main__":
    sys.exit(main())
