"""Tabulate a sweep: ``python scripts/aggregate.py scripts/sweeps/example.toml [--over SEED] [--metric M]``.

Writes ``summary.md`` and ``summary.csv`` in the sweep's result folder (or ``--out``); see
``scripts/sweeps/aggregate.py``.
"""
import sys

from sweeps.aggregate import main

if __name__ == "__main__":
    sys.exit(main())
