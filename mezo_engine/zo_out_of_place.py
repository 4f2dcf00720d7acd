"""The MeZO step with out-of-place perturbation (``--zo_perturb out_of_place``): the weights change only in the update.

The in-place step (``zo.fused_sgd_step`` without ``cache``) moves the weights to theta + eps z, theta - eps z and
back by arithmetic; in fp16 / bf16 (and by an ulp in fp32) the way back does not land on theta, so full-parameter
training drifts a little every step. Here no forward writes a weight: hooks on each module that owns a perturbed
parameter form ``W + eps z`` just before the module runs and give it back its own ``W`` right after (as
``lora.folded_adapters`` forms ``W + s B A``). The update is the only write, once per step:

    theta <- to_dtype( float64(theta) * (1 - lr*wd) - (lr*g) * float64(z) )

evaluated in float64 from the stored theta and z (``lr*wd`` and ``lr*g`` are Python floats) and converted once to
theta's dtype (torch's conversion; fp16 / bf16 pass through float32 there). So k steps equal a float64 replay of
the same updates, bit for bit.

z is drawn per parameter from its own seed, ``param_seed(step seed, index in the list)``, not from one generator
over the list as the in-place path draws it (another stream, so runs differ from in-place ones). It does not
depend on the order the modules run in, and a parameter that two modules share (tied input embeddings and LM head)
gets the same z in both uses: each use regenerates it.

Memory: while a module runs, one new tensor per perturbed parameter it owns (``W + eps z`` is written into z's own
buffer), freed when it returns: the peak is that of inference plus about the largest weight. The update visits one
parameter at a time with a float64 scratch of ``CHUNK`` elements (``CUDA_CHUNK`` on a GPU, where each chunk costs a
few kernel launches: OPT-1.3B in 2^18-element chunks took 4.1x the in-place step on an H200).

Assumes every perturbed parameter is used inside the forward of a module that owns it (``_parameters``), as
transformers models use them; ``perturbed_forwards`` refuses parameters no module of the model owns. Forward only:
no gradient flows through the swapped weights.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from mezo_engine import zo

CHUNK = 1 << 18  # elements of a parameter updated at a time on the CPU (a 2 MiB float64 scratch)
CUDA_CHUNK = 1 << 22  # on a GPU: two 32 MiB float64 scratches, far below a large model's largest weight
_MASK64 = 2**64 - 1


def param_seed(seed: int, index: int) -> int:
    """The seed of the z of the ``index``-th parameter under the step seed ``seed``: splitmix64 of the two, so
    that nearby seeds and indices give unrelated streams."""
    x = (int(seed) * 0x9E37_79B9_7F4A_7C15 + int(index) + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58_476D_1CE4_E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D0_49BB_1331_11EB) & _MASK64
    return (x ^ (x >> 31)) % (2**63 - 1)


def param_z(param: torch.Tensor, seed: int, index: int) -> torch.Tensor:
    """z of one parameter: standard normal in its dtype and on its device, from ``param_seed(seed, index)``."""
    gen = zo.make_generator(param.device, param_seed(seed, index))
    return torch.randn(param.shape, generator=gen, device=param.device, dtype=param.dtype)


def perturbed(weight: torch.Tensor, z: torch.Tensor, scale: float) -> torch.Tensor:
    """``weight + scale * z`` as ``torch.add`` rounds it, written into z's buffer (z is consumed; no other tensor)."""
    return torch.add(weight, z, alpha=scale, out=z)


@torch.no_grad()
def exact_sgd_update_(param: torch.Tensor, z: torch.Tensor, grad: float, lr: float, weight_decay: float) -> None:
    """In place, chunk by chunk: theta <- to_dtype(float64(theta) * (1 - lr*wd) - (lr*grad) * float64(z))."""
    keep, step = 1.0 - lr * weight_decay, lr * grad
    chunk = CUDA_CHUNK if param.is_cuda else CHUNK
    for p, zc in zip(param.view(-1).split(chunk), z.view(-1).split(chunk)):
        p64 = p.double()
        if weight_decay:
            p64.mul_(keep)
        p.copy_(p64.sub_(zc.double().mul_(step)))


@torch.no_grad()
def update_(params: Sequence[torch.Tensor], seed: int, grad: float, rates: zo.Rates) -> None:
    """The SGD update of every parameter along its regenerated z (``exact_sgd_update_``)."""
    for i, (p, (lr, wd)) in enumerate(zip(params, rates)):
        exact_sgd_update_(p, param_z(p, seed, i), grad, lr, wd)


