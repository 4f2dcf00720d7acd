"""The ZO optimizers' former home: their classes, importable by the old path (``scripts/benchmark.py``). They live
in ``mezo_engine/zo_methods/`` (one file each)."""
from mezo_engine.zo_methods import ZOAdam, ZOOptimizer, ZOSGD, ZOSGDMomentum

__all__ = ["ZOAdam", "ZOOptimizer", "ZOSGD", "ZOSGDMomentum"]
