"""What runs before any training mode: the LM head's ``--untie_emb`` and ``--linear_probing``
(``prepare_head``), and the few training batches LoRA-GA estimates its gradient from (``sample_batches``).

The training modes themselves are ``mezo_engine/methods/`` (one file each, by name: ``methods.mode_for``).
``--linear_probing`` is not a mode of its own but a start: ``prepare_head`` unties the head and calls the app's
probe, which fits it and writes it into the head before training; the run's mode is then ``lp`` (the probe alone,
``--trainer none``) or ``lp-<mode>`` (training continues from it in ``<mode>``).
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable

from mezo_engine import head

logger = logging.getLogger(__name__)


def prepare_head(args, model, probe: Callable[[], dict] | None = None) -> dict:
    """Before any training: ``--untie_emb``, and ``--linear_probing`` (which unties first: the probe writes the
    label words' rows of the head, which must not move their input embeddings). ``probe()`` is the app's fit of
    the probe (``large_models.pipeline.probe``, ``medium_models.probe``: the app knows the prompts and answers); it
    returns the probe's summary.
    Returns what the result JSON records under ``head`` (empty when neither flag is set)."""
    summary = {}
    if args.linear_probing and probe is None:
        raise ValueError("--linear_probing: this app gives no probe to fit (both run.py files do)")
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
