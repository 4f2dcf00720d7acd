"""Run a sweep: ``python scripts/sweep.py scripts/sweeps/example.toml [--dry-run] [--executor local|slurm]``.

See ``scripts/sweeps/cli.py`` (and ``--help``) for the options and docs/sweeps.md.
"""
import sys

from sweeps.cli import main

if __name__ == "__main__":
    sys.exit(main())
