"""`transformers.Trainer` for MeZO and regular training, connected only through documented override points.

* ``compute_loss``: the objective the app gave the trainer (``large_models``: ``pipeline.objective_for``, the
  candidate-classification or answer-token LM loss, or with ``--non_diff`` minus the F1 of generated answers;
  ``medium_models``: the label words' loss at the mask).
* ``training_step``: for ``--trainer zo`` the zeroth-order step: perturb, two forwards per direction, restore; no
  backward, no gradients. One-seed ZO-SGD (the default) updates in the same pass (``ZOSGD.fused_step``); otherwise
  the (seed, projected gradient) pairs of ``zo.estimate`` are handed to the optimizer (``add_estimate``) and the
  Trainer's own loop applies them with ``optimizer.step()``, as after a backward. n-SPSA
  (``--zo_num_samples``, ``--zo_sample_scheduler``) draws several directions, seeded from the step's seed.
  ``--zo_perturb out_of_place`` (full-parameter ZO-SGD, one direction): ``zo_out_of_place.fused_sgd_step``, whose
  forward hooks form each ``W + eps z`` as its module runs, so only the update writes the weights.
  For ``regular``, the Trainer's own step.
* ``create_optimizer``: zo gets the ZO optimizer of ``--zo_optimizer`` (``zo_optim``: SGD, momentum, Adam) over
  every parameter that may train (frozen boosters included), in model order; its LR comes from ``param_groups``,
  so the Trainer's scheduler drives it, and its state goes into the Trainer's checkpoint. Regular training covers
  the mode's parameters (``modes.Mode.optimizer_parameters``: for LoRA/XGBLoRA every adapter parameter, also those
  of boosters frozen in the current iteration).
* ``create_scheduler``: optional ReLoRA-style LR restart after each merge.
* ``evaluate``: the task metric on the dev samples, not the eval loss: the ``evaluator(model) -> {metric: value}``
  the app hands the trainer (``large_models``: ``pipeline.dev_evaluator``, candidate scoring / generation, under
  torchrun each rank scoring its share of the samples, gathered by ``evaluation.evaluate_sharded`` so that every
  rank sees the same metric; ``medium_models``: label words at the mask).

Data-parallel (``torchrun --nproc_per_node N``): each rank gets ``--per_device_train_batch_size`` examples of the
global batch from the Trainer's sharded data loader. For zo the loss closure averages the ranks' losses weighted
by what each is a mean over (``objectives.batch_weight``, ``distributed.weighted_mean``): every rank sees the loss
of the global batch, takes the same projected gradient and, from the shared step seed, the same update. The
Trainer still wraps the model in DDP (accelerate wraps a model with trainable parameters): that costs one broadcast of
the parameters when training starts and DDP's gradient buckets (memory the size of the trainable parameters),
but the zo step runs the unwrapped model, so no DDP hook or buffer broadcast runs in a step. ``--trainer
regular`` uses the Trainer's own DDP.

Every step checks its loss (and for zo the projected gradients) and raises ``DivergenceError`` naming the step
when one is NaN or inf; merges refuse a non-finite delta the same way.

Boosting, partial merges and best-model tracking are callbacks (``on_step_end``, ``on_epoch_end``,
``on_evaluate``, ``on_train_end``), so merges always fall between two steps. Each has ``state_dict`` /
``load_state_dict`` for checkpoints (``checkpoint.RunStateCallback``).
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback

from mezo_engine import distributed, lora, zo, zo_out_of_place
from mezo_engine.objectives import Objective, batch_weight
from mezo_engine.schedule import epoch_merge_due, jagged_factor, merge_due, num_samples
from mezo_engine.zo_optim import ZOSGD, ZOAdam, ZOOptimizer, ZOSGDMomentum

logger = logging.getLogger(__name__)


class DivergenceError(ArithmeticError):
    """Training produced a non-finite loss, projected gradient or merge; ``step`` is the 1-based step."""

    def __init__(self, step: int, message: str):
        super().__init__(f"diverged at step {step}: {message}")
        self.step = step


def check_finite(step: int, trainer: str, **values: float) -> None:
    """Raise DivergenceError naming the step and the likely cause if any of ``values`` is NaN or inf."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        cause = ("--learning_rate too large, or --zo_eps too small or too large for this dtype" if trainer == "zo"
                 else "--learning_rate too large (or no gradient clipping: --max_grad_norm)")
        shown = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise DivergenceError(step, f"{shown}; likely cause: {cause}")


