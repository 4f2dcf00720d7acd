"""Prefix tuning as MeZO runs it: ``num_prefix`` trained key/value vectors in front of every attention layer.

Each layer's attention sees ``num_prefix`` extra keys and values before the real tokens. Without
reparameterisation (``--no_reparam``, MeZO's choice) they are parameters of their own, one (heads, num_prefix,
head_dim) tensor per layer for keys and one for values. With it (upstream's optional trick), each layer's keys and
values are two small MLPs (Linear 512 -> 512, Tanh, Linear 512 -> heads * head_dim) applied to ``num_prefix`` input
embeddings of width 512 shared by all layers. ``init_by_real_act`` starts the direct parameters from the keys and
values the model computes for ``num_prefix`` random vocabulary tokens (drawn from a generator the caller seeds).

How the prefix gets into the model: a forward pre-hook on the model (``register_forward_pre_hook``, a documented
torch hook; no ``forward`` is replaced) puts the prefix keys and values in the model's own KV cache before the
real tokens, widens the attention mask by ``num_prefix`` ones on the left, and gives the real tokens positions
counted from 0, as MeZO did by injecting past keys and values at each attention layer. A call that already holds
the prefix in its cache (the continuation of shared-prefix scoring, every decoding step of ``generate``) only gets
its mask widened. So scoring (both layouts), training and generation need nothing prefix-specific.

Why not PEFT's ``PrefixTuningConfig``: (1) it offsets the real tokens' positions by the number of virtual tokens,
where MeZO counts them from 0 (positions move OPT's learned position embeddings and LLaMA's rotary phases, so the
scores would not be MeZO's); (2) its reparameterisation is one MLP from a per-token embedding to all layers' keys
and values, not MeZO's two MLPs per layer on shared embeddings; (3) it builds its own cache on every forward, which
clashes with the cache that shared-prefix scoring passes for the answers' continuation. The cache route here works
for any model with the standard ``Cache`` (OPT, LLaMA-family with grouped-query attention, GPT-2 tested): the
shapes are read from the cache the model returns, not from per-architecture config names.
"""
from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DynamicCache

REPARAM_DIM = 512  # MeZO's width of the reparameterisation embeddings and of the MLPs' hidden layer
ENCODER_NAME = "prefix_encoder"  # the submodule of the model that holds the prefix parameters
WEIGHTS_FILE, CONFIG_FILE = "prefix.safetensors", "prefix_config.json"


def _reparam_mlp(width: int, generator: torch.Generator) -> nn.Sequential:
    """Linear(512, 512) - Tanh - Linear(512, width), initialised as nn.Linear does but from ``generator``."""
    mlp = nn.Sequential(nn.Linear(REPARAM_DIM, REPARAM_DIM), nn.Tanh(), nn.Linear(REPARAM_DIM, width))
    with torch.no_grad():
        for linear in (mlp[0], mlp[2]):
            nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(linear.in_features)
            nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
    return mlp


