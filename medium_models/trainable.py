"""Which parameters of a masked LM train, by upstream MeZO's rules for its medium-model experiments.

Upstream's prompt models (``RobertaModelForPromptFinetuning``, ``BertModelForPromptFinetuning`` in its
``medium_models/src/models.py``) define no ``get_output_embeddings``, so transformers never ties their MLM decoder
to the input embeddings: the decoder is a weight of its own, loaded with the checkpoint's copy of the embeddings
(upstream logs "the input embeddings and the output embeddings are NOT tied"). This app gives a masked LM's decoder
its own copy before anything trains (``untie_by_default``; ``--tie_emb`` keeps them tied, the earlier rule here).
On RoBERTa-large the copy is 50,265 x 1,024 = 51.5M parameters, 206 MB in float32.

On that untied model upstream's ``run.py`` decides what trains, by parameter name:

* full-parameter training: every parameter (encoder, embeddings, the whole MLM head with its own decoder);
* ``--apply_lora``: every parameter except the encoder's non-LoRA ones (``name.startswith('roberta') and 'lora'
  not in name`` are frozen), so the whole MLM head trains beside the adapters (``adapter_head_names``);
* ``--head_tuning``: every parameter with ``lm_head`` in its name, the whole MLM head: dense, LayerNorm, decoder
  and bias (``head_names``). Upstream names no head for BERT (its code stops with a NameError there); here BERT's
  head is ``cls.*`` by the same rule: everything outside the encoder.

Upstream's prompt model also holds a ``classifier`` (hidden -> labels) that a prompt run never reads; it was in
upstream's perturbed set and changed nothing but the random stream. ``AutoModelForMaskedLM`` has none, so it is
not here. The rules are app code: the engine is handed them as a function (``runner.make_trainer``'s
``also_train``) and reads no flag of this app.
"""
from __future__ import annotations

from collections.abc import Callable

from medium_models.scoring import unwrapped

PEFT_PREFIX = "base_model.model."  # what PEFT puts before the wrapped model's parameter names


def encoder_prefix(model) -> str:
    """The name of the encoder inside a masked LM (``roberta``, ``bert``): transformers' ``base_model_prefix``."""
    return unwrapped(model).base_model_prefix


def outside_encoder(model) -> list[str]:
    """Names (as ``model`` names them, PEFT prefix included) of the parameters outside the encoder and not LoRA's:
    a RoBERTa's ``lm_head.*``, a BERT's ``cls.*``. A decoder still tied to the input embeddings is named under the
    encoder, so it is not among them (as upstream's name rule would leave it)."""
    prefix = encoder_prefix(model) + "."
    return [name for name, _ in model.named_parameters()
            if not name.removeprefix(PEFT_PREFIX).startswith(prefix) and "lora_" not in name]


def upstream_rule(mode: str, adapters_train_head: bool) -> Callable | None:
    """The app's ``also_train(model)`` for a masked LM trained in ``mode`` (``lp-<mode>`` as ``<mode>``): the MLM
    head beside LoRA and XGBLoRA (unless ``--adapters_train_head False``) and in head tuning; None otherwise
    (full-parameter training trains everything already; prefix tuning is not built for masked LMs)."""
    base = mode.removeprefix("lp-")
    if base == "head" or (base in ("lora", "xgblora") and adapters_train_head):
        return outside_encoder
    return None


def untie_by_default(untie_emb: bool, tie_emb: bool, causal: bool) -> bool:
    """Whether to untie the decoder before training: always for a masked LM unless ``--tie_emb`` (upstream's prompt
    models are untied); for a causal LM only with ``--untie_emb`` (upstream's OPT prompt model stays tied)."""
    return untie_emb or (not causal and not tie_emb)
