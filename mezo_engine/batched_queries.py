"""Several queries of the training loss, each at its own adapter values, from one forward; and what a ZO step's
forwards look like to a method that makes several of them (``StepLosses``).

A query is the loss on the step's batch at ``theta + delta_q``, ``theta`` the trainable LoRA factors. With LoRA on
the model, n queries need not be n forwards: the batch is repeated n times (copy q in rows q*B..q*B+B-1; the
objective's ``copies_loss`` does the repeating, ``scoring.tile_batch``) and every adapted layer adds, to the rows
of copy q, what copy q's adapter contributes:

    y[rows of q] = base(x[rows of q]) + s * x[rows of q] (A + dA_q)^T (B + dB_q)^T

two batched matmuls over the copy index per layer (``_PerCopyDelta``, a forward hook on the base layer, with PEFT's
own adapter path off). The base weights are shared, so the extra memory is the activations of n * B rows and the
n sets of factor values; the result is each copy's loss reduced over its own rows, as one forward of that copy
alone would give it (``tests/test_fzoo.py`` checks it against n separate forwards). FZOO's base loss and N
one-sided queries are n = N + 1 copies; MeZO's +eps / -eps pair would be n = 2.

Only LoRA factors can differ between copies (a full-parameter query would need a copy of the weights per row
block); full-parameter methods query in sequence (``zo.losses_at``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from mezo_engine import distributed, lora

Batched = Callable[[Sequence[torch.Tensor], Sequence[Sequence[torch.Tensor]]], list[float]]


class StepLosses:
    """The forwards a ZO step can make on its batch, as a method's ``zo_step`` receives them (its ``loss_fn``).

    Called, it is one forward of the training loss averaged over the ranks (what every method needs). A method that
    makes several forwards per step can ask for each rank's own loss (``local``) and average them all at the end
    in one all-reduce (``mean_over_ranks``), and, where ``batched`` is not None (LoRA on the model and an objective
    with ``copies_loss``), get several queries from one forward: ``batched(params, deltas)`` is this rank's loss at
    ``params + deltas[q]`` for each q (``query_losses``)."""

    def __init__(self, local: Callable[[], float], weight: float = 1.0,
                 comm: distributed.CommCounter | None = None, batched: Batched | None = None,
                 guard: distributed.StallGuard | None = None, what: str = "the zo step's all-reduce"):
        self.local, self.weight, self.comm, self.batched = local, weight, comm, batched
        self.guard, self.what = guard, what  # the bound on the all-reduce's wait (a stalled rank), its name

    @classmethod
    def of(cls, loss_fn: Callable[[], float]) -> StepLosses:
        """``loss_fn`` itself if it is one, else a plain closure (one process, nothing batched) as one."""
        return loss_fn if isinstance(loss_fn, StepLosses) else cls(loss_fn)

    def __call__(self) -> float:
        return self.mean_over_ranks([self.local()])[0]

    def mean_over_ranks(self, values: Sequence[float]) -> list[float]:
        """Each of this rank's ``values`` (losses on its share of the batch) as the loss of the global batch."""
        return distributed.weighted_means(values, self.weight, self.comm, self.guard, self.what)


def query_losses(model: torch.nn.Module, objective, batch: dict, params: Sequence[torch.Tensor],
                 deltas: Sequence[Sequence[torch.Tensor]]) -> list[float]:
    """``objective``'s loss on ``batch`` at ``params + deltas[q]`` for each q, from one forward of ``len(deltas)``
    copies of the batch (``objective.copies_loss``). ``params``: LoRA factors of ``model`` (a ``PeftModel``);
    ``deltas[q][j]`` moves ``params[j]`` in query q. The parameters are not written. The model must be in eval mode
    (adapter dropout would draw other masks per copy)."""
    if any(m.training for m in model.modules()):
        raise ValueError("batched queries: the model must be in eval mode (dropout would differ between copies)")
    with torch.no_grad(), per_copy_adapters(model, params, deltas):
        return [float(v) for v in objective.copies_loss(model, batch, len(deltas)).tolist()]


@contextmanager
def per_copy_adapters(model: torch.nn.Module, params: Sequence[torch.Tensor],
                      deltas: Sequence[Sequence[torch.Tensor]]) -> Iterator[None]:
    """Inside, a forward of a batch of ``len(deltas)`` equal-sized row blocks runs block q with every LoRA factor
    ``params[j]`` at ``params[j] + deltas[q][j]`` (factors not in ``params`` as they are). A parameter of
    ``params`` that is no LoRA factor of ``model`` is refused by name of its shape."""
    layers = lora.lora_layers(model)
    where = {id(p): j for j, p in enumerate(params)}
    known = {id(p) for _, layer in layers for p in lora.factors(layer)[:2]}
    if stray := [tuple(p.shape) for p in params if id(p) not in known]:
        raise ValueError(f"batched queries vary LoRA factors only; these trainable parameters are not: {stray[:3]}")
    hooks = [_PerCopyDelta(layer, where, deltas) for _, layer in layers]
    handles = [layer.get_base_layer().register_forward_hook(hook)
               for (_, layer), hook in zip(layers, hooks) if hook.live]
    try:
        with lora.adapter_path_off(model, layers):
            yield
    finally:
        for handle in handles:
            handle.remove()


def _per_copy(factor: torch.Tensor, where: dict, deltas: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """The factor's value in every copy, (copies, *shape), or the factor itself where no copy moves it."""
    if id(factor) not in where:
        return factor.detach()
    j = where[id(factor)]
    return factor.detach() + torch.stack([d[j] for d in deltas])


class _PerCopyDelta:
    """Forward hook of one adapted base layer: adds ``s * x A_q^T B_q^T`` to the rows of each copy q (A, B of
    the layer's adapter at copy q's values), computed in the adapter's dtype and added as PEFT adds it."""

    def __init__(self, layer, where: dict, deltas: Sequence[Sequence[torch.Tensor]]):
        A, B, self.scaling = lora.factors(layer)
        self.copies = len(deltas)
        # no copy moves B and B = 0 (a fresh or frozen booster): the layer runs as its base layer alone
        self.live = id(B) in where or bool(B.detach().any())
        self.a_t = _per_copy(A, where, deltas).transpose(-1, -2)  # (in, r) or (copies, in, r)
        self.b_t = _per_copy(B, where, deltas).transpose(-1, -2)  # (r, out) or (copies, r, out)

    def __call__(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if x.shape[0] % self.copies:
            raise ValueError(f"batched queries: {x.shape[0]} rows do not split into {self.copies} equal copies")
        blocks = x.reshape(self.copies, -1, x.shape[-1]).to(self.a_t.dtype)
        delta = torch.matmul(torch.matmul(blocks, self.a_t), self.b_t) * self.scaling
        return (output + delta.reshape(output.shape)).to(output.dtype)
