"""The engine shared by the apps (``large_models``: causal LMs on MeZO's large-model tasks; ``medium_models``:
masked LMs on the LM-BFF k-shot tasks): the zo step and optimizers, adapters and boosting, the Trainer subclass
and its callbacks, candidate scoring, metrics, checkpoints and result files.

A drop-in for your own Hugging Face or TRL script: ``from mezo_engine import ZOTrainer, ZOTrainingArguments``
(``zo_trainer.py``) or ``ZOSFTTrainer, ZOSFTConfig`` (``zo_sft.py``, with ``trl``)."""
import importlib

# Imported on first use: ``import mezo_engine.status`` (the sweeps) must not load torch and transformers.
_DROP_INS = {"ZOTrainer": "zo_trainer", "ZOTrainingArguments": "zo_trainer", "ModelLoss": "zo_trainer",
             "ZOSFTTrainer": "zo_sft", "ZOSFTConfig": "zo_sft"}


def __getattr__(name: str):
    if name in _DROP_INS:
        return getattr(importlib.import_module(f"mezo_engine.{_DROP_INS[name]}"), name)
    raise AttributeError(f"module 'mezo_engine' has no attribute {name!r}")
