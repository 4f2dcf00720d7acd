"""LoRA adapters (via PEFT) and the XGBLoRA booster operations built on them.

XGBLoRA (arXiv 2410.19694) trains a sequence of small LoRA "boosters": each is trained for a few steps, merged
into the base weights (W <- W + eta * s * B A) and re-initialised, while the adapter stays live and trainable.
This module keeps the PEFT LoRA layers in place and only edits tensors through `.data`, so the Parameter objects
an optimizer holds never change. All merges are computed in float32 (float64 for a float64 model) and cast back to the base weight's dtype.

Also here: SuperReLoRA-style partial merges, random per-iteration block selection, and LoRA-GA (arXiv 2407.05000)
re-initialisation of the boosters from an estimated gradient, reusing PEFT's `LoraLayer.lora_ga_init`.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from peft import LoraConfig, LoraGAConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.other import transpose
from torch import nn
from transformers import PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D

from mezo_engine import int8
from mezo_engine.scoring import float32_or_wider

_QV = ["q_proj", "v_proj"]
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    **{t: _QV for t in ("opt", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2",
                        "gemma3_text", "phi", "gpt_neo", "gptj", "stablelm")},
    "phi3": ["qkv_proj"],  # Phi-3 fuses q, k and v into one projection
    "gpt2": ["c_attn"],  # GPT-2 fuses q, k and v into one Conv1D
    **{t: ["query", "value"] for t in ("roberta", "bert", "xlm-roberta", "electra")},
}
LORA_INITS = ("default", "gaussian", "lora_ga")
LORA_GA_DIRECTIONS = ("ArBr", "A2rBr", "ArB2r", "random")
LORA_GA_SCALES = ("stable", "weight_svd", "gd_scale", "unit")
logger = logging.getLogger(__name__)
_BLOCK_RE = re.compile(r"(?:^|\.)(?:layers|layer|h)\.(\d+)(?:\.|$)")


# ----------------------------------------------------------------------------------------------------------------
# Attaching adapters


def default_target_modules(model: nn.Module) -> list[str]:
    """The LoRA target module names for `model`'s architecture (query and value projections)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGET_MODULES:
        raise ValueError(
            f"no default LoRA target modules for model_type {model_type!r}; pass --lora_target_modules "
            f"(known types: {', '.join(sorted(DEFAULT_TARGET_MODULES))})"
        )
    return list(DEFAULT_TARGET_MODULES[model_type])


def _linear_names(model: nn.Module) -> dict[str, str]:
    """Qualified name -> short name of every nn.Linear / Conv1D module (the layers LoRA can target)."""
    return {n: n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}


def _matches(qualified: str, target: str) -> bool:
    """PEFT's list matching: the module's full name is `target` or ends with "." + target."""
    return qualified == target or qualified.endswith("." + target)


def _check_targets(model: nn.Module, targets: list[str]) -> bool:
    """Raise if a target name matches no linear module; return whether any match is a GPT-2-style Conv1D."""
    linear = _linear_names(model)
    modules = dict(model.named_modules())
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    for target in targets:
        if not any(_matches(q, target) for q in linear):
            raise ValueError(
                f"--lora_target_modules: {target!r} matches no module of this {model_type} model; "
                f"linear modules are: {', '.join(sorted(set(linear.values())))}"
            )
    return any(isinstance(modules[q], Conv1D) for q in linear if any(_matches(q, t) for t in targets))


def parse_blocks(text: str) -> tuple[int, int] | None:
    """``--lora_layers FIRST-LAST`` (0-based, inclusive; a single ``N`` is ``N-N``) as (first, last); "" is None
    (every block). Raises ValueError naming the flag and value."""
    if not text:
        return None
    parts = text.split("-")
    if len(parts) > 2 or not all(part.strip().isdigit() for part in parts):
        raise ValueError(f"--lora_layers {text}: give FIRST-LAST, two block indices from 0 (e.g. 20-29)")
    first, last = int(parts[0]), int(parts[-1])
    if first > last:
        raise ValueError(f"--lora_layers {text}: FIRST {first} is above LAST {last}")
    return first, last


