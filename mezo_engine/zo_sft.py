"""ZO fine-tuning through TRL's ``SFTTrainer``: its dataset handling (prompt/completion and chat datasets, chat
templates, completion-only loss, packing) with the engine's training (``zo_trainer.ZOTrainerMixin``). Change
``SFTTrainer`` to ``ZOSFTTrainer`` and ``SFTConfig`` to ``ZOSFTConfig`` (docs/your-data.md)."""
from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig, SFTTrainer

from mezo_engine.trainer import MezoTrainer
from mezo_engine.zo_trainer import ZOTrainerMixin, ZOTrainingArguments


@dataclass
class ZOSFTConfig(ZOTrainingArguments, SFTConfig):
    """``SFTConfig``'s dataset settings and the engine's flags; zo training by default, no gradient checkpointing
    (a zo step runs no backward) and float32 unless asked (SFTConfig would pick bf16)."""

    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Recompute activations in the backward pass (regular training only)."})
    bf16: bool | None = field(default=False, metadata={"help": "bfloat16 mixed precision (the Trainer's flag)."})


class ZOSFTTrainer(ZOTrainerMixin, MezoTrainer, SFTTrainer):
    """TRL's ``SFTTrainer`` trained zeroth-order (or by backprop) through the engine: after ``MezoTrainer`` in the
    method order comes ``SFTTrainer``, so the loss, logging and evaluation are TRL's where the engine has no step
    of its own."""

    @classmethod
    def arguments_class(cls) -> type:
        return ZOSFTConfig
