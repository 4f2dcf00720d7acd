"""LoRA through PEFT (``--lora``): its flags, checks and mode, LoRA-GA initialisation and SuperReLoRA-style partial
merges (``--lora_merge_every``). The adapter maths (attach, merge, fold, LoRA-GA) is ``mezo_engine/lora.py``."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import TrainerCallback

from mezo_engine import lora
from mezo_engine.errors import DivergenceError
from mezo_engine.methods.ft import Method, Mode, ModeError

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
DRIVER = {"flag": "lora", "defaults": "adapter",
          "driver_args": ["--lora_r", "{LORA_R:8}", "--lora_alpha", "{LORA_ALPHA:16}"],
          "untrained": "an adapter changes nothing until it is trained"}

logger = logging.getLogger(__name__)


@dataclass
class LoraFlags:
    lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all parameters."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA alpha (scale alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Module names to adapt (default: the attention query and value projections)."})
    lora_layers: str = field(default="", metadata={
        "help": "LoRA and XGBLoRA: adapt only the transformer blocks FIRST-LAST (0-based, inclusive, e.g. 20-29; "
                "default: every block). With adapters on upper blocks only, the zo step's forwards share the "
                "blocks below (--zo_reuse_activations)."})
    lora_init: Literal["default", "lora_ga"] = field(default="default", metadata={
        "help": "default: A Kaiming-uniform, B zero; lora_ga: from the top singular vectors of an estimated gradient."})
    lora_ga_batches: int = field(default=4, metadata={"help": "Batches used to estimate the gradient for --lora_init lora_ga."})
    lora_merge_every: int = field(default=0, metadata={"help": "Plain LoRA: partial merge every N steps (0: never)."})
    lora_merge_alpha: float = field(default=0.5, metadata={"help": "Fraction of the adapter moved into the base weight per partial merge."})


def problems(args):
    """Yield one message per bad LoRA flag value (LoRA-GA also serves ``--xgblora``)."""
    if args.lora_r < 1:
        yield f"--lora_r {args.lora_r}: must be >= 1"
    try:
        lora.parse_blocks(args.lora_layers)
    except ValueError as err:
        yield str(err)
    if args.lora_layers and args.mode not in ("lora", "xgblora"):
        yield f"--lora_layers {args.lora_layers}: needs --lora or --xgblora"
    if args.lora_merge_every < 0:
        yield f"--lora_merge_every {args.lora_merge_every}: must be >= 0"
    if not 0 < args.lora_merge_alpha <= 1:
        yield f"--lora_merge_alpha {args.lora_merge_alpha}: must be in (0, 1]"
    if args.lora_merge_every and not args.lora:
        yield f"--lora_merge_every {args.lora_merge_every}: needs --lora"
    if args.load_int8 and args.lora_merge_every and not args.xgblora and torch.cuda.is_available():
        yield f"--load_int8 with --lora_merge_every {args.lora_merge_every} on CUDA: merges write into the base " \
              "weights, which bitsandbytes keeps 8-bit (on the CPU the merged layers stay float32)"
    if args.lora_init == "lora_ga" and args.mode not in ("lora", "xgblora"):
        yield "--lora_init lora_ga: needs --lora or --xgblora"
    if args.lora_init == "lora_ga" and args.trainer == "zo":
        yield ("--lora_init lora_ga with --trainer zo: LoRA-GA needs backprop gradients, which would cost "
               "training memory; use --trainer regular, or --lora_init default with zo")


def model_problems(args, config):
    """``--lora_layers`` within the model's blocks (its config, before the model loads)."""
    blocks = getattr(config, "num_hidden_layers", None)
    chosen = lora.parse_blocks(args.lora_layers) if args.mode in ("lora", "xgblora") else None
    if chosen is not None and isinstance(blocks, int) and chosen[1] >= blocks:
        yield f"--lora_layers {args.lora_layers}: this model's blocks are 0-{blocks - 1}"


def merge_due(step: int, kappa: int) -> bool:
    """Merge after optimizer step ``step`` (1-based count) when it is a multiple of kappa (partial merges, boosters)."""
    return kappa > 0 and step > 0 and step % kappa == 0


def checked_merge(step: int, merge: Callable[[], lora.MergeReport],
                  on_merge: Callable[[lora.MergeReport], None] | None) -> lora.MergeReport:
    """Run ``merge``; a non-finite delta becomes a DivergenceError at ``step``; ``on_merge`` sees the report."""
    try:
        report = merge()
    except lora.NonFiniteDeltaError as err:
        raise DivergenceError(step, str(err)) from err
    if on_merge is not None:
        on_merge(report)
    return report


