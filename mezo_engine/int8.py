"""8-bit frozen linear layers on the CPU (``--load_int8`` without CUDA), beside float32 adapters.

Each frozen ``nn.Linear`` of the model becomes an ``Int8Linear``: its weight stored as int8 per output channel
(``W ~ scale[:, None] * q``, ``scale = max|W_row| / 127``, symmetric), its bias in float32. Its matmul quantises
each input row to int8 by its own step (``max|x_row| / 127``, dynamic quantisation per token), sums the int8
products exactly in int32 (``torch._int_mm``) and scales the result back to float32. What stays float32:

* the LM head (the module that holds the output embeddings, with the head around it: ``lm_head``), whose logits
  every score reads;
* every weight that trains (LoRA's A and B, prefixes, ...);
* the base weights a merge writes into (XGBLoRA's boosters, ``--lora_merge_every``, LoRA-GA's shift): the mode
  names them (``Mode.merged_bases``). A merge adds ``s B A`` to a float32 weight exactly as without int8; kept
  beside an int8 weight instead, the merged delta would need a dense float matrix of its own (5 bytes a weight
  against 4 for float32) and one more matmul; requantising ``W + delta`` after every merge adds an error that
  ``scripts/int8_check.py`` measures on SmolLM2 (docs/benchmarks.md).

Why this kernel (docs/benchmarks.md#an-int8-frozen-base-on-the-cpu, ``scripts/benchmark.py --int8``): torch's
``torch.ao.quantization.quantize_dynamic`` (fbgemm) runs SmolLM2's two MLP linears faster (0.29x of float32 at
one thread, against 0.34x here), but quantises the activations per tensor, to 7 bits; SmolLM2's activations have
outliers (a value 30 to 1400 times the median), so its layers' outputs were off by 5-31% and the candidate
log-probabilities of SST-2 by 1.16 nats on average. Per row the layers are off by 2-6%. torchao 0.18's
``quantize_`` with ``Int8DynamicActivationInt8WeightConfig`` (the same scheme) ran at 0.50x, and torch marks its
own quantized ops for removal in favour of torchao; ``torch._int_mm`` is the op torchao itself calls.

Training through an ``Int8Linear`` works: the gradient with respect to its input is ``grad_out @ W``, with ``W``
de-quantised for the backward (regular training of adapters below it); its own int8 weight never changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

QMAX = 127  # symmetric int8: q in [-127, 127]


# ----------------------------------------------------------------------------------------------------------------
# The kernel


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 of a 2-D float ``x``: ``(xq, step)`` with ``step = max|x_row| / 127`` (a tiny floor
    for an all-zero row) and ``xq = round(x / step)``, so ``|x - step xq| <= step / 2`` element by element."""
    step = x.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30) / QMAX
    return torch.round(x / step).to(torch.int8), step


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + b`` with ``W = scale[:, None] * q``: each row of ``x`` (float32, any leading shape) quantised
    to int8 by its own step (``quantize_rows``), int8 x int8 products summed exactly in int32 (``torch._int_mm``),
    then scaled back by the row's step and the output channel's scale."""
    rows = x.reshape(-1, x.shape[-1])
    xq, step = quantize_rows(rows)
    y = torch._int_mm(xq, q.t()).float().mul_(step).mul_(scale)
    if bias is not None:
        y.add_(bias)
    return y.reshape(*x.shape[:-1], q.shape[0])


# ----------------------------------------------------------------------------------------------------------------
# Quantising one weight, and the layer


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``(q, scale)`` with ``scale = max|W_row| / 127`` (1 for an all-zero row) and
    ``q = round(W / scale)``, so ``|W - scale q| <= scale / 2`` element by element."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


class _Int8Matmul(torch.autograd.Function):
    """The int8 kernel forward; backward ``grad_x = grad_y @ W`` with the de-quantised weight (the weight, its
    scale and bias get no gradient: they are frozen)."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return int8_matmul(x, layer.weight_int8, layer.weight_scale, layer.bias)

    @staticmethod
    def backward(ctx, grad):
        return grad @ ctx.layer.dequantized_weight(), None


