"""Race ZO methods at an equal forward budget: ``python scripts/race.py RACE.toml [--jobs 2] [--dry-run]``.

See ``scripts/sweeps/race.py`` for the race file and the rules, docs/zo-methods.md for the races run.
"""
import sys

from sweeps.race_run import main

if __name__ == "__main__":
    sys.exit(main())
