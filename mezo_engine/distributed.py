"""What data-parallel training needs of ``torch.distributed``: rank facts, the ZO step's scalar all-reduce, the
stop-flag agreement, sharded evaluation and per-rank checksums. No transformers imports.

Under ``torchrun --nproc_per_node N`` every rank holds the whole model and its own share of each global batch.
A ZO step needs nothing from the other ranks but the two losses: ``weighted_mean`` turns each rank's loss into
the loss of the global batch (sum of loss * weight over ranks / sum of weights, in float64), so every rank
computes the same projected gradient and, from the shared step seed, applies the same update. That is all the
traffic of a ZO step: one all-reduce of two float64 per forward (``weighted_means``: one all-reduce for a
method that gathers several losses of a step first). ``CommCounter`` counts it.

Every function works unchanged in a single process (no process group, or a group of one): the value itself, the
flag itself, the whole list.

A rank that stops without dying (a stuck device, a hung file system, SIGSTOP) would leave the others waiting in
the step's all-reduce until the process group's timeout (the Trainer's ``--ddp_timeout``, 30 minutes). A
``StallGuard`` bounds those waits once it is armed: the all-reduce runs asynchronously and is waited for
``timeout`` seconds; past that, every rank that gave up asks every other for a sign of life on a gloo group of its
own (``missing_ranks``) and raises ``StalledRanks`` naming the ranks that gave none. The collectives between two
steps that this code does not make (the Trainer's gathers when it logs, the next batch's) cannot be waited for
with a bound; ``StallGuard.watch`` bounds that whole stretch instead, from a watchdog thread.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist


def active() -> bool:
    """Whether a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes results and saved models."""
    return rank() == 0


@dataclass
class CommCounter:
    """Bytes and calls of the collectives made through this module (what a rank sends into each all-reduce)."""

    calls: int = 0
    bytes: int = 0

    def add(self, tensor: torch.Tensor) -> None:
        self.calls += 1
        self.bytes += tensor.numel() * tensor.element_size()


class StalledRanks(RuntimeError):
    """A bounded collective waited past its bound; the message names the ranks that did not answer."""


PROBE_S = 30.0  # longest wait for the other ranks' signs of life after a stall


@dataclass
class StallGuard:
    """The bound on the waits of the per-step collectives (``weighted_mean``, ``max_over_ranks``): ``timeout``
    seconds (0: none) while ``armed``. Whoever drives the steps arms it once the ranks have met in a step, and
    disarms it before a wait that may legitimately be long (the first step, the step after a checkpoint save or a
    dev evaluation); those wait as long as the process group allows. ``group``: a gloo group for ``missing_ranks``
    (``StallGuard.open`` makes one, on every rank)."""

    timeout: float = 0.0
    group: object = None
    armed: bool = False
    on_stall: Callable[[StalledRanks], None] | None = None  # what a watch that ran out does (it must not return)
    _watch: threading.Timer | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, timeout: float) -> StallGuard:
        """A guard for this job: with a process group of several ranks and a timeout, its probe group is created
        here, a collective call that every rank must make at the same point."""
        return cls(timeout, dist.new_group(backend="gloo") if active() and timeout else None)

    def wait(self, work, what: str) -> None:
        """Wait for ``work`` (an async collective); armed, at most ``timeout`` seconds, then StalledRanks."""
        if not (self.armed and self.timeout and self.group is not None):
            work.wait()
            return
        try:
            work.wait(timedelta(seconds=self.timeout))
        except RuntimeError as err:
            missing = missing_ranks(self.group, min(self.timeout, PROBE_S))
            raise StalledRanks(f"rank {rank()} waited {self.timeout:g} s in {what}: {_who(missing)}") from err


    def watch(self, what: str) -> None:
        """Bound the time until ``unwatch``: a stretch of the step loop whose collectives this code does not make
        (the Trainer's loss and FLOP gathers when it logs, the next batch's), so that no wait of theirs can be
        bounded. Armed, a watchdog thread that is not cancelled within ``timeout`` seconds asks the other ranks
        for a sign of life and hands ``StalledRanks`` to ``on_stall`` (the main thread is blocked inside the
        collective: it cannot raise)."""
        self.unwatch()
        if self.armed and self.timeout and self.group is not None and self.on_stall is not None:
            self._watch = threading.Timer(self.timeout, self._ran_out, (what,))
            self._watch.daemon = True
            self._watch.start()

    def unwatch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _ran_out(self, what: str) -> None:
        missing = missing_ranks(self.group, min(self.timeout, PROBE_S))
        self.on_stall(StalledRanks(f"rank {rank()} waited {self.timeout:g} s in {what}: {_who(missing)}"))


def _who(missing: list[int]) -> str:
    return (f"rank(s) {', '.join(map(str, missing))} did not answer (stopped, hung or lost)" if missing else
            "every rank answers, but one did not reach it in time")


def missing_ranks(group, timeout: float) -> list[int]:
    """The ranks that give no sign of life within ``timeout`` seconds: each rank that asks sends its number to
    every other over ``group`` (gloo) and waits for theirs; the ranks that also gave up send theirs at the same
    time, a stopped or hung one sends nothing."""
    me = dist.get_rank()
    others = [r for r in range(world_size()) if r != me]
    deadline, missing = time.monotonic() + timeout, set()
    for r in others:
        try:  # not waited for: a stopped peer may never take it
            dist.isend(torch.tensor([me]), r, group=group)
        except RuntimeError:  # the connection is gone: the peer died
            missing.add(r)
    for r in others:
        try:
            work = dist.irecv(torch.zeros(1, dtype=torch.long), r, group=group)
            work.wait(timedelta(seconds=max(deadline - time.monotonic(), 0.001)))
        except RuntimeError:
            missing.add(r)
    return sorted(missing)


def _device() -> torch.device:
    """Where a collective's tensor must live: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def weighted_mean(value: float, weight: float, counter: CommCounter | None = None,
                  guard: StallGuard | None = None, what: str = "the zo step's all-reduce") -> float:
    """The mean of ``value`` over all ranks, each weighted by ``weight``: sum(value * weight) / sum(weight).

    ``value`` is a rank's mean loss over its part of the batch and ``weight`` the count it averages over (examples
    or answer tokens), so the result is the loss of the whole global batch. One all-reduce of two float64; a total
    weight of 0 gives 0 (a batch with nothing counted, as ``scoring.lm_loss`` does). A single process returns
    ``value`` unchanged. ``guard``: the bound on the wait (``StallGuard``; ``what`` names the collective in its
    message).
    """
    return weighted_means([value], weight, counter, guard, what)[0]