class Int8Linear(nn.Module):
    """A frozen linear layer with an int8 weight (``weight_int8``, per-row ``weight_scale``) and a float bias.

    ``forward`` takes any float dtype: the kernel computes in float32 and the output comes back in the input's
    dtype. No ``weight`` attribute: code that would write into a base weight fails instead of writing into a copy.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight_int8", q)
        self.register_buffer("weight_scale", scale.float())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        """The int8 copy of ``linear`` (``quantize_weight``); ``linear`` itself is left as it was."""
        q, scale = quantize_weight(linear.weight)
        return cls(q, scale, linear.bias)

    def dequantized_weight(self) -> torch.Tensor:
        """``scale[:, None] * q`` in float32: the weight this layer computes with."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Int8Matmul.apply(x.float(), self).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ----------------------------------------------------------------------------------------------------------------
# Which layers, and the whole model


def head_modules(model: nn.Module) -> set[int]:
    """ids of the modules of the LM head: the top-level child of the (PEFT-unwrapped) model that holds the output
    embeddings (``lm_head``; for RoBERTa its whole head, dense layer included). Empty without output embeddings."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get = getattr(base, "get_output_embeddings", None)
    head = get() if callable(get) else None
    for child in base.children():
        if head is not None and any(m is head for m in child.modules()):
            return {id(m) for m in child.modules()}
    return set()


def frozen_linears(model: nn.Module, keep: set[str] = frozenset()) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers to quantise: frozen (no parameter requires grad), not in the
    LM head (``head_modules``), not named in ``keep``, and not an adapter's own layer (PEFT's ``lora_A``/``B``)."""
    head = head_modules(model)
    return [name for name, module in model.named_modules()
            if type(module) is nn.Linear and name not in keep and id(module) not in head
            and ".lora_" not in f".{name}" and not any(p.requires_grad for p in module.parameters())]


@dataclass
class Int8Report:
    """What ``quantize_frozen_linears_`` did: layers turned int8, their weight bytes before and after (int8
    values and float32 scales), and the linear layers left in float (by name; adapters' own layers not listed)."""

    layers: int = 0
    float_bytes: int = 0
    int8_bytes: int = 0
    kept_float: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"layers": self.layers, "float_bytes": self.float_bytes, "int8_bytes": self.int8_bytes,
                "kept_float": self.kept_float}


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def quantize_frozen_linears_(model: nn.Module, keep: set[str] = frozenset()) -> Int8Report:
    """Replace every layer ``frozen_linears`` names by its ``Int8Linear``, in place; report what changed.

    The model must be on the CPU (``torch._int_mm`` runs there). ``keep``: qualified module names to leave float (the
    bases a mode merges into)."""
    names = frozen_linears(model, keep)
    report = Int8Report()
    for name in names:
        linear = model.get_submodule(name)
        if linear.weight.device.type != "cpu":
            raise ValueError(f"--load_int8 on the CPU: layer {name} is on {linear.weight.device}")
        report.float_bytes += linear.weight.numel() * linear.weight.element_size()
        _set_module(model, name, Int8Linear.from_linear(linear))
        report.int8_bytes += linear.weight.numel() + linear.out_features * 4
    report.layers = len(names)
    report.kept_float = sorted(n for n, m in model.named_modules() if type(m) is nn.Linear and ".lora_" not in n)
    return report


@torch.no_grad()
def dequantize_(model: nn.Module) -> int:
    """Replace every ``Int8Linear`` by a float32 ``nn.Linear`` holding its de-quantised weight (the weights the
    int8 model computed with), in place, e.g. before saving a model any loader reads; returns how many."""
    names = [n for n, m in model.named_modules() if isinstance(m, Int8Linear)]
    for name in names:
        layer = model.get_submodule(name)
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        linear.weight.copy_(layer.dequantized_weight())
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
        linear.requires_grad_(False)
        _set_module(model, name, linear)
    return len(names)


def has_int8(model: nn.Module) -> bool:
    """Whether any layer of ``model`` is an ``Int8Linear``."""
    return any(isinstance(m, Int8Linear) for m in model.modules())
