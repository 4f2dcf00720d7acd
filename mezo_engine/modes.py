"""One home per training mode: how it attaches to the model, which parameters train, its callbacks, how it saves
and what it adds to the result JSON.

``run.py`` asks the mode of the run (``mode_for(args)``) and never tests mode flags itself; the flags keep
MeZO's names (``--lora``, ``--xgblora``, ...) and ``Arguments.mode`` turns them into one name, validated once.

| mode      | flag         | trains                                                   | extra                               |
|-----------|--------------|----------------------------------------------------------|-------------------------------------|
| ``ft``    | (none)       | every parameter                                          |                                     |
| ``lora``  | ``--lora``   | LoRA A/B (PEFT)                                          | LoRA-GA init, partial merges        |
| ``xgblora`` | ``--xgblora`` | rank-``--xgblora_rank`` boosters, merged every kappa steps | ``BoostingCallback``             |
| ``prefix`` | ``--prefix_tuning`` | prefix keys/values of every attention layer        | real-activation init                |
| ``head``  | ``--head_tuning`` | the LM head (the tied embedding weight unless ``--untie_emb``) |                             |

``--linear_probing`` is not a mode of its own but a start: ``prepare_head`` unties the head and calls the app's
probe, which fits it and writes it into the head before training; the run's mode is then ``lp`` (the probe alone,
``--trainer none``) or ``lp-<mode>`` (training continues from it in ``<mode>``).

Each mode is a small class; the base class is full-parameter training, and a mode overrides only what differs.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback

from mezo_engine import head, lora, prefix
from mezo_engine.trainer import BoostingCallback, PartialMergeCallback

logger = logging.getLogger(__name__)


class ModeError(ValueError):
    """The mode cannot be set up on this model (e.g. no module it can adapt); names the flag and the value."""


class Mode:
    """Full-parameter training (``MODE=ft``): every parameter trains, the whole model is saved."""

    name = "ft"
    adapter = False  # LoRA layers on the model (zo folds them; regular training covers frozen boosters too)

    def __init__(self, args):
        self.args = args

    def prepare(self, model, objective: Callable | None = None, batches: list | None = None):
        """``model`` ready to train in this mode (adapters attached, only the mode's parameters trainable).
        ``objective(model, batch)`` and ``batches()`` (a few collated batches) serve gradient-based initialisation."""
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def optimizer_parameters(self, model) -> list[torch.nn.Parameter]:
        """What ``--trainer regular``'s optimizer covers."""
        return [p for p in model.parameters() if p.requires_grad]

    def callbacks(self, record: Callable) -> dict[str, TrainerCallback]:
        """The mode's stateful callbacks by name (checkpointed through their ``state_dict``); ``record`` is the
        checkpoint's merge log (``RunStateCallback.record``)."""
        return {}

    def stores_base(self) -> bool:
        """Whether a checkpoint must hold the adapted base weights themselves (they move outside merges)."""
        return False

    def save(self, model, tokenizer, out: Path) -> None:
        """Write what this mode trained under ``out`` (``out/model``: a model ``--model_name`` can load)."""
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")

    def summary(self, callbacks: dict[str, TrainerCallback]) -> dict:
        """What the mode adds to the result JSON's ``train`` section."""
        return {}


class LoraMode(Mode):
    """LoRA through PEFT (``--lora``): A/B train, the base stays frozen; optional LoRA-GA initialisation and
    SuperReLoRA-style partial merges (``--lora_merge_every``). Saves the adapter and the merged model."""

    name = "lora"
    adapter = True

    @property
    def rank(self) -> int:
        return self.args.lora_r

    def prepare(self, model, objective=None, batches=None):
        a = self.args
        try:
            model = lora.attach_lora(model, r=self.rank, alpha=a.lora_alpha, dropout=a.lora_dropout,
                                     target_modules=a.lora_target_modules)
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
        return lora.trainable_lora_parameters(model, include_frozen=True)  # frozen boosters may train later

    def callbacks(self, record):
        a = self.args
        if not a.lora_merge_every:
            return {}
        return {"partial_merges": PartialMergeCallback(a.lora_merge_every, a.lora_merge_alpha, a.merge_warn_ratio,
                                                       record)}

    def stores_base(self) -> bool:
        return self.args.lora_init == "lora_ga"  # LoRA-GA shifts the base weights inside PEFT

    def save(self, model, tokenizer, out):
        lora.save_adapters(model, out / "adapter")
        super().save(lora.merged_base_model(model), tokenizer, out)

    def summary(self, callbacks):
        cb = callbacks.get("partial_merges")
        return {"partial_merges": cb.history} if cb is not None else {}


class XGBLoraMode(LoraMode):
    """XGBLoRA (``--xgblora``): rank-``--xgblora_rank`` LoRA boosters merged into the base weights every kappa
    steps (or epochs) and started afresh, optionally on ``--xgblora_num_layers`` blocks drawn per iteration."""

    name = "xgblora"

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

    def callbacks(self, record):
        a = self.args
        return {"boosting": BoostingCallback(a.xgblora_steps_per_iteration, a.xgblora_merge_frequency,
                                             a.xgblora_merge_scale, a.xgblora_num_layers, a.seed,
                                             self.gradient_estimator, a.merge_warn_ratio, record)}

    def summary(self, callbacks):
        cb = callbacks["boosting"]
        return {"boosting": {"num_merges": len(cb.history), "merges": cb.history}}


class PrefixMode(Mode):
    """Prefix tuning (``--prefix_tuning``, ``prefix.py``): ``--num_prefix`` key/value vectors in front of every
    attention layer train, the model stays frozen; saves only the prefix (``out/prefix``)."""

    name = "prefix"

    def prepare(self, model, objective=None, batches=None):
        a = self.args
        return prefix.attach_prefix(model, a.num_prefix, reparam=not a.no_reparam,
                                    init_by_real_act=a.prefix_init_by_real_act,
                                    generator=torch.Generator().manual_seed(a.seed))

    def save(self, model, tokenizer, out):
        prefix.save_prefix(model, out / "prefix")  # the base model is unchanged; prefix.load_prefix puts it back


class HeadMode(Mode):
    """Head tuning (``--head_tuning``): only the LM head trains; a head tied to the input embeddings trains the
    shared weight (so the embeddings change too) unless ``--untie_emb`` untied it first (``head.py``)."""

    name = "head"

    def prepare(self, model, objective=None, batches=None):
        self.trainable = head.train_head_only(model)
        logger.info("head tuning: only %s train%s", ", ".join(self.trainable),
                    " (tied to the input embeddings, which change with it)" if head.is_tied(model) else "")
        return model

    def summary(self, callbacks):
        return {"trainable": self.trainable}


MODES: dict[str, type[Mode]] = {cls.name: cls for cls in (Mode, LoraMode, XGBLoraMode, PrefixMode, HeadMode)}


def mode_for(args) -> Mode:
    """The home of ``args.mode``; a run that starts from a linear probe (``lp-<mode>``) trains as ``<mode>``, and
    the probe alone (``lp``, ``--trainer none``) trains nothing after it."""
    name = args.mode
    return MODES["ft" if name == "lp" else name.removeprefix("lp-")](args)


def prepare_head(args, model, probe: Callable[[], dict] | None = None) -> dict:
    """Before any training: ``--untie_emb``, and ``--linear_probing`` (which unties first: the probe writes the
    label words' rows of the head, which must not move their input embeddings). ``probe()`` is the app's fit of
    the probe (``large_models.pipeline.probe``: it knows the prompts and answers); it returns the probe's summary.
    Returns what the result JSON records under ``head`` (empty when neither flag is set)."""
    summary = {}
    if args.linear_probing and probe is None:
        raise ValueError("--linear_probing: this app gives no probe to fit (large_models/run.py does)")
    if args.untie_emb or args.linear_probing:
        summary["untied"] = head.untie_embeddings(model)
    if args.linear_probing:
        summary["linear_probe"] = probe()
        logger.info("linear probe: train accuracy %.4f, C %.4g", summary["linear_probe"]["train_accuracy"],
                    summary["linear_probe"]["C"])
    return summary


def sample_batches(features: list, collator: Callable, size: int, count: int, seed: int) -> list[dict]:
    """``count`` collated batches of ``size`` features drawn with ``seed`` (LoRA-GA's gradient estimate)."""
    rng = random.Random(seed)
    return [collator(rng.sample(features, min(size, len(features)))) for _ in range(count)]
