"""Sweeps over the drivers: a TOML file names a driver, fixed settings and a grid; one command runs every point
(locally in a queue of pinned slots, or as a SLURM job array through submitit), skipping finished runs, resuming
interrupted ones and leaving diverged ones alone; ``aggregate`` tabulates the results and ``plots`` draws them.

Modules: ``spec`` (the file and its points), ``state`` (a point's result status), ``worker`` (the command of one
point), ``local`` and ``slurm`` (executors), ``cli`` (``scripts/sweep.py``), ``aggregate``, ``plots``, ``study``.

Imported as ``sweeps`` (``scripts/`` is first on the path of ``python scripts/sweep.py``; pytest.ini puts it on the
tests' path), never as ``scripts.sweeps``; it imports nothing from the engine or the apps, whose drivers it runs.
"""
