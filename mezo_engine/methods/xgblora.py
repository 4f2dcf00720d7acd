"""XGBLoRA (``--xgblora``, arXiv 2410.19694): rank-``--xgblora_rank`` LoRA boosters trained for kappa steps (or
epochs), merged into the base weights and started afresh, optionally on ``--xgblora_num_layers`` blocks drawn per
iteration. Its flags, checks and mode, the boosting callback and the schedules only boosting uses."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from mezo_engine import lora
from mezo_engine.methods.ft import Method, ModeError
from mezo_engine.methods.lora import LoraMode, checked_merge, merge_due

# The shell drivers' entry for this method: read by mezo_engine/registry.py (which documents the keys), not imported.
DRIVER = {"flag": "xgblora", "defaults": "adapter",
          "driver_args": ["--xgblora_rank", "{XGBLORA_RANK:1}", "--lora_alpha", "{LORA_ALPHA:16}",
                          "--xgblora_steps_per_iteration", "{XGBLORA_STEPS:1000}",
                          "--xgblora_num_layers", "{XGBLORA_LAYERS:0}"],
          "tag": "xgblora-k{XGBLORA_STEPS:1000}", "untrained": "an adapter changes nothing until it is trained"}

logger = logging.getLogger(__name__)


@dataclass
class XGBLoraFlags:
    xgblora: bool = field(default=False, metadata={"help": "XGBLoRA: gradient-boosted rank-1 LoRA boosters."})
    xgblora_rank: int = field(default=1, metadata={"help": "Rank of each booster."})
    xgblora_steps_per_iteration: int = field(default=0, metadata={
        "help": "kappa: optimizer steps per booster before it is merged (0: merge every --xgblora_merge_frequency epochs)."})
    xgblora_merge_frequency: int = field(default=1, metadata={"help": "Epochs between merges when kappa is 0."})
    xgblora_num_layers: int = field(default=0, metadata={"help": "Ls: blocks drawn per iteration (0: all blocks)."})
    xgblora_merge_scale: float = field(default=1.0, metadata={"help": "eta: W <- W + eta * (alpha/r) * B A at each merge."})
    xgblora_restart_warmup_steps: int = field(default=0, metadata={
        "help": "Regular training: linear LR warm-up after each merge (ReLoRA's jagged schedule; 0: off)."})


def problems(args):
    """Yield one message per bad XGBLoRA flag value."""
    for flag in ("xgblora_rank", "xgblora_merge_frequency"):
        if getattr(args, flag) < 1:
            yield f"--{flag} {getattr(args, flag)}: must be >= 1"
    for flag in ("xgblora_steps_per_iteration", "xgblora_num_layers", "xgblora_restart_warmup_steps"):
        if getattr(args, flag) < 0:
            yield f"--{flag} {getattr(args, flag)}: must be >= 0"
    if args.load_int8 and args.xgblora and torch.cuda.is_available():
        yield ("--load_int8 with --xgblora on CUDA: merges write into the base weights, which bitsandbytes keeps "
               "8-bit (on the CPU the merged layers stay float32)")
    if args.lora and args.xgblora:
        yield "--lora and --xgblora: choose one (--xgblora trains rank --xgblora_rank boosters)"
    if not args.xgblora_merge_scale > 0:
        yield f"--xgblora_merge_scale {args.xgblora_merge_scale}: must be > 0"
    if args.lora_init == "lora_ga" and args.xgblora and args.xgblora_merge_scale != 1.0:
        yield (f"--xgblora_merge_scale {args.xgblora_merge_scale} with --lora_init lora_ga: a LoRA-GA booster "
               "starts non-zero, so only eta = 1 merges it without a jump; use 1.0")
    yield from _restart_problems(args)
    if (args.trainer == "regular" and args.xgblora and args.xgblora_num_layers
            and args.ddp_find_unused_parameters is False):
        yield (f"--ddp_find_unused_parameters False with --xgblora_num_layers {args.xgblora_num_layers}: the "
               f"boosters of the blocks not drawn are frozen and get no gradient, which DDP must look for; "
               f"drop the flag (or set it True)")


def model_problems(args, config):
    """The XGBLoRA flags against the model's config, before it loads: ``--xgblora_num_layers`` within its blocks."""
    blocks = getattr(config, "num_hidden_layers", None)
    chosen = lora.parse_blocks(args.lora_layers) if args.xgblora else None
    if chosen is not None:
        blocks = chosen[1] - chosen[0] + 1
        where = f"the {blocks} blocks of --lora_layers {args.lora_layers}"
    else:
        where = f"this model's {blocks} blocks"
    if args.xgblora and isinstance(blocks, int) and args.xgblora_num_layers > blocks:
        yield f"--xgblora_num_layers {args.xgblora_num_layers}: larger than {where}"


