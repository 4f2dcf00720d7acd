"""Draw a sweep: ``python scripts/plots.py scripts/sweeps/example.toml [--metric eval.accuracy] [--out DIR]``.

Writes loss, dev, bars and delta_norm figures (PNG and PDF) to ``<result_dir>/plots``; see
``scripts/sweeps/plots.py``.
"""
import sys

from sweeps.plots import main

if __name__ == "__main__":
    sys.exit(main())