# Trainable sets up to this fraction of the model keep z and the original values for an exact restore.
CACHE_FRACTION = 0.1


def zo_param_groups(named: Sequence[tuple[str, torch.nn.Parameter]], decay_names: set[str],
                    weight_decay: float) -> list[dict]:
    """The ZO optimizer's groups: runs of consecutive parameters with the same weight decay, in model order.

    z is drawn over the optimizer's parameters in their order; keeping the model's order (rather than one group of
    decayed and one of undecayed parameters) keeps every seed's z what ``zo.zo_step`` over the model draws. Without
    weight decay this is one group.
    """
    groups: list[dict] = []
    for name, p in named:
        wd = weight_decay if name in decay_names else 0.0
        if groups and groups[-1]["weight_decay"] == wd:
            groups[-1]["params"].append(p)
        else:
            groups.append({"params": [p], "weight_decay": wd})
    return groups


def make_zo_optimizer(args, groups: list[dict]) -> ZOOptimizer:
    """``--zo_optimizer``: ZOSGD, ZOSGDMomentum (``--zo_momentum``) or ZOAdam (the Trainer's Adam betas and eps)."""
    if args.zo_optimizer == "adam":
        return ZOAdam(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    if args.zo_optimizer == "momentum":
        return ZOSGDMomentum(groups, lr=args.learning_rate, momentum=args.zo_momentum)
    return ZOSGD(groups, lr=args.learning_rate)


def zo_optimizer(optimizer) -> ZOOptimizer:
    """The ZO optimizer itself (accelerate hands the Trainer a wrapper holding it as ``.optimizer``)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, ZOOptimizer):
        raise TypeError(f"--trainer zo needs a ZO optimizer (zo_optim.py), got {type(inner).__name__}")
    return inner


def _estimate_with_loss(params, loss_fn, seeds, eps: float, cache: bool) -> tuple[float, list[tuple[int, float]]]:
    """``zo.estimate`` and the mean loss at +eps over its directions (one direction: that loss)."""
    losses: list[float] = []

    def recorded() -> float:
        losses.append(loss_fn())
        return losses[-1]

    pairs = zo.estimate(params, recorded, seeds, eps, cache)
    at_plus = losses[0::2]  # the estimate calls loss_fn at +eps, then at -eps, seed after seed
    return sum(at_plus) / len(at_plus), pairs


def _out_of_place_step(model, optimizer, loss_fn, seeds: Sequence[int], eps: float) -> zo.StepResult:
    """``--zo_perturb out_of_place``: the one-seed ZO-SGD step with the weights written only in the update."""
    if not isinstance(optimizer, ZOSGD) or len(seeds) != 1:
        raise ValueError(f"--zo_perturb out_of_place: needs --zo_optimizer sgd and one direction per step (got "
                         f"{type(optimizer).__name__}, {len(seeds)} directions)")
    return zo_out_of_place.fused_sgd_step(model, optimizer.zo_params(), loss_fn, seeds[0], eps, optimizer.rates())


class MezoTrainer(Trainer):
    """Trainer for ``--trainer zo`` and ``--trainer regular``; see the module docstring."""

    def __init__(self, *args, objective: Objective, evaluator: Callable[[torch.nn.Module], dict[str, float]] | None,
                 mode=None, comm: distributed.CommCounter | None = None, **kwargs):
        """``objective(model, batch) -> loss``: the training loss; ``evaluator(model) -> {metric: value}``: the dev
        evaluation (None: the run has no dev set, ``evaluate`` returns nothing). Both come from the app, which
        knows its prompts and flags; the trainer builds neither. ``mode``: the run's ``modes.Mode`` (which
        parameters the regular optimizer covers); ``comm``: counts the bytes of the zo loss all-reduces across
        ranks."""
        super().__init__(*args, **kwargs)
        self.objective, self.evaluator = objective, evaluator
        self.comm = comm if comm is not None else distributed.CommCounter()
        self.mode = mode
        self._total: int | None = None
        self._projected: list[float] = []  # |projected gradient| of the zo steps since the last logged loss

    # ---- loss --------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The Trainer's override point for the loss: ``self.objective`` on the batch (no model outputs)."""
        loss = self.objective(model, inputs)
        return (loss, None) if return_outputs else loss

    # ---- one step ----------------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        step = self.state.global_step + 1
        if self.args.trainer != "zo":
            loss = super().training_step(model, inputs, num_items_in_batch)
            # under torchrun the first non-finite loss of any rank: every rank stops at the same step
            check_finite(step, "regular", loss=_worst_over_ranks(float(loss)))
            return loss
        model = self.accelerator.unwrap_model(model)  # never through a DDP wrapper: no hooks, no broadcasts
        if any(m.training for m in model.modules()):  # the forwards must see the same network: no dropout
            model.eval()  # (checking first is cheaper than walking the model to set what is set already)
        loss, pairs = self._zo_step(model, self._prepare_inputs(inputs))
        check_finite(step, "zo", loss=loss,
                     projected_gradient=next((g for _, g in pairs if not math.isfinite(g)), pairs[0][1]))
        self._projected.extend(abs(g) for _, g in pairs)
        return torch.tensor(loss, device=self.args.device)

    def _zo_step(self, model, inputs) -> tuple[float, list[tuple[int, float]]]:
        """One-seed ZO-SGD: the fused step (the Trainer's ``optimizer.step()`` then finds nothing to do). Otherwise
        the estimate, queued for that ``optimizer.step()`` as a backward fills ``.grad``. Returns the loss and the
        (seed, projected gradient) pairs."""
        optimizer, loss_fn = zo_optimizer(self.optimizer), self._zo_loss_fn(model, inputs)
        params = optimizer.zo_params()
        cache = sum(p.numel() for p in params) <= CACHE_FRACTION * self._total_params(model)
        seeds = zo.sample_seeds(self.args.seed, self.state.global_step, num_samples(
            self.args.zo_sample_scheduler, self.args.zo_num_samples, self.state.global_step, self.state.max_steps))
        if self.args.zo_perturb == "out_of_place":
            result = _out_of_place_step(model, optimizer, loss_fn, seeds, self.args.zo_eps)
            return result.loss, [(result.seed, result.projected_grad)]
        if isinstance(optimizer, ZOSGD) and len(seeds) == 1:
            result = optimizer.fused_step(loss_fn, seeds[0], self.args.zo_eps, cache)
            return result.loss, [(result.seed, result.projected_grad)]
        loss, pairs = _estimate_with_loss(params, loss_fn, seeds, self.args.zo_eps, cache)
        optimizer.add_estimate(pairs)
        return loss, pairs

    def _zo_loss_fn(self, model, inputs) -> Callable[[], float]:
        """One forward of the training loss as a float, adapters folded into their weights if asked. Under torchrun
        the loss of the global batch: the ranks' losses averaged with their batch weights (one all-reduce of two
        float64 per call; a single process skips it)."""
        weight = batch_weight(self.objective, inputs) if distributed.active() else 1.0

        def loss_fn() -> float:
            fold = lora.folded_adapters(model) if self.args.zo_fold_adapters else contextlib.nullcontext()
            with torch.no_grad(), fold:
                local = self.compute_loss(model, inputs).item()
            return distributed.weighted_mean(local, weight, self.comm)
        return loss_fn

    def _total_params(self, model) -> int:
        """The model's parameter count: fixed for a run, computed once."""
        if self._total is None:
            self._total = sum(p.numel() for p in model.parameters())
        return self._total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's logging, plus for zo the statistics of |projected gradient| over the steps since the last
        logged loss (one value per direction): ``projected_grad_abs_mean``, ``_std``, ``_max``."""
        if "loss" in logs and self._projected:
            logs = {**logs, **projected_stats(self._projected)}
            self._projected = []
        super().log(logs, start_time)

    # ---- optimizer and schedule --------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        model = model if model is not None else self.model
        if self.args.trainer == "zo":
            may_train = {id(p) for p in self.mode.optimizer_parameters(model)} if self.mode else set()
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or id(p) in may_train]
            groups = zo_param_groups(named, set(self.get_decay_parameter_names(model)), self.args.weight_decay)
            self.optimizer = make_zo_optimizer(self.args, groups)
            return self.optimizer
        if self.mode is None:
            return super().create_optimizer(model)
        params = self.mode.optimizer_parameters(model)
        decay = set(self.get_decay_parameter_names(model))
        names = {id(p): n for n, p in model.named_parameters()}
        groups = [{"params": [p for p in params if names[id(p)] in decay], "weight_decay": self.args.weight_decay},
                  {"params": [p for p in params if names[id(p)] not in decay], "weight_decay": 0.0}]
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = cls([g for g in groups if g["params"]], **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        warmup, kappa = self.args.xgblora_restart_warmup_steps, self.args.xgblora_steps_per_iteration
        if warmup and isinstance(scheduler, LambdaLR):
            base = list(scheduler.lr_lambdas)
            self.lr_scheduler = LambdaLR(scheduler.optimizer,
                                         [lambda s, f=f: f(s) * jagged_factor(s, kappa, warmup) for f in base])
        return self.lr_scheduler

    # ---- evaluation on the dev samples -------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if self.evaluator is None:
            return {}
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.evaluator(self.model).items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def projected_stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, population standard deviation and maximum of ``values`` (|projected gradients|)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {"projected_grad_abs_mean": mean, "projected_grad_abs_std": std, "projected_grad_abs_max": max(values)}


def _worst_over_ranks(loss: float) -> float:
    """``loss``, or under torchrun the first non-finite loss of any rank (so that every rank stops together)."""
    return next((v for v in distributed.gather(loss) if not math.isfinite(v)), loss)


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


def reset_optimizer_state(optimizer, params: Sequence[torch.nn.Parameter]) -> None:
    """Zero the optimizer state (Adam moments, step count) of ``params``, keyed by the Parameter objects."""
    if optimizer is None:
        return
    state = optimizer.state
    for p in params:
        for value in state.get(p, {}).values():
            if torch.is_tensor(value):
                value.zero_()


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


def active_lora_layers(model) -> list[str]:
    """Names of the LoRA layers whose booster trains in the current iteration."""
    return [name for name, layer in lora.lora_layers(model) if any(p.requires_grad for p in layer.parameters())]


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

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if merge_due(state.global_step, self.every):
            report = checked_merge(state.global_step, lambda: lora.partial_merge(model, self.alpha, self.warn_ratio),
                                   self.on_merge)
            self.history.append({"step": state.global_step, "modules": report.num_modules,
                                 "delta_norm": report.delta_norm})
            logger.info("partial merge at step %d: %.2f of %d modules, |dW| = %.4g",
                        state.global_step, self.alpha, report.num_modules, report.delta_norm)


def mutable_parameters(model) -> dict[str, torch.nn.Parameter]:
    """Parameters that training can change: trainable ones, every adapter, and the base weights merges touch."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad or "lora_" in name or name.endswith("base_layer.weight"):
            out[name] = p
    return out


class BestModelCallback(TrainerCallback):
    """Keep, in memory, the parameters of the best dev evaluation, and put them back when training ends."""

    def __init__(self, metric_key: str, greater_is_better: bool = True):
        self.metric_key, self.greater = metric_key, greater_is_better
        self.best: float | None = None
        self.best_step: int | None = None
        self._snapshot: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "snapshot": self._snapshot}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self._snapshot = state["best"], state["best_step"], state["snapshot"]

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        value = (metrics or {}).get(self.metric_key)
        if value is None or (self.best is not None and (value <= self.best if self.greater else value >= self.best)):
            return
        self.best, self.best_step = value, state.global_step
        self._snapshot = {n: p.detach().to("cpu", copy=True) for n, p in mutable_parameters(model).items()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._snapshot is None:
            return
        params = mutable_parameters(model)
        with torch.no_grad():
            for name, value in self._snapshot.items():
                params[name].copy_(value)
        logger.info("restored the best dev model (%s = %.4f at step %d)", self.metric_key, self.best, self.best_step)