class _Hooks:
    """The pre / post forward hooks: before a module runs, each perturbed parameter it owns (not already swapped by
    an enclosing module) gets the storage ``W + scale z``; after, its own storage back."""

    def __init__(self, params: Sequence[torch.Tensor], seed: int, scale: float):
        self.index = {id(p): i for i, p in enumerate(params)}
        self.seed, self.scale = seed, scale
        self.own: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (parameter, its own storage)
        self.calls: list[list[int]] = []  # per running module, the parameters its pre-hook swapped

    def before(self, module: torch.nn.Module, inputs) -> None:
        swapped = []
        for p in module.parameters(recurse=False):
            key = id(p)
            if key in self.index and key not in self.own:
                self.own[key] = (p, p.data)
                p.data = perturbed(p.data, param_z(p, self.seed, self.index[key]), self.scale)
                swapped.append(key)
        self.calls.append(swapped)

    def after(self, module: torch.nn.Module, inputs, output) -> None:
        for key in self.calls.pop():
            p, own = self.own.pop(key)
            p.data = own

    def restore(self) -> None:
        """Give every parameter still swapped (a forward that raised) its own storage back."""
        for p, own in self.own.values():
            p.data = own
        self.own.clear()
        self.calls.clear()


def owners(model: torch.nn.Module, params: Sequence[torch.Tensor]) -> list[torch.nn.Module]:
    """The modules of ``model`` that own one of ``params``; raises ValueError if some parameter has no owner."""
    wanted = {id(p) for p in params}
    found = [m for m in model.modules() if any(id(p) in wanted for p in m.parameters(recurse=False))]
    owned = {id(p) for m in found for p in m.parameters(recurse=False)}
    if missing := [i for i, p in enumerate(params) if id(p) not in owned]:
        raise ValueError(f"zo out of place: parameters {missing[:5]} (of {len(params)}) belong to no module of the "
                         "model, so no hook could perturb them")
    return found


@contextmanager
def perturbed_forwards(model: torch.nn.Module, params: Sequence[torch.Tensor], seed: int, scale: float,
                       modules: Sequence[torch.nn.Module] | None = None) -> Iterator[None]:
    """Forwards inside see every parameter of ``params`` at ``W + scale * z(seed)``; no weight is written.
    ``modules``: ``owners(model, params)``, if already known."""
    hooks = _Hooks(params, seed, scale)
    handles = []
    try:
        for m in owners(model, params) if modules is None else modules:
            handles += [m.register_forward_pre_hook(hooks.before),
                        m.register_forward_hook(hooks.after, always_call=True)]
        yield
    finally:
        for handle in handles:
            handle.remove()
        hooks.restore()


def two_losses(model: torch.nn.Module, params: Sequence[torch.Tensor], loss_fn: Callable[[], float], seed: int,
               eps: float) -> tuple[float, float]:
    """The losses at theta + eps z and theta - eps z, the weights untouched."""
    modules = owners(model, params)
    losses = []
    for scale in (eps, -eps):
        with perturbed_forwards(model, params, seed, scale, modules):
            losses.append(float(loss_fn()))
    return losses[0], losses[1]


def fused_sgd_step(model: torch.nn.Module, params: Sequence[torch.Tensor], loss_fn: Callable[[], float], seed: int,
                   eps: float, rates: zo.Rates) -> zo.StepResult:
    """One ZO-SGD step on ``params`` (parameters of ``model``) with per-parameter ``rates``: two forwards with
    hooks, then the update, the only write (``exact_sgd_update_``)."""
    loss_pos, loss_neg = two_losses(model, params, loss_fn, seed, eps)
    grad = zo.projected_grad(loss_pos, loss_neg, eps)
    update_(params, seed, grad, rates)
    return zo.StepResult(loss_pos, grad, seed)


def zo_step(model: torch.nn.Module, params: Sequence[torch.Tensor], loss_fn: Callable[[], float], seed: int,
            eps: float, lr: float, weight_decay: float = 0.0, decay: Sequence[bool] | None = None) -> zo.StepResult:
    """``zo.zo_step``'s signature, out of place (``model`` first): one LR, weight decay where ``decay`` is True."""
    return fused_sgd_step(model, params, loss_fn, seed, eps, zo.rates_for(len(params), lr, weight_decay, decay))
