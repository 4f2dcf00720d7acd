"""Sweeps over the drivers: a TOML file names a driver, fixed settings and a grid; one command runs every point
(locally in a queue of pinned slots, or as a SLURM job array through submitit), skipping finished runs, resuming
interrupted ones and leaving diverged ones alone; ``aggregate`` tabulates the results and ``plots`` draws them.

Modules: ``spec`` (the file and its points), ``state`` (a point's result status), ``worker`` (the command of one
point), ``local`` and ``slurm`` (executors), ``cli`` (``scripts/sweep.py``), ``aggregate``, ``plots``.
"""