def blocks_targets(model: nn.Module, targets: list[str], blocks: tuple[int, int]) -> list[str]:
    """The qualified names of the modules matching ``targets`` whose block index lies in ``blocks``."""
    first, last = blocks
    chosen = [q for q in _linear_names(model) if any(_matches(q, t) for t in targets)
              and (i := layer_index(q)) is not None and first <= i <= last]
    if not chosen:
        raise ValueError(f"--lora_layers {first}-{last}: no target module ({', '.join(targets)}) in those blocks")
    return chosen


def _validate_lora_args(r: int, alpha: float, dropout: float, init: str) -> None:
    """Check the LoRA hyper-parameters, naming the flag and value of the first bad one."""
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank (--lora_r / --xgblora_rank) must be a positive integer, got {r!r}")
    if not alpha > 0:
        raise ValueError(f"--lora_alpha must be > 0, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"--lora_dropout must be in [0, 1), got {dropout!r}")
    if init not in LORA_INITS:
        raise ValueError(f"--lora_init must be one of {', '.join(LORA_INITS)}, got {init!r}")


def _is_causal_lm(model: nn.Module) -> bool:
    """Whether `model` is one of transformers' causal-LM classes (e.g. OPTForCausalLM, GPT2LMHeadModel)."""
    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def attach_lora(
    model: PreTrainedModel,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
    init: str = "default",
    blocks: tuple[int, int] | None = None,
) -> PeftModel:
    """Wrap `model` in a PEFT LoRA model; only the LoRA parameters stay trainable.

    init: "default" (A Kaiming-uniform, B zero), "gaussian" (A normal, B zero) or "lora_ga", which attaches the
    default init (so the model is unchanged) and expects the caller to follow with `lora_ga_reinit_` once it has
    gradient estimates. PEFT keeps float16/bfloat16 models' adapter weights in float32 (autocast_adapter_dtype).
    blocks: (first, last), 0-based and inclusive: adapt only the target modules of those transformer blocks
    (``--lora_layers``), named one by one to PEFT.
    """
    _validate_lora_args(r, alpha, dropout, init)
    targets = list(target_modules) if target_modules else default_target_modules(model)
    conv1d = _check_targets(model, targets)
    if blocks is not None:
        targets = blocks_targets(model, targets, blocks)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
        fan_in_fan_out=conv1d, init_lora_weights="gaussian" if init == "gaussian" else True,
        task_type="CAUSAL_LM" if _is_causal_lm(model) else None,
    )
    return get_peft_model(model, config)


# ----------------------------------------------------------------------------------------------------------------
# Inspecting LoRA layers


def _adapter_name(layer: LoraLayer) -> str:
    """The single active adapter of `layer` (this module manages exactly one)."""
    active = list(layer.active_adapters)
    if len(active) != 1 or active[0] not in layer.lora_A:
        raise ValueError(f"expected exactly one active LoRA adapter on a layer, found {active}")
    return active[0]