class PartialMergeCallback(TrainerCallback):
    """SuperReLoRA-style partial merge for plain LoRA: every ``every`` steps move ``alpha`` of the adapter into W."""

    def __init__(self, every: int, alpha: float, warn_ratio: float = lora.MERGE_WARN_RATIO,
                 on_merge: Callable[[lora.MergeReport], None] | None = None):
        self.every, self.alpha, self.warn_ratio, self.on_merge = every, alpha, warn_ratio, on_merge
        self.history: list[dict] = []

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])

    def log_row(self) -> dict[str, float]:
        """What the logged rows carry (``MezoTrainer.log``): partial merges so far and the last one's |dW|."""
        return lora.merges_row(self.history)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if merge_due(state.global_step, self.every):
            report = checked_merge(state.global_step, lambda: lora.partial_merge(model, self.alpha, self.warn_ratio),
                                   self.on_merge)
            self.history.append({"step": state.global_step, "modules": report.num_modules,
                                 "delta_norm": report.delta_norm})
            logger.info("partial merge at step %d: %.2f of %d modules, |dW| = %.4g",
                        state.global_step, self.alpha, report.num_modules, report.delta_norm)


class LoraMode(Mode):
    """LoRA through PEFT (``--lora``): A/B train, the base stays frozen; optional LoRA-GA initialisation and
    SuperReLoRA-style partial merges (``--lora_merge_every``). Saves the adapter and the merged model."""

    name = "lora"
    adapter = True
    frozen_base = True  # trains beside the base weights, which may then be 8-bit (--load_int8)

    @property
    def rank(self) -> int:
        return self.args.lora_r

    def prepare(self, model, objective=None, batches=None):
        a = self.args
        try:
            model = lora.attach_lora(model, r=self.rank, alpha=a.lora_alpha, dropout=a.lora_dropout,
                                     target_modules=a.lora_target_modules, blocks=lora.parse_blocks(a.lora_layers))
        except ValueError as err:  # a target module or LoRA setting this model cannot take
            raise ModeError(str(err)) from err
        self.gradient_estimator = self._lora_ga(objective, batches) if a.lora_init == "lora_ga" else None
        self._initialise(model)
        return model

    def _initialise(self, model) -> None:
        if self.gradient_estimator is not None:
            lora.lora_ga_reinit_(model, self.gradient_estimator(model))

    def _lora_ga(self, objective, batches) -> Callable:
        """model (, layer names) -> backprop gradients of each adapted weight, averaged over ``batches``."""
        fixed = batches()

        def estimate(model, layers=None):
            device = next(model.parameters()).device
            moved = [{k: v.to(device) for k, v in b.items()} for b in fixed]
            return lora.estimate_lora_ga_grads_backprop(model, moved, objective, layers=layers)
        return estimate

    def optimizer_parameters(self, model):
        """Every adapter parameter (frozen boosters may train later) and whatever else trains (``also_train``),
        in model order."""
        adapters = {id(p) for p in lora.trainable_lora_parameters(model, include_frozen=True)}
        return [p for p in model.parameters() if p.requires_grad or id(p) in adapters]

    def mutable_parameters(self, model):
        """Besides the trainable ones: every adapter, and the adapted base weights when training writes into them
        (``writes_bases``: merges, LoRA-GA's shift); plain LoRA leaves them as loaded, so its best-dev snapshot and
        checkpoints hold the adapters alone."""
        bases = self.writes_bases()
        return {name: p for name, p in model.named_parameters()
                if p.requires_grad or "lora_" in name or (bases and name.endswith("base_layer.weight"))}

    def forward_context(self, model):
        """``--zo_fold_adapters``: each adapted layer runs as one matmul with W + s B A."""
        return lora.folded_adapters(model) if self.args.zo_fold_adapters else super().forward_context(model)

    def callbacks(self, record):
        a = self.args
        if not a.lora_merge_every:
            return {}
        return {"partial_merges": PartialMergeCallback(a.lora_merge_every, a.lora_merge_alpha, a.merge_warn_ratio,
                                                       record)}

    def stores_base(self) -> bool:
        return self.args.lora_init == "lora_ga"  # LoRA-GA shifts the base weights inside PEFT

    def writes_bases(self) -> bool:
        """Whether training writes into the adapted base weights: partial merges, or LoRA-GA's shift."""
        return bool(self.args.lora_merge_every) or self.stores_base()

    def merged_bases(self, model) -> set[str]:
        """The adapted base layers when training writes into them (``writes_bases``), else none."""
        return lora.base_layer_names(model) if self.writes_bases() else set()

    def save(self, model, tokenizer, out):
        lora.save_adapters(model, out / "adapter")
        super().save(lora.merged_base_model(model), tokenizer, out)

    def summary(self, callbacks):
        cb = callbacks.get("partial_merges")
        return {"partial_merges": cb.history} if cb is not None else {}


METHOD = Method(LoraMode, problems, flags=LoraFlags, model_problems=model_problems)