def _restart_problems(args):
    if args.xgblora_restart_warmup_steps and args.trainer != "regular":
        yield f"--xgblora_restart_warmup_steps {args.xgblora_restart_warmup_steps}: only for --trainer regular"
    if args.xgblora_restart_warmup_steps and not (args.xgblora and args.xgblora_steps_per_iteration):
        yield "--xgblora_restart_warmup_steps: needs --xgblora with --xgblora_steps_per_iteration > 0"


def resolve(args) -> None:
    """Derived settings: DDP must expect no gradient for the boosters of blocks not drawn (regular training)."""
    if args.trainer == "regular" and args.xgblora and args.xgblora_num_layers:
        args.ddp_find_unused_parameters = True


# ---- schedules ---------------------------------------------------------------------------------------------------
def epoch_merge_due(epoch: int, frequency: int) -> bool:
    """Epoch-based boosting: merge after ``epoch`` (1-based count of finished epochs) every ``frequency`` epochs."""
    return frequency > 0 and epoch > 0 and epoch % frequency == 0


def num_merges(max_steps: int, kappa: int) -> int:
    """Merges during a step-based run of ``max_steps`` steps: floor(max_steps / kappa), none at step 0."""
    return max_steps // kappa if kappa > 0 else 0


def jagged_factor(step: int, kappa: int, warmup: int) -> float:
    """ReLoRA's jagged schedule: after each merge (every kappa steps) the LR warms up again over ``warmup`` steps.

    ``step`` is the 0-based index of the optimizer step about to run; the first iteration keeps the base schedule.
    """
    if warmup <= 0 or kappa <= 0 or step < kappa:
        return 1.0
    return min(1.0, (step % kappa + 1) / warmup)


# ---- the callback ------------------------------------------------------------------------------------------------
def reset_optimizer_state(optimizer, params) -> None:
    """Zero the optimizer state (Adam moments, step count) of ``params``, keyed by the Parameter objects."""
    if optimizer is None:
        return
    state = optimizer.state
    for p in params:
        for value in state.get(p, {}).values():
            if torch.is_tensor(value):
                value.zero_()


def active_lora_layers(model) -> list[str]:
    """Names of the LoRA layers whose booster trains in the current iteration."""
    return [name for name, layer in lora.lora_layers(model) if any(p.requires_grad for p in layer.parameters())]