def _lora_AB(layer: LoraLayer) -> tuple[nn.Parameter, nn.Parameter]:
    """The (A, B) weight Parameters of the layer's adapter: A is (r, in), B is (out, r)."""
    name = _adapter_name(layer)
    return layer.lora_A[name].weight, layer.lora_B[name].weight


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLayer]]:
    """(qualified name, PEFT LoRA layer) for every LoRA layer with an adapter, in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer) and len(m.lora_A) > 0]


def base_layer_names(model: nn.Module) -> set[str]:
    """Qualified names of the base layers the LoRA layers wrap (the weights merges write into)."""
    bases = {id(layer.get_base_layer()) for _, layer in lora_layers(model)}
    return {name for name, module in model.named_modules() if id(module) in bases}


def has_float_weight(module: nn.Module) -> bool:
    """Whether ``module`` holds a floating-point ``weight`` tensor a merge or a fold can add to (not an 8-bit
    base: ``int8.Int8Linear`` has none, bitsandbytes' is int8)."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point


def layer_index(name: str) -> int | None:
    """Transformer block index in a module name (".layers.3.", ".h.3.", ".layer.3."), or None if it has none."""
    match = _BLOCK_RE.search(name)
    return int(match.group(1)) if match else None


def num_blocks(model: nn.Module) -> int:
    """Number of distinct transformer blocks that hold LoRA layers."""
    return len({i for n, _ in lora_layers(model) if (i := layer_index(n)) is not None})


def delta_weight(layer: LoraLayer) -> torch.Tensor:
    """s * B @ A in float32, in the base weight's layout (transposed for GPT-2's fan_in_fan_out Conv1D).

    Same maths as PEFT's `layer.get_delta_weight(adapter)`, which returns the adapter's dtype instead.
    """
    A, B, scaling = factors(layer)
    return factor_delta(A, B, scaling, layer.fan_in_fan_out)


def factors(layer: LoraLayer) -> tuple[nn.Parameter, nn.Parameter, float]:
    """The layer's adapter as ``(A, B, s)``: its output adds ``s * B A x`` (A: (r, in), B: (out, r)) to the base
    layer's, whatever the base weight's layout (GPT-2's Conv1D included). Variants (DoRA) are refused."""
    name = _adapter_name(layer)
    if name in getattr(layer, "lora_variant", {}):
        raise ValueError(f"LoRA variant {type(layer.lora_variant[name]).__name__} (e.g. DoRA) is not supported here")
    A, B = _lora_AB(layer)
    return A, B, layer.scaling[name]


def factor_delta(A: torch.Tensor, B: torch.Tensor, scaling: float, fan_in_fan_out: bool) -> torch.Tensor:
    """s * B @ A in float32 in the base weight's layout: the one formula every merge and its replay use."""
    return transpose(float32_or_wider(B.detach()) @ float32_or_wider(A.detach()), fan_in_fan_out) * scaling


# ----------------------------------------------------------------------------------------------------------------
# Merging and re-initialising boosters


@dataclass
class MergeReport:
    """What a merge did: how many modules, the Frobenius norm of everything added to W, and which modules.

    factors: one MergeFactor per module, enough to replay the merge on a fresh copy of the base model.
    """

    num_modules: int = 0
    delta_norm: float = 0.0
    modules: list[str] = field(default_factory=list)
    factors: list["MergeFactor"] = field(default_factory=list)


@dataclass
class MergeFactor:
    """One module's merge: W += coeff * factor_delta(A, B, scaling, fan_in_fan_out), A and B as they were."""

    module: str
    A: torch.Tensor
    B: torch.Tensor
    scaling: float
    fan_in_fan_out: bool
    coeff: float


class NonFiniteDeltaError(ArithmeticError):
    """A merge would add NaN or inf to a base weight (the run diverged); nothing was merged into that module."""


# A merge whose |delta| exceeds this multiple of |W| is logged as a warning (--merge_warn_ratio).
MERGE_WARN_RATIO = 1.0


def float_base_weight(layer: LoraLayer) -> torch.Tensor:
    """The float weight a merge adds to; an 8-bit base (``--load_int8``) is refused by name."""
    base = layer.get_base_layer()
    if not has_float_weight(base):
        raise ValueError(f"cannot merge into the 8-bit base layer {type(base).__name__}: the mode must keep the "
                         f"bases it merges into float (Mode.merged_bases)")
    return base.weight


@torch.no_grad()
def _add_to_base_(layer: LoraLayer, delta: torch.Tensor) -> None:
    """W += delta, computed in float32 and cast back to W's dtype, in place on W.data (same Parameter object)."""
    if layer.merged:
        raise ValueError("LoRA layer is marked merged by PEFT; unmerge it before XGBLoRA merges")
    weight = float_base_weight(layer)
    weight.data.copy_((float32_or_wider(weight.data) + delta.to(weight.device)).to(weight.dtype))


@torch.no_grad()
def reinit_(layer: LoraLayer, generator: torch.Generator | None = None) -> None:
    """Fresh booster: A ~ Kaiming-uniform(a=sqrt(5)) drawn from `generator`, B = 0 (PEFT's default init)."""
    A, B = _lora_AB(layer)
    device = generator.device if generator is not None else A.device
    fresh = torch.empty(A.shape, dtype=torch.float32, device=device)
    nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
    A.data.copy_(fresh.to(A.device))
    B.data.zero_()


def _select_layers(model: nn.Module, names: Iterable[str] | None) -> list[tuple[str, LoraLayer]]:
    """The LoRA layers named in `names` (all when None); unknown names raise."""
    layers = lora_layers(model)
    if names is None:
        return layers
    wanted, known = set(names), {n for n, _ in layers}
    if unknown := sorted(wanted - known):
        raise ValueError(f"not LoRA layers of this model: {unknown[:5]}; known e.g. {sorted(known)[:3]}")
    return [(n, m) for n, m in layers if n in wanted]


def _check_delta(name: str, delta: torch.Tensor, weight: torch.Tensor, warn_ratio: float) -> None:
    """Refuse a non-finite delta (as PEFT's safe_merge does); warn when |delta| > warn_ratio * |W|."""
    if not torch.isfinite(delta).all():
        raise NonFiniteDeltaError(f"merging the adapter of {name} would add NaN/inf to its base weight: training "
                                  f"diverged (try a lower --learning_rate, or for zo a different --zo_eps)")
    norm, base = float(delta.norm()), float(weight.detach().float().norm())
    if warn_ratio > 0 and norm > warn_ratio * base:
        logger.warning("merge into %s: |dW| = %.4g exceeds %g x |W| = %.4g (a too large learning rate?)", name,
                       norm, warn_ratio, base)


def _factor(name: str, layer: LoraLayer, coeff: float) -> MergeFactor:
    A, B = _lora_AB(layer)
    return MergeFactor(name, A.detach().clone(), B.detach().clone(), layer.scaling[_adapter_name(layer)],
                       bool(layer.fan_in_fan_out), coeff)


def _merge_layers(
    selected: list[tuple[str, LoraLayer]], coeff: float, then: Callable[[LoraLayer], None],
    warn_ratio: float = MERGE_WARN_RATIO,
) -> MergeReport:
    """W += coeff * delta for each layer, then `then(layer)` to fix up the adapter; report what was added.

    Every delta is checked before any is added, so a non-finite one leaves the model untouched."""
    deltas = [coeff * delta_weight(layer) for _, layer in selected]
    for (name, layer), delta in zip(selected, deltas):
        _check_delta(name, delta, float_base_weight(layer), warn_ratio)
    report, sq = MergeReport(), 0.0
    for (name, layer), delta in zip(selected, deltas):
        if bool(_lora_AB(layer)[1].any()):  # a zero booster (frozen block) adds nothing: nothing to replay
            report.factors.append(_factor(name, layer, coeff))
        _add_to_base_(layer, delta)
        then(layer)
        sq += float(delta.pow(2).sum())
        report.modules.append(name)
    report.num_modules, report.delta_norm = len(report.modules), math.sqrt(sq)
    return report


@torch.no_grad()
def replay_merges(model: nn.Module, factors: Iterable[MergeFactor]) -> None:
    """Redo recorded merges on the base weights, in order and with the same float ops: bit-exact on one device."""
    layers = dict(lora_layers(model))
    for f in factors:
        if f.module not in layers:
            raise ValueError(f"checkpoint merges module {f.module!r}, which is not a LoRA layer of this model")
        weight = layers[f.module].get_base_layer().weight
        delta = f.coeff * factor_delta(f.A.to(weight.device), f.B.to(weight.device), f.scaling, f.fan_in_fan_out)
        _add_to_base_(layers[f.module], delta)


def base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base weight of every LoRA layer (the only weights merges change), by LoRA-layer name."""
    return {name: layer.get_base_layer().weight for name, layer in lora_layers(model)}


def base_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of every LoRA layer's base weight, by LoRA-layer name: the weight's, or (out, in) for a base
    without a ``weight`` (``int8.Int8Linear``, whose int8 values a resumed run checks by shape all the same)."""
    shapes = {}
    for name, layer in lora_layers(model):
        base = layer.get_base_layer()
        weight = getattr(base, "weight", None)
        shapes[name] = tuple(weight.shape) if weight is not None else (base.out_features, base.in_features)
    return shapes


def _base_tensors(layer: LoraLayer) -> list[torch.Tensor]:
    """The tensors that define a LoRA layer's base weight: the weight, or an 8-bit base's int8 values and scales."""
    base = layer.get_base_layer()
    return [base.weight_int8, base.weight_scale] if isinstance(base, int8.Int8Linear) else [base.weight]


def base_fingerprint(model: nn.Module) -> str:
    """sha256 of the LoRA layers' base weights (names, shapes, dtypes, bytes): the identity of the base model. An
    8-bit base (``int8.Int8Linear``) counts by its int8 values and scales, so an int8 run resumes only an int8 run."""
    digest = hashlib.sha256()
    for name, layer in lora_layers(model):
        for weight in _base_tensors(layer):
            digest.update(f"{name}:{tuple(weight.shape)}:{weight.dtype}".encode())
            digest.update(weight.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def merge_and_reinit(
    model: nn.Module,
    scale: float = 1.0,
    layers: list[str] | None = None,
    generator: torch.Generator | None = None,
    reinit: bool = True,
    warn_ratio: float = MERGE_WARN_RATIO,
) -> MergeReport:
    """XGBLoRA booster step: W += scale * s * B A for each (named) LoRA layer, then start a fresh booster.

    reinit=True: A redrawn from `generator`, B = 0. reinit=False: only B = 0 (the merged delta must leave the
    adapter, or it would count twice), A untouched and `generator` unused; use it when `lora_ga_reinit_` will set
    A and B next. The adapter stays active and trainable. With scale != 1 the model function changes by
    (scale - 1) * delta, as boosting with learning rate eta intends. delta_norm is that of the scaled deltas.
    """
    def fresh(layer: LoraLayer) -> None:
        if reinit:
            reinit_(layer, generator)
        else:
            _lora_AB(layer)[1].data.zero_()

    return _merge_layers(_select_layers(model, layers), scale, fresh, warn_ratio)


@torch.no_grad()
def partial_merge(model: nn.Module, alpha: float, warn_ratio: float = MERGE_WARN_RATIO) -> MergeReport:
    """SuperReLoRA-style partial merge: W += alpha * delta and B *= (1 - alpha); the model function is unchanged.

    Only B is scaled (not A and B), so the adapter keeps exactly (1 - alpha) * delta. Requires 0 < alpha <= 1.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"--lora_merge_alpha {alpha!r}: the partial-merge fraction must be in (0, 1]")
    return _merge_layers(lora_layers(model), alpha, lambda layer: _lora_AB(layer)[1].data.mul_(1.0 - alpha),
                         warn_ratio)


# ----------------------------------------------------------------------------------------------------------------
# Which boosters train


def select_booster_layers(num_blocks: int, k: int, generator: torch.Generator | None) -> list[int]:
    """k distinct block ids, sorted, drawn from `generator`; k == 0 or k == num_blocks means all blocks."""
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks!r}")
    if not 0 <= k <= num_blocks:
        raise ValueError(f"--xgblora_num_layers {k!r}: must be in [0, {num_blocks}] (blocks with LoRA layers)")
    if k in (0, num_blocks):
        return list(range(num_blocks))
    device = generator.device if generator is not None else "cpu"
    return sorted(torch.randperm(num_blocks, generator=generator, device=device)[:k].tolist())


def set_active_blocks(model: nn.Module, blocks: list[int] | None) -> None:
    """Only LoRA params in `blocks` require grad (None: all). Layers with no block index train only when None."""
    layers = lora_layers(model)
    if blocks is not None:
        present = {layer_index(n) for n, _ in layers}
        if missing := sorted(set(blocks) - present):
            raise ValueError(f"blocks {missing} hold no LoRA layer; blocks with LoRA: {sorted(present - {None})}")
    for name, layer in layers:
        on = blocks is None or layer_index(name) in blocks
        for param in _lora_AB(layer):
            param.requires_grad_(on)


def trainable_lora_parameters(model: nn.Module, include_frozen: bool = False) -> list[nn.Parameter]:
    """The LoRA A/B parameters that currently require grad, in model order (all of them if include_frozen)."""
    return [p for _, layer in lora_layers(model) for p in _lora_AB(layer) if include_frozen or p.requires_grad]


# ----------------------------------------------------------------------------------------------------------------
# Saving


def save_adapters(model: PeftModel, path: str | Path) -> None:
    """PEFT `save_pretrained` of the live adapter (boosters already merged live in the base weights, not here)."""
    model.save_pretrained(str(path))


def merged_base_model(model: PeftModel) -> PreTrainedModel:
    """A plain HF model with the live booster merged too (PEFT merge_and_unload; `model` is consumed). 8-bit
    layers (``--load_int8`` on the CPU) are first de-quantised to float32 (``int8.dequantize_``), so the saved
    model holds the weights the run computed with and loads anywhere."""
    int8.dequantize_(model)
    return model.merge_and_unload()


# ----------------------------------------------------------------------------------------------------------------
# LoRA-GA


def _lora_ga_config(direction: str, scale: str, stable_gamma: float) -> LoraGAConfig:
    """PEFT's LoraGAConfig after checking the values, naming the flag of a bad one."""
    if direction not in LORA_GA_DIRECTIONS:
        raise ValueError(f"LoRA-GA direction must be one of {', '.join(LORA_GA_DIRECTIONS)}, got {direction!r}")
    if scale not in LORA_GA_SCALES:
        raise ValueError(f"LoRA-GA scale must be one of {', '.join(LORA_GA_SCALES)}, got {scale!r}")
    if not stable_gamma > 0:
        raise ValueError(f"LoRA-GA stable_gamma must be > 0, got {stable_gamma!r}")
    return LoraGAConfig(direction=direction, scale=scale, stable_gamma=stable_gamma)


@contextmanager
def _private_rng(generator: torch.Generator | None) -> Iterator[None]:
    """Run a block that draws from torch's global RNG (svd_lowrank, randperm) on a fork seeded from `generator`.

    The global CPU/CUDA RNG state is restored afterwards, so dropout and data order are not disturbed.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else "cpu"))
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def _lora_ga_init_layer(layer: LoraLayer, grad: torch.Tensor, config: LoraGAConfig) -> None:
    """Fold the live adapter into W, then PEFT's lora_ga_init (A, B from SVD of grad; W -= s B A).

    PEFT casts A and B to the base weight's dtype; they are cast back to the adapter's own dtype (exact, since
    the values came from the lower precision) so the optimizer's Parameters keep their dtype.
    """
    weight = layer.get_base_layer().weight
    if tuple(grad.shape) != tuple(weight.shape):
        raise ValueError(f"LoRA-GA gradient shape {tuple(grad.shape)} != base weight shape {tuple(weight.shape)}")
    _add_to_base_(layer, delta_weight(layer))
    A, B = _lora_AB(layer)
    dtypes = (A.dtype, B.dtype)
    layer.get_base_layer()._peft_loraga_grad = grad.detach().to(weight.device)
    layer.lora_ga_init(_adapter_name(layer), config)
    A.data, B.data = A.data.to(dtypes[0]), B.data.to(dtypes[1])


def lora_ga_reinit_(
    model: nn.Module,
    grads: dict[str, torch.Tensor],
    direction: str = "ArB2r",
    scale: str = "stable",
    stable_gamma: float = 16,
    generator: torch.Generator | None = None,
) -> None:
    """LoRA-GA (re-)init of the LoRA layers named in `grads` from their base weights' gradient estimates.

    grads: qualified LoRA-layer name (as `lora_layers` gives) -> dL/dW in the base weight's layout. For each
    layer, any live adapter delta is first merged into W, then PEFT's `lora_ga_init` sets A, B from the top
    singular vectors of G and shifts W -= s B A, so the model function is unchanged. Layers not in `grads` are
    left alone. PEFT's randomised SVD runs on a global-RNG fork seeded from `generator`.
    """
    config = _lora_ga_config(direction, scale, stable_gamma)
    selected = _select_layers(model, grads.keys())
    with _private_rng(generator):
        for name, layer in selected:
            _lora_ga_init_layer(layer, grads[name], config)


def _only_grad_on(model: nn.Module, params: list[nn.Parameter]) -> dict[nn.Parameter, bool]:
    """Turn requires_grad off everywhere except `params`; return the previous flags to restore."""
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in saved:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return saved


def _sum_grads(
    model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    weights: dict[str, nn.Parameter],
) -> tuple[dict[str, torch.Tensor], int]:
    """Float32 sums of each weight's gradient over `batches` (one backward per batch), and the batch count."""
    sums = {n: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for n, w in weights.items()}
    count = 0
    for batch in batches:
        with torch.enable_grad():
            loss_fn(model, batch).backward()
        for n, w in weights.items():
            if w.grad is not None:
                sums[n] += w.grad.float()
                w.grad = None
        count += 1
    return sums, count


def estimate_lora_ga_grads_backprop(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    layers: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Mean over `batches` of dL/dW for each (named) LoRA layer's base weight W, by backprop, in float32.

    Only those base weights require grad while it runs; all requires_grad flags are restored afterwards and the
    base weights' .grad is freed. The model's train/eval mode is left as the caller set it.
    """
    weights = {n: layer.get_base_layer().weight for n, layer in _select_layers(model, layers)}
    saved = _only_grad_on(model, list(weights.values()))
    try:
        sums, count = _sum_grads(model, batches, loss_fn, weights)
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
        for w in weights.values():
            w.grad = None
    if count == 0:
        raise ValueError("estimate_lora_ga_grads_backprop: `batches` yielded no batch")
    return {n: s / count for n, s in sums.items()}


# ----------------------------------------------------------------------------------------------------------------
# Folding the adapter into the weight for forward-only (zo) passes


class _FoldHooks:
    """Forward hooks of one adapted base layer: before it runs, its weight's storage is swapped for a new tensor
    ``W + delta``; after, the original storage is swapped back, so ``W`` itself is never written (bit-exact by
    construction). ``delta`` is the LoRA layer's ``get_delta_weight`` (scale, and GPT-2's transposed Conv1D
    layout, included). One add per call: no copy of ``W`` is saved or restored."""

    def __init__(self, layer: LoraLayer, adapter: str):
        self.layer, self.adapter, self.original = layer, adapter, None

    def before(self, module: nn.Module, inputs) -> None:
        self.original = module.weight.data
        # PEFT keeps half-precision models' adapters in float32: the sum is formed at the wider of the two dtypes
        # and rounded once to W's dtype, so the layer's matmul sees the dtype it was built for.
        delta = self.layer.get_delta_weight(self.adapter)
        module.weight.data = torch.add(self.original, delta).to(self.original.dtype)

    def after(self, module: nn.Module, inputs, output) -> None:
        module.weight.data = self.original
        self.original = None


def _nonzero_boosters(layers: list[tuple[str, LoraLayer]]) -> list[tuple[LoraLayer, str]]:
    """Of ``layers`` (``lora_layers``), those whose adapter changes the output (B != 0): frozen or fresh boosters
    are left out."""
    out = []
    for _, layer in layers:
        name = _adapter_name(layer)
        if layer.lora_B[name].weight.count_nonzero():
            out.append((layer, name))
    return out


@contextmanager
def folded_adapters(model: nn.Module) -> Iterator[None]:
    """Forward passes inside run every adapted layer as one plain matmul with ``W + s B A``.

    For zo steps (no backward): PEFT's LoRA path (dropout, two skinny matmuls, scale, add) costs 12-36% of a
    forward on CPU. Here torch's documented module hooks hand each adapted base layer the weight ``W + s B A``
    just before it runs (one new tensor per layer call, so memory stays that of inference) and give it back its
    own ``W`` right after; ``W`` is never written, so the base weights stay bit-identical. PEFT's adapter path is
    switched off with its own ``disable_adapter``; a booster with ``B = 0`` (fresh or frozen) adds exactly
    nothing, so its layer simply runs plain. Scores equal PEFT's within float rounding (the product is summed in
    another order). Dropout must be inactive (eval mode), as it is in a zo step. Not for backprop: no gradient
    reaches ``A`` and ``B`` through the swapped weight.

    8-bit bases (``--load_int8``: ``int8.Int8Linear`` on the CPU, bitsandbytes on CUDA) are not folded: ``W + s B
    A`` would be a float copy of the weight, undoing the saving, so the adapters run unfolded on PEFT's path.
    """
    layers = lora_layers(model) if isinstance(model, PeftModel) else []  # one walk of the model per forward
    if not layers or not all(has_float_weight(layer.get_base_layer()) for _, layer in layers):
        yield
        return
    if any(m.training for m in model.modules()):
        raise ValueError("folded_adapters: the model must be in eval mode (adapter dropout would be skipped)")
    hooks = [(_FoldHooks(layer, name), layer.get_base_layer()) for layer, name in _nonzero_boosters(layers)]
    handles = [h for fold, base in hooks
               for h in (base.register_forward_pre_hook(fold.before), base.register_forward_hook(fold.after))]
    try:
        with adapter_path_off(model, layers):
            yield
    finally:
        for handle in handles:
            handle.remove()
        for fold, base in hooks:  # a forward that raised mid-layer: give that layer its own weight back
            if fold.original is not None:
                fold.after(base, None, None)


@contextmanager
def adapter_path_off(model: PeftModel, layers: list[tuple[str, LoraLayer]]) -> Iterator[None]:
    """Inside, PEFT's own adapter path is off (its ``disable_adapter``): every adapted layer runs its base layer
    alone, and hooks on the base layers add what the adapters contribute. ``layers``: ``lora_layers(model)``.
    Leaving, PEFT re-enables the adapters and marks every active one trainable again; the trainable flags are put
    back as they were, so frozen boosters stay frozen."""
    trainable = [(p, p.requires_grad) for _, layer in layers for p in _lora_AB(layer)]
    try:
        with model.disable_adapter():
            yield
    finally:
        for param, flag in trainable:
            param.requires_grad_(flag)


def merges_row(history: list[dict]) -> dict[str, float]:
    """What a merging callback adds to the logged rows: the merges in ``history`` so far and the last one's |dW|
    (its ``delta_norm``); nothing before the first merge."""
    return {"merges": len(history), "merge_delta_norm": history[-1]["delta_norm"]} if history else {}