class PrefixEncoder(nn.Module):
    """The prefix parameters and the per-layer keys and values they give, each (heads, num_prefix, head_dim).

    ``shapes`` holds one (heads, head_dim) pair per layer (for keys and values alike).
    """

    def __init__(self, shapes: list[tuple[int, int]], num_prefix: int, reparam: bool, generator: torch.Generator):
        super().__init__()
        self.shapes, self.num_prefix, self.reparam = [tuple(s) for s in shapes], num_prefix, reparam
        if reparam:
            self.embeds = nn.Parameter(torch.randn(num_prefix, REPARAM_DIM, generator=generator))
            self.key_mlps = nn.ModuleList(_reparam_mlp(h * d, generator) for h, d in self.shapes)
            self.value_mlps = nn.ModuleList(_reparam_mlp(h * d, generator) for h, d in self.shapes)
        else:
            self.keys = nn.ParameterList(torch.randn(h, num_prefix, d, generator=generator) for h, d in self.shapes)
            self.values = nn.ParameterList(torch.randn(h, num_prefix, d, generator=generator) for h, d in self.shapes)

    def config(self) -> dict:
        return {"shapes": [list(s) for s in self.shapes], "num_prefix": self.num_prefix, "reparam": self.reparam}

    def forward(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not self.reparam:
            return list(zip(self.keys, self.values))
        n = self.num_prefix
        return [(k(self.embeds).view(n, h, d).transpose(0, 1), v(self.embeds).view(n, h, d).transpose(0, 1))
                for (h, d), k, v in zip(self.shapes, self.key_mlps, self.value_mlps)]


@torch.no_grad()
def real_activations(model: nn.Module, tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values every layer computes for ``tokens`` (one row, positions from 0), each (heads, T, head_dim),
    in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids=tokens.view(1, -1), use_cache=True)
        cache = out.cache if "cache" in out else out.past_key_values  # the name changed in transformers 5.24
    finally:
        model.train(was_training)
    return [(layer.keys[0].clone(), layer.values[0].clone()) for layer in cache.layers]


def draw_tokens(model: nn.Module, num_prefix: int, generator: torch.Generator | None) -> torch.Tensor:
    """``num_prefix`` token ids drawn uniformly from the vocabulary with ``generator``, on the model's device."""
    device = next(model.parameters()).device
    return torch.randint(0, model.config.vocab_size, (num_prefix,), generator=generator).to(device)


def prefix_encoder(model: nn.Module) -> PrefixEncoder | None:
    """The model's PrefixEncoder, or None when no prefix is attached."""
    return getattr(model, ENCODER_NAME, None)


def prefix_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters prefix tuning trains (empty when no prefix is attached)."""
    encoder = prefix_encoder(model)
    return list(encoder.parameters()) if encoder is not None else []


def attach_prefix(model: nn.Module, num_prefix: int = 5, reparam: bool = False, init_by_real_act: bool = True,
                  generator: torch.Generator | None = None) -> nn.Module:
    """Give ``model`` (a causal LM using the standard KV cache) a trainable prefix, freeze everything else and
    return it (the same object). ``init_by_real_act`` needs ``reparam`` False, as upstream MeZO asserts."""
    if prefix_encoder(model) is not None:
        raise ValueError("this model already has a prefix attached")
    if num_prefix < 1:
        raise ValueError(f"num_prefix must be >= 1, got {num_prefix}")
    if init_by_real_act and reparam:
        raise ValueError("init_by_real_act sets the prefix keys and values directly; it needs reparam=False")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    acts = real_activations(model, draw_tokens(model, num_prefix, generator))
    encoder = PrefixEncoder([(k.shape[0], k.shape[2]) for k, _ in acts], num_prefix, reparam, generator)
    encoder.to(device=acts[0][0].device, dtype=acts[0][0].dtype)
    if init_by_real_act:
        with torch.no_grad():
            for (k, v), key, value in zip(acts, encoder.keys, encoder.values):
                key.copy_(k)
                value.copy_(v)
    _install(model, encoder)
    return model


def _install(model: nn.Module, encoder: PrefixEncoder) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    model.add_module(ENCODER_NAME, encoder)
    encoder.requires_grad_(True)
    model.register_forward_pre_hook(PrefixInjector(model, encoder), with_kwargs=True)


class PrefixInjector:
    """The forward pre-hook: prefix keys/values into the KV cache, mask widened, real positions from 0."""

    def __init__(self, model: nn.Module, encoder: PrefixEncoder):
        params = inspect.signature(model.forward).parameters
        self.cache_key = "cache" if "cache" in params else "past_key_values"  # transformers >= 5.24 calls it cache
        self.takes_cache_position = "cache_position" in params
        self.config, self.encoder = model.config, encoder

    def __call__(self, module, args, kwargs):
        if args:
            raise TypeError("a model with a prefix takes its inputs as keywords (input_ids=..., attention_mask=...)")
        kwargs = dict(kwargs)
        inputs = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        batch, length = inputs.shape[:2]
        cache = kwargs.pop("past_key_values", None)
        cache = kwargs.pop("cache", None) if cache is None else cache
        if cache is None or cache.get_seq_length() == 0:
            cache = self.filled_cache(cache, batch)
        seen = cache.get_seq_length()  # the prefix and any real tokens cached before
        cached = seen - self.encoder.num_prefix
        mask = real_mask(kwargs.get("attention_mask"), batch, cached + length, inputs.device)
        if kwargs.get("position_ids") is None:  # from 0 on each row's first real token, as MeZO's prefix
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, cached:]
        kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, self.encoder.num_prefix), mask], dim=1)
        kwargs[self.cache_key] = cache
        if self.takes_cache_position:  # older transformers 5 releases: where the new tokens go in the cache
            kwargs["cache_position"] = torch.arange(seen, seen + length, device=inputs.device)
        return (), kwargs

    def filled_cache(self, cache, batch: int):
        """``cache`` (empty, e.g. from ``generate``) or a new DynamicCache, holding the prefix for ``batch`` rows."""
        cache = cache if cache is not None else DynamicCache(config=self.config)
        for layer, (keys, values) in enumerate(self.encoder()):
            cache.update(keys.expand(batch, *keys.shape), values.expand(batch, *values.shape), layer)
        return cache


def real_mask(mask: torch.Tensor | None, batch: int, real: int, device) -> torch.Tensor:
    """The caller's 2-D attention mask over the ``real`` tokens (cached and new; all ones when not given)."""
    if mask is None:
        return torch.ones(batch, real, dtype=torch.long, device=device)
    if mask.dim() != 2 or mask.shape[1] != real:
        raise ValueError(f"a model with a prefix needs a 2-D attention mask over the {real} real tokens (cached and "
                         f"new), without the prefix; got shape {tuple(mask.shape)}")
    return mask


def save_prefix(model: nn.Module, path: str | Path) -> None:
    """Write the prefix parameters (safetensors) and their configuration (JSON) into folder ``path``."""
    encoder = prefix_encoder(model)
    if encoder is None:
        raise ValueError("save_prefix: this model has no prefix attached")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}, path / WEIGHTS_FILE)
    config = {**encoder.config(), "base_model": getattr(model, "name_or_path", None)}  # the latter for people
    (path / CONFIG_FILE).write_text(json.dumps(config) + "\n")


def load_prefix(model: nn.Module, path: str | Path) -> nn.Module:
    """Attach the prefix saved in folder ``path`` to ``model`` (the same base model) and return the model."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path}: not a folder written by save_prefix")
    config = json.loads((path / CONFIG_FILE).read_text())
    model = attach_prefix(model, config["num_prefix"], config["reparam"], init_by_real_act=False)
    encoder = prefix_encoder(model)
    if encoder.shapes != [tuple(s) for s in config["shapes"]]:
        raise ValueError(f"the prefix in {path} was made for another model ({config.get('base_model')}): layer "
                         f"shapes (heads, head_dim) {config['shapes']}, this model's {encoder.config()['shapes']}")
    encoder.load_state_dict(load_file(path / WEIGHTS_FILE))
    return model
