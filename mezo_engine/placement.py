"""Where a loaded model's weights live: one device, or split over the GPUs (and the CPU) for a model larger than one.

``placement`` decides, ``place`` does it:

* no CUDA: the CPU (nothing moves);
* under torchrun (DDP): the rank's own GPU, ``cuda:<LOCAL_RANK>``; with ``--fsdp``: the CPU, and FSDP moves each
  rank's shard to its GPU;
* ``--no_auto_device``: the whole model on ``cuda:0`` (upstream MeZO's flag);
* otherwise ``auto`` (upstream MeZO's default): accelerate's ``infer_auto_device_map`` spreads the blocks over every
  GPU, each capped at its free memory less ``RESERVE_GIB`` (upstream keeps 5 GB free for activations), and the
  blocks that do not fit stay in CPU memory.

A split model is dispatched with the CPU as accelerate's main device: CPU blocks then *run on the CPU* with their
weights in place. With a GPU as main device accelerate would instead keep those weights in a side dictionary and
stream a copy to the GPU for every forward, leaving a meta tensor as the module's parameter: a ZO perturbation (or
an optimizer step) of that parameter would change nothing. This way every parameter is a real tensor on its own
device, the ZO engine perturbs it there with that device's generator (``zo.generators``), LoRA / XGBLoRA adapters
are created on their base layer's device (PEFT) and merges happen in place. The model's outputs come back on the
device of its inputs.

A model that fits on ``cuda:0`` is simply moved there (no hooks), as ``--no_auto_device`` does. The model is
loaded into CPU memory first and its GPU blocks are moved out of it, so the machine needs CPU memory for the whole
model once (upstream's ``from_pretrained(device_map=...)`` loads blocks straight to their GPUs, but offloads the
CPU blocks as above).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

RESERVE_GIB = 5  # GPU memory left free per device for activations (upstream MeZO: free memory - 5 GB)


def placement(no_auto_device: bool, world_size: int, local_rank: int, cuda: bool, fsdp: bool = False) -> str:
    """``cpu``, ``cuda:<i>`` or ``auto`` (see the module docstring)."""
    if not cuda or (world_size > 1 and fsdp):
        return "cpu"
    if world_size > 1:
        return f"cuda:{local_rank}"
    return "cuda:0" if no_auto_device else "auto"


def memory_caps(free_bytes: Sequence[int], cpu_bytes: int, reserve_gib: int = RESERVE_GIB) -> dict:
    """accelerate's ``max_memory``: GPU ``i`` may take its free memory less ``reserve_gib`` GiB (never below 0),
    the CPU up to ``cpu_bytes``."""
    caps: dict = {i: max(free - reserve_gib * 2**30, 0) for i, free in enumerate(free_bytes)}
    caps["cpu"] = cpu_bytes
    return caps


def cuda_memory_caps() -> dict:
    """``memory_caps`` of this machine: each GPU's free memory now, and all of the CPU memory (the model is in it
    already; what stays there is not copied)."""
    import psutil
    free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
    return memory_caps(free, psutil.virtual_memory().total)


def split_devices(device_map: dict) -> set:
    """The devices of a device map; a 'disk' among them means the model does not fit in GPU and CPU memory."""
    return set(device_map.values())


def place(model, where: str):
    """Put ``model`` (loaded on the CPU) where ``placement`` said; returns the model."""
    if where == "cpu":
        return model
    if where != "auto":
        return model.to(where)
    from accelerate import infer_auto_device_map
    device_map = infer_auto_device_map(model, max_memory=cuda_memory_caps(),
                                       no_split_module_classes=model._no_split_modules or [])
    devices = split_devices(device_map)
    if "disk" in devices:
        raise MemoryError("the model does not fit in GPU and CPU memory together (accelerate would offload "
                          "blocks to disk, which ZO training cannot perturb)")
    if len(devices) == 1:
        return model.to(devices.pop())
    return dispatch(model, device_map)


def dispatch(model, device_map: dict, force_hooks: bool = False):
    """accelerate's ``dispatch_model`` with the CPU as main device when the map has CPU blocks, so that they run on
    the CPU with their weights in place (see the module docstring); the KV cache is never moved between devices.
    ``force_hooks``: attach the hooks even when the map has one device (tests)."""
    from accelerate import dispatch_model
    main = "cpu" if "cpu" in split_devices(device_map) else None
    return dispatch_model(model, device_map=device_map, main_device=main, force_hooks=force_hooks,
                          skip_keys=getattr(model, "_skip_keys_device_placement", None))