class BoostingCallback(TrainerCallback):
    """XGBLoRA's schedule: merge the boosters into the base weights and start fresh ones.

    Step-based (kappa > 0): after every kappa optimizer steps. Epoch-based (kappa == 0): every ``frequency``
    epochs. With ``num_layers`` > 0 each iteration trains the boosters of that many blocks, drawn with a generator
    seeded from the run seed; the others are frozen and stay zero.
    """

    def __init__(self, kappa: int, frequency: int = 1, scale: float = 1.0, num_layers: int = 0, seed: int = 0,
                 grad_estimator: Callable | None = None, warn_ratio: float = lora.MERGE_WARN_RATIO,
                 on_merge: Callable[[lora.MergeReport], None] | None = None):
        self.kappa, self.frequency, self.scale, self.num_layers = kappa, frequency, scale, num_layers
        self.generator = torch.Generator().manual_seed(seed)
        self.grad_estimator = grad_estimator  # (model, layer names) -> {name: gradient}; for --lora_init lora_ga
        self.warn_ratio, self.on_merge = warn_ratio, on_merge  # on_merge: e.g. the checkpoint's merge record
        self.history: list[dict] = []
        self.blocks: list[int] | None = None
        self._resumed = False

    def state_dict(self) -> dict:
        return {"history": self.history, "generator": self.generator.get_state(), "blocks": self.blocks}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next on_train_begin re-activates the saved blocks instead of drawing new boosters."""
        self.history, self.blocks = list(state["history"]), state["blocks"]
        self.generator.set_state(state["generator"])
        self._resumed = True

    def log_row(self) -> dict[str, float]:
        """What the logged rows carry (``MezoTrainer.log``): merges so far and the last one's |dW|."""
        return lora.merges_row(self.history)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self._resumed:  # the adapter was loaded from the checkpoint; only which blocks train is restored here
            lora.set_active_blocks(model, self.blocks)
            return
        self._select_blocks(model)
        if self.grad_estimator is not None:
            lora.lora_ga_reinit_(model, self.grad_estimator(model, active_lora_layers(model)), generator=self.generator)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if merge_due(state.global_step, self.kappa):
            self.boost(model, optimizer, state.global_step)

    def on_epoch_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.kappa == 0 and epoch_merge_due(round(state.epoch), self.frequency):
            self.boost(model, optimizer, state.global_step)

    def boost(self, model, optimizer, step: int) -> None:
        """Merge every booster, start fresh ones on the next blocks, reset their optimizer state."""
        report = checked_merge(step, lambda: lora.merge_and_reinit(
            model, scale=self.scale, generator=self.generator, reinit=self.grad_estimator is None,
            warn_ratio=self.warn_ratio), self.on_merge)
        self._select_blocks(model)
        if self.grad_estimator is not None:  # LoRA-GA: each booster starts on the top directions of the gradient
            lora.lora_ga_reinit_(model, self.grad_estimator(model, active_lora_layers(model)), generator=self.generator)
        reset_optimizer_state(optimizer, lora.trainable_lora_parameters(model, include_frozen=True))
        self.history.append({"iteration": len(self.history) + 1, "step": step,
                             "modules": report.num_modules, "delta_norm": report.delta_norm})
        logger.info("boosting iteration %d: merged %d modules, |dW| = %.4g at step %d",
                    len(self.history), report.num_modules, report.delta_norm, step)

    def _select_blocks(self, model) -> None:
        if self.num_layers:
            self.blocks = lora.select_booster_layers(lora.num_blocks(model), self.num_layers, self.generator)
            lora.set_active_blocks(model, self.blocks)


# ---- the mode ----------------------------------------------------------------------------------------------------
class XGBLoraMode(LoraMode):
    """XGBLoRA (``--xgblora``): rank-``--xgblora_rank`` LoRA boosters merged into the base weights every kappa
    steps (or epochs) and started afresh, optionally on ``--xgblora_num_layers`` blocks drawn per iteration."""

    name = "xgblora"
    frozen_base = False  # merges write into the base weights

    @property
    def rank(self) -> int:
        return self.args.xgblora_rank

    def prepare(self, model, objective=None, batches=None):
        model = super().prepare(model, objective, batches)
        blocks = lora.num_blocks(model)
        if self.args.xgblora_num_layers > blocks:
            raise ModeError(f"--xgblora_num_layers {self.args.xgblora_num_layers}: larger than the {blocks} blocks "
                            f"this model's boosters cover")
        return model

    def _initialise(self, model) -> None:
        pass  # the boosting callback initialises every booster (the first included) on its blocks

    def writes_bases(self) -> bool:
        return True  # every merge adds its boosters into the base weights

    def lr_factor(self):
        """``--xgblora_restart_warmup_steps``: ReLoRA's warm-up after each merge (``jagged_factor``)."""
        warmup, kappa = self.args.xgblora_restart_warmup_steps, self.args.xgblora_steps_per_iteration
        return (lambda step: jagged_factor(step, kappa, warmup)) if warmup else None

    def callbacks(self, record):
        a = self.args
        return {"boosting": BoostingCallback(a.xgblora_steps_per_iteration, a.xgblora_merge_frequency,
                                             a.xgblora_merge_scale, a.xgblora_num_layers, a.seed,
                                             self.gradient_estimator, a.merge_warn_ratio, record)}

    def summary(self, callbacks):
        cb = callbacks["boosting"]
        return {"boosting": {"num_merges": len(cb.history), "merges": cb.history}}


METHOD = Method(XGBLoraMode, problems, resolve, flags=XGBLoraFlags, model_problems=model_problems)
