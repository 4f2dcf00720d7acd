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
  forward hooks form each ``W + eps z`` as its module runs, so only the update writes the weights. The forwards
  of a step share what lies below the lowest perturbed block (``activation_reuse``, ``--zo_reuse_activations``).
  For ``regular``, the Trainer's own step.
* ``create_optimizer``: zo gets the ZO optimizer of ``--zo_optimizer`` (``zo_methods``: SGD, momentum, Adam, ...)
  over every parameter that may train (frozen boosters included), in model order, weight decay on those the
  Trainer decays (``--zo_weight_decay_all``: on all, as upstream's medium models); its LR comes from
  ``param_groups``, so the Trainer's scheduler drives it, and its state goes into the Trainer's checkpoint. Regular
  training covers the mode's parameters (``methods.Mode.optimizer_parameters``: for LoRA/XGBLoRA every adapter
  parameter, also those of boosters frozen in the current iteration, and what the app trains beside them).
* ``create_scheduler``: the mode's LR factor, if any (XGBLoRA: ReLoRA-style LR restart after each merge).
* ``evaluate``: the task metric on the dev samples, not the eval loss: the ``evaluator(model) -> {metric: value}``
  the app hands the trainer (``large_models``: ``pipeline.dev_evaluator``, candidate scoring / generation, under
  torchrun each rank scoring its share of the samples, gathered by ``evaluation.evaluate_sharded`` so that every
  rank sees the same metric; ``medium_models``: label words at the mask).

The trainer knows no method: it asks the run's mode (``methods``) what a zo forward runs inside (adapters folded),
whether the step keeps a copy of the trainable parameters and which parameters its optimizer covers, and the ZO
method (``zo_methods``) for the step itself.

Data-parallel (``torchrun --nproc_per_node N``): each rank gets ``--per_device_train_batch_size`` examples of the
global batch from the Trainer's sharded data loader. For zo the loss closure averages the ranks' losses weighted
by what each is a mean over (``objectives.batch_weight``, ``distributed.weighted_mean``): every rank sees the loss
of the global batch, takes the same projected gradient and, from the shared step seed, the same update. The
Trainer still wraps the model in DDP (accelerate wraps a model with trainable parameters): that costs one broadcast of
the parameters when training starts and DDP's gradient buckets (memory the size of the trainable parameters),
but the zo step runs the unwrapped model, so no DDP hook or buffer broadcast runs in a step. ``--trainer
regular`` uses the Trainer's own DDP.

Every step checks its loss (and for zo the projected gradients) and raises ``DivergenceError`` naming the step
when one is NaN or inf; merges refuse a non-finite delta the same way. A blow-up that stays finite (a loss far
above its first logged value, a zo projected gradient stuck at exactly 0, a regular grad norm far above its first)
is read from each logged entry by ``DivergenceCallback`` (``divergence.Watch``) and stops the run the same way.

