"""Errors that the trainer and the methods' callbacks share (no torch, no transformers)."""
from __future__ import annotations


class DivergenceError(ArithmeticError):
    """Training produced a non-finite loss, projected gradient or merge; ``step`` is the 1-based step."""

    def __init__(self, step: int, message: str):
        super().__init__(f"diverged at step {step}: {message}")
        self.step = step
