"""Activation reuse within one ZO step (``--zo_reuse_activations``).

The forwards of one ZO step (+eps and -eps, the n directions of n-SPSA, HiZOO's three, FZOO's N + 1 in sequence)
run the same batch through the same network except the perturbed parameters. Everything computed below the lowest
perturbed module is therefore the same in each of them. The first forward of a step keeps the output at the cut,
and the others return it instead of computing it:

* **body**: no perturbed parameter inside the transformer body (the innermost module holding the embeddings and the
  blocks; with them the final norm), e.g. ZO head tuning with an untied head (``--head_tuning --untie_emb``): the body's whole output is
  kept, and the later forwards run the LM head and the loss only.
* **blocks**: the lowest perturbed parameter lies in block ``k >= 1`` and none lies in the body outside the blocks
  (e.g. LoRA restricted to upper blocks, ``--lora_layers 20-29``, or XGBLoRA's drawn blocks): block ``k - 1``'s
  output is kept, and blocks ``0 .. k - 1`` return it instead of running.
* otherwise (a perturbed embedding, e.g. a tied head, or block 0) nothing is reused.

What is kept is one activation of the batch (one block's output, or the body's), dropped when the step ends. A
forward takes part only when it is built without a KV cache (no ``past_key_values``/``cache``, ``use_cache`` False): a
replayed forward skips the lower blocks, so it could not fill their cache (the shared-prefix scoring of answers
longer than one token uses the cache; it then recomputes, as without this flag). A forward is matched to the kept
one by its tensors (the same ``input_ids`` and ``attention_mask`` objects, as the step's forwards pass its one
batch); batched copies of a batch (``batched_queries``) are new tensors, so they are not matched. The replayed
output is a copy, so a block that wrote into its input could not change what is kept. The kept output is what
recomputing would give bit for bit on the same kernels (``tests/test_activation_reuse.py``).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


CACHE_ARGS = ("past_key_values", "cache")  # a body's KV-cache argument (transformers 5 renames it ``cache``)


def blocks_of(model: nn.Module) -> nn.ModuleList | None:
    """The list of transformer blocks: the model's first ``nn.ModuleList`` of ``config.num_hidden_layers`` modules
    (a PEFT model's included), or None."""
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and count is not None and len(module) == count:
            return module
    return None


def body_of(model: nn.Module, blocks: nn.ModuleList | None) -> nn.Module | None:
    """The transformer body: the innermost module holding both the input embedding and ``blocks`` (LlamaModel,
    OPTDecoder, GPT2Model, RobertaModel, ...), whose output the head reads; None without blocks or embedding."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if blocks is None or embedding is None:
        return None
    body = None
    for module in model.modules():  # outer modules come first: the last match is the innermost
        inside = {id(m) for m in module.modules()}
        if id(blocks) in inside and id(embedding) in inside:
            body = module
    return body


@dataclass(frozen=True)
class Cut:
    """Where a step's forwards part: ``kind`` "body" (the body's output is shared) or "blocks" (blocks below
    ``first`` are shared: block ``first - 1``'s output)."""

    kind: str
    first: int = 0


def _clone(value):
    """A copy of the tensors in ``value`` (a tensor, a tuple or list of them, or a model output mapping)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):  # transformers' ModelOutput is an OrderedDict
        return type(value)(**{k: _clone(v) for k, v in value.items()})
    return value


class ActivationReuse:
    """Shares the lower part of a ZO step's forwards (module docstring). ``cut(params)`` says where the perturbed
    ``params`` allow a cut; ``with reuse.step(params):`` around the step's forwards keeps and replays."""

    def __init__(self, model: nn.Module):
        self.blocks = blocks_of(model)
        self.body = body_of(model, self.blocks)
        self._block_of: dict[int, int] = {}
        self._in_body: set[int] = set()
        if self.body is not None:
            self._in_body = {id(p) for p in self.body.parameters()}
        if self.blocks is not None:
            self._block_of = {id(p): i for i, block in enumerate(self.blocks) for p in block.parameters()}
        self.replays = 0  # forwards that reused a kept activation (the tests and the benchmark read it)
        self._kept: tuple | None = None  # (input_ids, attention_mask, output at the cut)

    def cut(self, params: Sequence[torch.Tensor]) -> Cut | None:
        """Where the forwards of a step perturbing ``params`` part, or None when nothing can be shared."""
        if self.body is None or not params:
            return None
        inside = [p for p in params if id(p) in self._in_body]
        if not inside:
            return Cut("body")
        if self.blocks is None or any(id(p) not in self._block_of for p in inside):
            return None
        first = min(self._block_of[id(p)] for p in inside)
        return Cut("blocks", first) if first >= 1 else None

    @contextmanager
    def step(self, params: Sequence[torch.Tensor]) -> Iterator[Cut | None]:
        """Within the block: the first eligible forward keeps the activation at the cut, the others with the same
        inputs replay it. The model is as before after the block, and the activation is dropped."""
        cut = self.cut(params)
        if cut is None:
            yield None
            return
        try:
            with _forwards_replaced({self.body: self._wrapped_body(self.body.forward, cut)}):
                yield cut
        finally:
            self._kept = None

    # ---- the wrappers ------------------------------------------------------------------------------------
    def _wrapped_body(self, forward, cut: Cut):
        def run(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            eligible = (isinstance(ids, torch.Tensor) and kwargs.get("use_cache") is False
                        and all(kwargs.get(name) is None for name in CACHE_ARGS))
            if not eligible:
                return forward(*args, **kwargs)
            kept = self._kept
            if kept is not None and kept[0] is ids and kept[1] is mask:
                self.replays += 1
                if cut.kind == "body":
                    return _clone(kept[2])
                with self._blocks_return(cut.first, kept[2]):
                    return forward(*args, **kwargs)
            if cut.kind == "body":
                out = forward(*args, **kwargs)
                self._kept = (ids, mask, _clone(out))
                return out
            captured = []
            handle = self.blocks[cut.first - 1].register_forward_hook(lambda m, i, o: captured.append(_clone(o)))
            try:
                out = forward(*args, **kwargs)
            finally:
                handle.remove()
            self._kept = (ids, mask, captured[-1]) if captured else None
            return out
        return run

    def _blocks_return(self, first: int, output):
        """Blocks ``0 .. first - 1`` return ``output`` without running, within the block: the last of them a copy
        (what block ``first`` reads), the others ``output`` itself (only the next skipped block sees it)."""
        lower = list(self.blocks)[:first]
        replaced = {block: (lambda *a, **k: output) for block in lower[:-1]}
        replaced[lower[-1]] = lambda *a, **k: _clone(output)
        return _forwards_replaced(replaced)


class NoReuse:
    """``--zo_reuse_activations false``: every forward of a step runs in full."""

    replays = 0

    @contextmanager
    def step(self, params: Sequence[torch.Tensor]) -> Iterator[None]:
        yield None


@contextmanager
def _forwards_replaced(forwards: dict) -> Iterator[None]:
    """Within the block each module of ``forwards`` runs its function instead of its ``forward``; afterwards each
    has the forward it had (its class's, or an instance forward such as an accelerate hook's)."""
    saved = {module: module.__dict__.get("forward") for module in forwards}
    for module, function in forwards.items():
        module.forward = function
    try:
        yield
    finally:
        for module, own in saved.items():
            if own is None:
                del module.forward
            else:
                module.forward = own
