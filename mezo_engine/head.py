"""The LM head as a thing of its own: untying it from the input embeddings, and training it alone.

Any causal LM that implements ``get_input_embeddings`` / ``get_output_embeddings`` (OPT, LLaMA-family, GPT-2, ...)
works; upstream MeZO supported OPT only, through a copy of OPT's modelling code.

* ``untie_embeddings`` gives the head its own copy of a tied weight and records ``tie_word_embeddings = False``
  in the config, so ``save_pretrained`` writes both weights and ``from_pretrained`` keeps them apart.
* ``train_head_only`` freezes everything but the head (``--head_tuning``). A head that is still tied trains the
  shared weight, so the input embeddings change with it, as in upstream MeZO. For backprop the gradient comes from
  the head's use of that weight only: upstream ran the decoder under ``torch.no_grad``; here a forward hook on the
  input embeddings detaches their output, which also keeps autograd from recording the decoder at all.
"""
from __future__ import annotations

import torch


class HeadError(ValueError):
    """A model whose LM head cannot be untied or trained alone; the message says why."""


def lm_head(model) -> torch.nn.Module:
    """The module that maps the last hidden state to the vocabulary logits."""
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise HeadError(f"{type(model).__name__} has no LM head with a weight (get_output_embeddings() is {head!r})")
    return head


def is_tied(model) -> bool:
    """Whether the LM head and the input embeddings share one weight tensor."""
    return lm_head(model).weight is model.get_input_embeddings().weight


def untie_embeddings(model) -> bool:
    """Give the LM head its own copy of the input embedding weight; True if it was tied.

    The config then says ``tie_word_embeddings = False``: transformers reads it when saving (both weights are
    written, as their storage differs) and when loading (no tying), and ``model.tie_weights()`` keeps them apart.
    """
    tied = is_tied(model)
    if tied:
        head = lm_head(model)
        weight = head.weight
        head.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    model.config.tie_word_embeddings = False
    if hasattr(model, "all_tied_weights_keys"):  # transformers 5 caches the tying map at init
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    return tied


def _detach_output(module, args, output):
    return output.detach()


def train_head_only(model) -> list[str]:
    """Freeze every parameter except the LM head's (its weight, and its bias if any); returns their names.

    A tied head trains the shared weight; its gradient then comes from the head alone (see the module docstring).
    """
    head_params = {id(p) for p in lm_head(model).parameters()}
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in head_params)
        if id(p) in head_params:
            names.append(name)
    if is_tied(model):
        model.get_input_embeddings().register_forward_hook(_detach_output)
    return names