def weighted_means(values: Sequence[float], weight: float, counter: CommCounter | None = None,
                   guard: StallGuard | None = None, what: str = "the zo step's all-reduce") -> list[float]:
    """``weighted_mean`` of several values at once (a step's losses at several points, each a mean over the same
    batch with the same ``weight``): one all-reduce of ``len(values) + 1`` float64, its wait bounded by ``guard``."""
    if not active():
        return [float(v) for v in values]
    packed = torch.tensor([float(v) * float(weight) for v in values] + [float(weight)], dtype=torch.float64,
                          device=_device())
    if counter is not None:
        counter.add(packed)
    (guard or StallGuard()).wait(dist.all_reduce(packed, op=dist.ReduceOp.SUM, async_op=True), what)
    *totals, weights = packed.tolist()
    return [total / weights if weights else 0.0 for total in totals]


def max_over_ranks(value: float, counter: CommCounter | None = None, guard: StallGuard | None = None,
                   what: str = "the ranks' agreement after a step") -> float:
    """The largest ``value`` of all ranks (so that every rank takes the same decision, e.g. to stop); ``guard``
    and ``what`` as for ``weighted_mean``."""
    if not active():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    if counter is not None:
        counter.add(tensor)
    (guard or StallGuard()).wait(dist.all_reduce(tensor, op=dist.ReduceOp.MAX, async_op=True), what)
    return tensor.item()


def gather(obj) -> list:
    """``obj`` of every rank, in rank order, on every rank (picklable objects)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(items: Sequence) -> list:
    """This rank's share of ``items``: every ``world_size``-th item from its rank (``unshard`` puts them back)."""
    return list(items[rank()::world_size()])


def unshard(parts: Sequence[Sequence]) -> list:
    """The inverse of ``shard``: the ranks' shares (in rank order) interleaved back into the original order."""
    total = sum(len(p) for p in parts)
    out = [None] * total
    for r, part in enumerate(parts):
        out[r::len(parts)] = list(part)
    return out


def tensors_sha256(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A sha256 of named tensors' names, dtypes, shapes and bytes: equal digests mean bit-identical tensors. A
    sharded tensor (FSDP's DTensor) counts its local shard only."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        value = local.detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