Boosting, partial merges (the modes' own, ``methods/xgblora.py`` and ``methods/lora.py``) and best-model tracking
are callbacks (``on_step_end``, ``on_epoch_end``, ``on_evaluate``, ``on_train_end``), so merges always fall between
two steps. Each has ``state_dict`` / ``load_state_dict`` for checkpoints (``checkpoint.RunStateCallback``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import IntervalStrategy

from mezo_engine import batched_queries, distributed, divergence, methods, zo
from mezo_engine.activation_reuse import ActivationReuse, NoReuse
from mezo_engine.batched_queries import StepLosses
from mezo_engine.errors import DivergenceError
from mezo_engine.ledger import Budget, Ledger, StepClock
from mezo_engine.objectives import Objective, batch_weight
from mezo_engine.zo_methods import ZOOptimizer, make_zo_optimizer
from mezo_engine.zo_methods.spsa import num_samples

logger = logging.getLogger(__name__)


def check_finite(step: int, trainer: str, **values: float) -> None:
    """Raise DivergenceError naming the step and the likely cause if any of ``values`` is NaN or inf."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        cause = ("--learning_rate too large, or --zo_eps too small or too large for this dtype" if trainer == "zo"
                 else "--learning_rate too large (or no gradient clipping: --max_grad_norm)")
        shown = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise DivergenceError(step, f"{shown}; likely cause: {cause}")


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


def zo_named_parameters(model: torch.nn.Module, mode=None) -> list[tuple[str, torch.nn.Parameter]]:
    """What the ZO optimizer holds, in model order: the trainable parameters and those ``mode`` (``methods.Mode``)
    may train later (``optimizer_parameters``: XGBLoRA's frozen boosters)."""
    may_train = {id(p) for p in mode.optimizer_parameters(model)} if mode is not None else set()
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad or id(p) in may_train]


def zo_optimizer(optimizer) -> ZOOptimizer:
    """The ZO optimizer itself (accelerate hands the Trainer a wrapper holding it as ``.optimizer``)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, ZOOptimizer):
        raise TypeError(f"--trainer zo needs a ZO optimizer (zo_methods/), got {type(inner).__name__}")
    return inner


class MezoTrainer(Trainer):
    """Trainer for ``--trainer zo`` and ``--trainer regular``; see the module docstring."""

    def __init__(self, *args, objective: Objective, evaluator: Callable[[torch.nn.Module], dict[str, float]] | None,
                 mode=None, comm: distributed.CommCounter | None = None, ledger: Ledger | None = None,
                 stall: distributed.StallGuard | None = None, **kwargs):
        """``objective(model, batch) -> loss``: the training loss; ``evaluator(model) -> {metric: value}``: the dev
        evaluation (None: the run has no dev set, ``evaluate`` returns nothing). Both come from the app, which
        knows its prompts and flags; the trainer builds neither. ``mode``: the run's ``methods.Mode`` (which
        parameters the regular optimizer covers); ``comm``: counts the bytes of the zo loss all-reduces across
        ranks; ``ledger``: where the steps' forwards and backwards are counted (``LedgerCallback`` times the
        steps and checks the budgets with the same one); ``stall``: bounds the all-reduces' waits
        (``distributed.StallGuard``, armed by ``StallCallback``)."""
        super().__init__(*args, **kwargs)
        self.objective, self.evaluator = objective, evaluator
        self.ledger = ledger if ledger is not None else Ledger()
        self.comm = comm if comm is not None else distributed.CommCounter()
        self.stall = stall if stall is not None else distributed.StallGuard()
        self.mode = mode
        if self.data_collator is not None:
            self.data_collator = TimedCollator(self.data_collator, self.ledger)
        self._total: int | None = None
        self._activation_reuse: ActivationReuse | NoReuse | None = None
        self._projected: list[float] = []  # |projected gradient| of the zo steps since the last logged loss
        self._last_logged = (0, 0.0)  # (step, ledger's training seconds) at the last logged loss

    # ---- loss --------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The Trainer's override point for the loss: ``self.objective`` on the batch (no model outputs)."""
        loss = self.objective(model, inputs)
        return (loss, None) if return_outputs else loss

    # ---- one step ----------------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        step = self.state.global_step + 1
        if self.args.trainer != "zo":
            started = time.perf_counter()
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.ledger.forward_s += time.perf_counter() - started  # its forward and backward
            self.ledger.count(forwards=1, backwards=1)  # one micro-batch
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
        """The ZO method's step (``ZOOptimizer.zo_step``: one-seed ZO-SGD updates at once, the Trainer's
        ``optimizer.step()`` then finds nothing to do; the others queue the estimate for it, as a backward fills
        ``.grad``), or ``--zo_perturb out_of_place``'s. Returns the loss and the (seed, projected gradient) pairs."""
        optimizer, loss_fn = zo_optimizer(self.optimizer), self._zo_loss_fn(model, inputs)
        trainable = sum(p.numel() for p in optimizer.zo_params())
        cache = self._run_mode().caches_perturbation(trainable, self._total_params(model))
        seeds = zo.sample_seeds(self.args.seed, self.state.global_step, num_samples(
            self.args.zo_sample_scheduler, self.args.zo_num_samples, self.state.global_step, self.state.max_steps))
        self.ledger.count(forwards=optimizer.forwards_per_step(len(seeds)))
        if self.args.zo_perturb == "out_of_place":
            return optimizer.out_of_place_step(model, loss_fn, seeds, self.args.zo_eps)
        reuse = self._reuse(model)
        replays = reuse.replays
        with reuse.step(optimizer.zo_params()):
            out = optimizer.zo_step(loss_fn, seeds, self.args.zo_eps, cache)
        self.ledger.reused_forwards += reuse.replays - replays
        return out

    def _reuse(self, model) -> ActivationReuse | NoReuse:
        """The step's shared lower forward (``--zo_reuse_activations``, ``activation_reuse``), built once."""
        if self._activation_reuse is None:
            self._activation_reuse = ActivationReuse(model) if self.args.zo_reuse_activations else NoReuse()
        return self._activation_reuse

    def _zo_loss_fn(self, model, inputs) -> StepLosses:
        """One forward of the training loss as a float, in the mode's forward context (adapters folded into their
        weights, if asked). Under torchrun the loss of the global batch: the ranks' losses averaged with their
        batch weights (one all-reduce of two float64 per call; a single process skips it). A method with several
        forwards a step may take each rank's losses and average them in one all-reduce, and with LoRA on the model
        (and an objective that runs copies of a batch) query several adapter values in one forward
        (``batched_queries.StepLosses``)."""
        weight = batch_weight(self.objective, inputs) if distributed.active() else 1.0
        mode = self._run_mode()
        what = f"the zo step's all-reduce at step {self.state.global_step + 1}"

        def local() -> float:
            started = time.perf_counter()
            with torch.no_grad(), mode.forward_context(model):
                loss = self.compute_loss(model, inputs).item()
            self.ledger.forward_s += time.perf_counter() - started
            return loss

        def batched(params, deltas) -> list[float]:
            started = time.perf_counter()
            losses = batched_queries.query_losses(model, self.objective, inputs, params, deltas)
            self.ledger.forward_s += time.perf_counter() - started
            return losses

        can_batch = mode.adapter and hasattr(self.objective, "copies_loss")
        return StepLosses(local, weight, self.comm, batched if can_batch else None, self.stall, what)

    def _run_mode(self) -> methods.Mode:
        """The run's mode; a trainer built without one asks the arguments (``methods.mode_for``)."""
        if self.mode is None:
            self.mode = methods.mode_for(self.args)
        return self.mode

    def _total_params(self, model) -> int:
        """The model's parameter count: fixed for a run, computed once."""
        if self._total is None:
            self._total = sum(p.numel() for p in model.parameters())
        return self._total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's logging (and so every ``--report_to`` tracker's), plus for zo the statistics of |projected
        gradient| over the steps since the last logged loss (one value per direction): ``projected_grad_abs_mean``,
        ``_std``, ``_max``; with the loss, the training steps a second since the last logged loss
        (``steps_per_s``, on the ledger's training clock); in every row the ledger so far (``Ledger.row``:
        forwards, backwards, training wall and CPU seconds) and what callbacks with a ``log_row()`` add (merges:
        their count and the last |dW|)."""
        if "loss" in logs:
            if self._projected:
                logs = {**logs, **projected_stats(self._projected)}
                self._projected = []
            step, wall = self.state.global_step, self.ledger.train_wall_s
            if step > self._last_logged[0] and wall > self._last_logged[1]:
                logs["steps_per_s"] = (step - self._last_logged[0]) / (wall - self._last_logged[1])
            self._last_logged = (step, wall)
        extra = {k: v for cb in self.callback_handler.callbacks if hasattr(cb, "log_row")
                 for k, v in cb.log_row().items()}
        super().log({**logs, **self.ledger.row(), **extra}, start_time)

    # ---- optimizer and schedule --------------------------------------------------------------------------
    def optimizer_groups(self, model) -> list[dict] | None:
        """The parameter groups ``create_optimizer`` builds for ``model`` (None without a mode under --trainer
        regular: the Trainer's own); a resumed run checks a checkpoint's optimizer state against them."""
        decay = set(self.get_decay_parameter_names(model))
        if self.args.trainer == "zo":
            named = zo_named_parameters(model, self.mode)
            if self.args.zo_weight_decay_all:  # upstream medium_models: every trained parameter decays
                decay = {n for n, _ in named}
            return zo_param_groups(named, decay, self.args.weight_decay)
        if self.mode is None:
            return None
        params = self.mode.optimizer_parameters(model)
        names = {id(p): n for n, p in model.named_parameters()}
        groups = [{"params": [p for p in params if names[id(p)] in decay], "weight_decay": self.args.weight_decay},
                  {"params": [p for p in params if names[id(p)] not in decay], "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def create_optimizer(self, model=None):
        model = model if model is not None else self.model
        groups = self.optimizer_groups(model)
        if groups is None:
            return super().create_optimizer(model)
        if self.args.trainer == "zo":
            self.optimizer = make_zo_optimizer(self.args, groups)
            return self.optimizer
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = cls(groups, **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's schedule, times the mode's factor if it has one (XGBLoRA: an LR restart after a merge)."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        factor = self._run_mode().lr_factor()
        if factor is not None and isinstance(scheduler, LambdaLR):
            base = list(scheduler.lr_lambdas)
            self.lr_scheduler = LambdaLR(scheduler.optimizer, [lambda s, f=f: f(s) * factor(s) for f in base])
        return self.lr_scheduler

    # ---- evaluation on the dev samples -------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if self.evaluator is None:
            return {}
        started = time.perf_counter()
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.evaluator(self.model).items()}
        self.ledger.eval_s += time.perf_counter() - started
        self.ledger.dev_evaluations += 1
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class TimedCollator:
    """A data collator that adds the seconds it takes to the ledger's ``data_s``."""

    def __init__(self, collate: Callable, ledger: Ledger):
        self.collate, self.ledger = collate, ledger

    def __call__(self, features):
        started = time.perf_counter()
        batch = self.collate(features)
        self.ledger.data_s += time.perf_counter() - started
        return batch


def projected_stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, population standard deviation and maximum of ``values`` (|projected gradients|)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return {"projected_grad_abs_mean": mean, "projected_grad_abs_std": std, "projected_grad_abs_max": max(values)}


def _worst_over_ranks(loss: float) -> float:
    """``loss``, or under torchrun the first non-finite loss of any rank (so that every rank stops together)."""
    return next((v for v in distributed.gather(loss) if not math.isfinite(v)), loss)


class BestModelCallback(TrainerCallback):
    """Keep, in memory, the parameters of the best dev evaluation, and put them back when training ends.
    ``mutable(model)``: the parameters training can change (the mode's ``mutable_parameters``); ``later_ties``: an
    evaluation equal to the best takes its place (else the first best is kept, as upstream MeZO); ``keep_last``:
    before restoring, keep the last step's parameters too (``--eval_last_model``; ``swap_in_last``)."""

    def __init__(self, metric_key: str, mutable: Callable[[torch.nn.Module], dict[str, torch.nn.Parameter]],
                 greater_is_better: bool = True, later_ties: bool = True, keep_last: bool = False):
        self.metric_key, self.mutable, self.greater = metric_key, mutable, greater_is_better
        self.later_ties = later_ties  # an evaluation equal to the best replaces it (--best_dev_ties later)
        self.keep_last = keep_last
        self.best: float | None = None
        self.best_step: int | None = None
        self.last_step: int | None = None  # the step training ended at (set when training ends)
        self._snapshot: dict[str, torch.Tensor] | None = None
        self._last: dict[str, torch.Tensor] | None = None  # the last step's parameters, where they are not the best's

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "snapshot": self._snapshot}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self._snapshot = state["best"], state["best_step"], state["snapshot"]

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        value = (metrics or {}).get(self.metric_key)
        if value is None or (self.best is not None and not self._better(value)):
            return
        self.best, self.best_step = value, state.global_step
        self._snapshot = {n: p.detach().to("cpu", copy=True) for n, p in self.mutable(model).items()}

    def _better(self, value: float) -> bool:
        """Whether ``value`` replaces the best so far: strictly better, or equal with ``later_ties``."""
        if value == self.best:
            return self.later_ties
        return value > self.best if self.greater else value < self.best

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.last_step = state.global_step
        if self._snapshot is None:
            return
        params = self.mutable(model)
        if self.keep_last and self.best_step != state.global_step:
            self._last = {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
        _copy_into(params, self._snapshot)
        logger.info("restored the best dev model (%s = %.4f at step %d)", self.metric_key, self.best, self.best_step)

    @property
    def last_differs(self) -> bool:
        """Whether the last step's model is not the restored best dev model (``keep_last`` kept it)."""
        return self._last is not None

    @contextlib.contextmanager
    def swap_in_last(self, model: torch.nn.Module):
        """Within the block, ``model`` holds the last step's parameters instead of the restored best dev model's
        (nothing changes where they are the same model); the best's are put back after it."""
        if self._last is None:
            yield
            return
        params = self.mutable(model)
        _copy_into(params, self._last)
        try:
            yield
        finally:
            _copy_into(params, self._snapshot)


def _copy_into(params: dict[str, torch.nn.Parameter], values: dict[str, torch.Tensor]) -> None:
    """Copy ``values`` into the parameters of the same names (a snapshot written before plain LoRA left its
    unchanged base weights out has names ``params`` lacks: skipped)."""
    with torch.no_grad():
        for name, value in values.items():
            if name in params:
                params[name].copy_(value)


class StallCallback(TrainerCallback):
    """Arms the run's ``distributed.StallGuard`` once the ranks have met in a step, and disarms it for the waits
    that may legitimately be long: the first step (ranks load and resume at their own pace), and the step after a
    checkpoint save (rank 0 writes while the others go on) or a dev evaluation. Between a step's end and the next
    step's begin (the Trainer's gathers when it logs, the next batch) it keeps a watch (``StallGuard.watch``),
    unless that stretch holds a save, an evaluation or the end of training."""

    def __init__(self, guard: distributed.StallGuard):
        self.guard = guard

    def on_train_begin(self, args, state, control, **kwargs):
        self.guard.armed = False

    def on_step_begin(self, args, state, control, **kwargs):
        self.guard.unwatch()

    def on_step_end(self, args, state, control, **kwargs):
        self.guard.armed = True
        if not (control.should_save or control.should_evaluate or control.should_training_stop):
            self.guard.watch("the Trainer's gathers between steps")

    def on_save(self, args, state, control, **kwargs):
        self.guard.armed = False
        self.guard.unwatch()

    def on_evaluate(self, args, state, control, **kwargs):
        self.guard.armed = False
        self.guard.unwatch()

    def on_train_end(self, args, state, control, **kwargs):
        self.guard.unwatch()


class DivergenceCallback(TrainerCallback):
    """Stop a run whose logged numbers show a finite blow-up (``divergence.Watch``) with ``DivergenceError``, as
    ``check_finite`` does for NaN. A resumed run first replays its restored ``log_history``, so that it keeps the
    first logged loss and grad norm of the run as its base values."""

    def __init__(self, limits: divergence.Limits):
        self.limits = limits
        self.watch = divergence.Watch(limits)

    def on_train_begin(self, args, state, control, **kwargs):
        self.watch = divergence.Watch(self.limits)
        for entry in state.log_history:
            self.watch.observe(entry, entry["step"])

    def on_log(self, args, state, control, logs=None, **kwargs):
        reason = self.watch.observe(logs or {}, state.global_step)
        if reason:
            raise DivergenceError(state.global_step, reason)


class LedgerCallback(TrainerCallback):
    """Keeps the run's ``ledger.Ledger`` (the trainer counts the passes into the same one): times each training
    step from its start to its end (after the callbacks before this one, so merges are in and evaluation, logging
    and saving are out), and stops the run after the first step at which ``budget`` is reached, before
    ``--max_steps``, as the Trainer ends a run at ``--max_steps``: a dev evaluation there with a step-based eval
    strategy (so the log has the dev metric at the budget), and a checkpoint whatever ``--save_strategy`` says (so a
    larger budget continues from it). ``reached`` is then ``(flag, step)``. Stateful (``RunStateCallback``): a resumed run
    continues the counts; a checkpoint made before the ledger existed has none, so the counts then start at its
    step (``optional_state``). Under torchrun with ``--max_time`` the ranks agree after every step (one float64,
    counted in ``comm``, its wait bounded by ``stall``), as their clocks differ; the forward count is the same on
    every rank."""

    optional_state = True

    def __init__(self, budget: Budget, ledger: Ledger | None = None, comm: distributed.CommCounter | None = None,
                 stall: distributed.StallGuard | None = None):
        self.budget, self.comm, self.stall = budget, comm, stall
        self.ledger = ledger if ledger is not None else Ledger()
        self.clock = StepClock()
        self.reached: tuple[str, int] | None = None
        self.forwards_before = 0
        self.forward_s_before = 0.0
        self.before_last_step: Ledger | None = None  # the counts at the last step's start (checkpoints keep them)
        self._loop = self._gap = self._save_from = None  # perf_counter marks; _gap: (time, eval_s, checkpoint_s)

    def on_train_begin(self, args, state, control, **kwargs):
        self.ledger.processes += 1
        self._loop = time.perf_counter()
        self._gap = (self._loop, self.ledger.eval_s, self.ledger.checkpoint_s)  # the first batch is between too

    def on_step_begin(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._gap is not None:  # since the last step's end, less what evaluation and saving took
            at, eval_s, checkpoint_s = self._gap
            self.ledger.between_steps_s += (now - at) - (self.ledger.eval_s - eval_s) - (
                self.ledger.checkpoint_s - checkpoint_s)
        self.clock.start()
        self.forwards_before, self.forward_s_before = self.ledger.forwards, self.ledger.forward_s
        self.before_last_step = Ledger(forwards=self.ledger.forwards, train_wall_s=self.ledger.train_wall_s)

    def on_step_end(self, args, state, control, **kwargs):
        wall, cpu = self.clock.stop()
        self.ledger.add_time(wall, cpu)
        self.ledger.step_other_s += wall - (self.ledger.forward_s - self.forward_s_before)
        self._tick()
        self._gap = (self._save_from, self.ledger.eval_s, self.ledger.checkpoint_s)
        if forwards_pass_multiple(self.forwards_before, self.ledger.forwards, args.eval_forwards):
            control.should_evaluate = True
        if self.reached is not None or state.global_step >= state.max_steps:
            return  # at max_steps the run ends as completed
        flag = self._agreed(self.budget.reached_by(self.ledger))
        if flag:
            control.should_training_stop = control.should_save = True
            control.should_evaluate = control.should_evaluate or evaluates_at(args, state.global_step)
            self.reached = (flag, state.global_step)
            logger.info("budget reached after step %d: %s", state.global_step, self.budget.spent(self.ledger, flag))

    def on_evaluate(self, args, state, control, **kwargs):
        self._save_from = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
        """The checkpoint just written took the time since the step's end or the evaluation after it."""
        if self._save_from is not None:
            self.ledger.checkpoint_s += time.perf_counter() - self._save_from
        self._tick()

    def on_train_end(self, args, state, control, **kwargs):
        self._tick()

    def _tick(self) -> None:
        """Add the loop's wall-clock since the last tick, and mark now."""
        now = time.perf_counter()
        if self._loop is not None:
            self.ledger.loop_wall_s += now - self._loop
        self._loop = self._save_from = now

    def _agreed(self, flag: str | None) -> str | None:
        """``flag``, or under torchrun with a time budget ``max_time`` when any rank's clock reached it."""
        if not (self.budget.max_time and distributed.active()):
            return flag
        anywhere = distributed.max_over_ranks(float(flag is not None), self.comm, self.stall,
                                              "the ranks' agreement on --max_time")
        return flag or ("max_time" if anywhere else None)

    def state_dict(self) -> dict:
        before = self.before_last_step
        last = {"forwards": before.forwards, "train_wall_s": before.train_wall_s} if before else None
        return {**self.ledger.state_dict(), "before_last_step": last}

    def load_state_dict(self, state: dict) -> None:
        self.ledger.load_state_dict(state)
        last = state.get("before_last_step")  # absent from checkpoints made before it was kept
        self.before_last_step = Ledger.from_record(last) if last is not None else None

    def budget_at_restore(self) -> str:
        """Where the restored ledger stands against this run's budget: ``"open"`` (not reached: training goes on),
        ``"stopped"`` (first reached by the checkpoint's last step, where this budget stops the run: its training
        is over) or ``"past"`` (reached before that step, by a run with a larger budget; or not known, in a
        checkpoint made before the ledger kept where its last step began)."""
        if not self.budget.reached_by(self.ledger):
            return "open"
        before = self.before_last_step
        return "stopped" if before is not None and self.budget.stopped_at(before, self.ledger) else "past"


def forwards_pass_multiple(before: int, after: int, every: int) -> bool:
    """Whether the forwards went past a multiple of ``every`` (0: never) in a step from ``before`` to ``after``."""
    return bool(every) and before // every < after // every


def evaluates_at(args, step: int) -> bool:
    """Whether a run that ends after ``step`` evaluates on dev there (as the Trainer's last step does: a step-based
    eval strategy, past ``--eval_delay``)."""
    return args.eval_strategy == IntervalStrategy.STEPS and args.eval_delay <= step
