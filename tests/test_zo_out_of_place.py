"""--zo_perturb out_of_place: forward hooks form W + eps z as each module runs; the weights change only in the update.

What the design promises, checked with exact equality on tiny models (CPU) in fp32, fp16 and bf16:
* the losses at +eps and -eps equal those of an out-of-place reference (a copy of the model whose weights are set
  to ``torch.add(W, z, alpha=+-eps)``, z regenerated from ``param_seed``), bit for bit; tied embeddings included;
* no forward writes a weight: the storage of every weight keeps its address and values before, during (checked
  inside the LM head's forward, while its weight is swapped) and after each forward;
* k steps at lr > 0 equal a float64 replay of the same updates: theta <- to_dtype(float64(theta) * (1 - lr*wd) -
  (lr*g) * float64(z)), from the replay's own stored weights, g from the reference losses, converted once a step.
The in-place path's restore by arithmetic does drift in fp16 / bf16 (shown, so the difference is real).
"""
import copy

import pytest
import torch
from transformers import HfArgumentParser

from large_models.arguments import ArgumentError, Arguments, parse_args
from large_models.pipeline import objective_for
from large_models.tasks import Sample, get_task
from mezo_engine import zo, zo_out_of_place as oop
from mezo_engine.data import TrainCollator, training_feature
from mezo_engine.scoring import batch_loss
from mezo_engine.trainer import MezoTrainer
from tests.tiny import make_model, make_tokenizer

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (family, tie): OPT and GPT-2 (Conv1D layers) tie the LM head to the input embeddings; LLaMA both ways.
MODELS = [("opt", None), ("gpt2", None), ("llama", False), ("llama", True)]
EPS = 1e-3


def _model(kind: str, tie, dtype):
    config = {} if tie is None else {"tie": tie}
    return make_model(kind, seed=0, dtype=dtype, **config)


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 200, (3, 12), generator=torch.Generator().manual_seed(seed))


def _loss_fn(model, ids: torch.Tensor):
    def loss() -> float:
        with torch.no_grad():
            return model(input_ids=ids, labels=ids).loss.item()
    return loss


def _params(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _z(p: torch.Tensor, seed: int, i: int) -> torch.Tensor:
    """z of parameter ``i`` as the design defines it: standard normal in p's dtype from ``param_seed(seed, i)``."""
    return torch.randn(p.shape, generator=torch.Generator().manual_seed(oop.param_seed(seed, i)), dtype=p.dtype)


def _reference_loss(model, ids, seed: int, scale: float) -> float:
    """The loss of a copy of ``model`` whose weights are W + scale * z, set before the forward."""
    ref = copy.deepcopy(model)  # deepcopy keeps tied weights tied: one Parameter, perturbed once
    with torch.no_grad():
        for i, p in enumerate(_params(ref)):
            p.copy_(torch.add(p, _z(p, seed, i), alpha=scale))
    return _loss_fn(ref, ids)()


class GuardedLoss:
    """A loss function that checks, at every forward, that no weight is written: each parameter's storage keeps its
    address and values before and after, and inside the LM head's forward (hooked after the perturbation hooks, so
    the head then runs on a swapped weight) the stored values are still the original ones."""

    def __init__(self, model, ids):
        self.model, self.loss, self.swaps_seen, self.values = model, _loss_fn(model, ids), 0, []

    def _check(self, storages, clones) -> None:
        for s, c in zip(storages, clones):
            assert torch.equal(s, c), "a weight's stored values changed during a forward"

    def __call__(self) -> float:
        params = _params(self.model)
        storages, ptrs = [p.data for p in params], [p.data_ptr() for p in params]
        clones = [s.clone() for s in storages]
        head = self.model.get_output_embeddings()
        own = head.weight.data_ptr()

        def inside(module, inputs):
            self.swaps_seen += head.weight.data_ptr() != own  # the head runs on W + eps z ...
            self._check(storages, clones)  # ... while every stored weight keeps its values
        handle = head.register_forward_pre_hook(inside)  # registered inside the step: runs after the swap
        try:
            value = self.loss()
        finally:
            handle.remove()
        assert [p.data_ptr() for p in params] == ptrs
        self._check(storages, clones)
        self.values.append(value)
        return value


def test_param_z_is_reproducible_per_parameter_and_leaves_the_global_rng_alone():
    p = torch.zeros(4, 3)
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a, b = oop.param_z(p, 11, 2), oop.param_z(p, 11, 2)
    assert torch.equal(torch.rand(1), before) and torch.equal(a, b)
    assert torch.equal(a, _z(p, 11, 2))
    seeds = {oop.param_seed(s, i) for s in range(50) for i in range(50)}
    assert len(seeds) == 2500 and all(0 <= s < 2**63 - 1 for s in seeds)  # no two (seed, index) share a stream
    assert not torch.equal(a, oop.param_z(p, 11, 3)) and not torch.equal(a, oop.param_z(p, 12, 2))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("kind, tie", MODELS, ids=[f"{k}-tie{t}" for k, t in MODELS])
def test_losses_equal_the_out_of_place_reference_bit_for_bit(kind, tie, dtype):
    model, ids, seed = _model(kind, tie, dtype), _ids(), zo.step_seed(0, 3)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (tie is not False)  # the tied cases really share one Parameter between two modules
    guarded = GuardedLoss(model, ids)
    loss_pos, loss_neg = oop.two_losses(model, _params(model), guarded, seed, EPS)
    assert loss_pos == _reference_loss(model, ids, seed, EPS)
    assert loss_neg == _reference_loss(model, ids, seed, -EPS)
    assert loss_pos != loss_neg and guarded.swaps_seen == 2  # the perturbation reached the head in both forwards


def _replay_step(model, ids, seed: int, rates) -> float:
    """One step of the float64 replay on ``model``: g from the reference losses, then each weight set to
    to_dtype(float64(theta) * (1 - lr*wd) - (lr*g) * float64(z)) from its stored value. Returns g."""
    g = zo.projected_grad(_reference_loss(model, ids, seed, EPS), _reference_loss(model, ids, seed, -EPS), EPS)
    with torch.no_grad():
        for i, (p, (lr, wd)) in enumerate(zip(_params(model), rates)):
            new = p.double() * (1.0 - lr * wd) - (lr * g) * _z(p, seed, i).double()
            p.copy_(new.to(p.dtype))
    return g


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("kind, tie", [("opt", None), ("llama", False)], ids=["opt-tied", "llama"])
def test_k_steps_equal_a_float64_replay_rounded_once_per_update(kind, tie, dtype, monkeypatch):
    monkeypatch.setattr(oop, "CHUNK", 100)  # several chunks per weight, the last one short
    model, ids = _model(kind, tie, dtype), _ids(1)
    replay, start = copy.deepcopy(model), [p.detach().clone() for p in _params(model)]
    rates = [(1e-2, 0.1 if p.dim() == 2 else 0.0) for p in _params(model)]
    guarded = GuardedLoss(model, ids)
    for step in range(3):
        seed = zo.step_seed(7, step)
        result = oop.fused_sgd_step(model, _params(model), guarded, seed, EPS, rates)
        assert result.projected_grad == _replay_step(replay, ids, seed, rates)
    for p, q, p0 in zip(_params(model), _params(replay), start):
        assert torch.equal(p, q)
    changed = sum(int((p != p0).sum()) for p, p0 in zip(_params(model), start))
    assert changed > 0.5 * sum(p.numel() for p in start)  # the updates moved most weights: the test can fail


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_in_place_restore_drifts_in_half_precision_out_of_place_does_not(dtype):
    """At lr 0 a step must leave the weights as they were: out of place it does, bit for bit; in place the
    +eps, -2eps, +eps arithmetic leaves some weights an ulp or more off."""
    model, ids = _model("opt", None, dtype), _ids(2)
    start = [p.detach().clone() for p in _params(model)]
    in_place = copy.deepcopy(model)
    zo.zo_step(_params(in_place), _loss_fn(in_place, ids), seed=5, eps=EPS, lr=0.0)
    oop.zo_step(model, _params(model), _loss_fn(model, ids), seed=5, eps=EPS, lr=0.0)
    assert all(torch.equal(p, p0) for p, p0 in zip(_params(model), start))
    drifted = sum(int((p != p0).sum()) for p, p0 in zip(_params(in_place), start))
    assert drifted > 0


def test_a_parameter_no_module_owns_is_refused():
    model = make_model("llama")
    stray = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"parameters \[1\] \(of 2\) belong to no module"):
        oop.two_losses(model, [next(model.parameters()), stray], lambda: 0.0, seed=1, eps=EPS)


def test_a_forward_that_raises_gives_every_weight_back():
    model, ids = make_model("opt"), _ids()
    params = _params(model)
    ptrs = [p.data_ptr() for p in params]

    def boom() -> float:
        with torch.no_grad():
            model.model.decoder.layers[1].self_attn.k_proj.register_forward_pre_hook(  # after the swap
                lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
            return model(input_ids=ids).logits.sum().item()
    with pytest.raises(RuntimeError, match="boom"):
        oop.two_losses(model, params, boom, seed=1, eps=EPS)
    assert [p.data_ptr() for p in params] == ptrs


# ---- the trainer and the flag -------------------------------------------------------------------------------------

def _trainer_setup(*flags: str):
    tokenizer, task = make_tokenizer(), get_task("SST2")
    samples = [Sample(i, {"sentence": t}, i % 2, [0, 1]) for i, t in enumerate(["a joy", "dull", "great fun"])]
    batch = TrainCollator(tokenizer.pad_token_id)(
        [training_feature(tokenizer, task.template, s, True, 64) for s in samples])
    args = parse_args(["--trainer", "zo", "--num_train", "3", "--output_dir", "/tmp/x", "--train_as_classification",
                       "--report_to", "none", "--learning_rate", "1e-2", "--use_cpu", "True", *flags])
    model = make_model("opt")
    trainer = MezoTrainer(model=model, args=args, processing_class=tokenizer,
                          objective=objective_for(args, tokenizer, task), evaluator=None)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    return trainer, model, batch


def test_trainer_step_with_zo_perturb_out_of_place_is_the_pure_step():
    trainer, model, batch = _trainer_setup("--zo_perturb", "out_of_place")
    expected = copy.deepcopy(model)

    def loss() -> float:
        with torch.no_grad():
            return batch_loss(expected, batch, as_classification=True).item()
    want = oop.zo_step(expected, _params(expected), loss, seed=zo.step_seed(trainer.args.seed, 0), eps=1e-3,
                       lr=1e-2)
    got = trainer.training_step(model, batch)
    trainer.optimizer.step()  # the Trainer's loop calls it; nothing is pending
    assert got.item() == pytest.approx(want.loss, abs=0) and trainer.args.zo_perturb == "out_of_place"
    assert all(torch.equal(p, q) for p, q in zip(_params(model), _params(expected)))
    assert not torch.equal(model.lm_head.weight, make_model("opt").lm_head.weight)


@pytest.mark.parametrize("flags, message", [
    (["--trainer", "zo", "--lora"], "--zo_perturb out_of_place with lora training: for full-parameter"),
    (["--trainer", "zo", "--head_tuning"], "--zo_perturb out_of_place with head training"),
    (["--trainer", "zo", "--zo_optimizer", "adam"], "--zo_perturb out_of_place with --zo_optimizer adam: only sgd"),
    (["--trainer", "zo", "--zo_num_samples", "2"], "--zo_perturb out_of_place with --zo_num_samples 2: one direction"),
    (["--trainer", "regular"], "--zo_perturb out_of_place with --trainer regular: only --trainer zo uses it"),
])
def test_zo_perturb_refuses_combinations_by_name(flags, message):
    argv = ["--task_name", "SST2", "--num_train", "4", "--zo_perturb", "out_of_place", *flags]
    with pytest.raises(ArgumentError) as err:
        HfArgumentParser(Arguments).parse_args_into_dataclasses(args=argv)
    assert message in str(err.value)


def test_zo_perturb_unknown_value_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--task_name", "SST2", "--trainer", "zo", "--zo_perturb", "sideways"])
    err = capsys.readouterr().err
    assert "--zo_perturb" in err and "sideways" in err and "out_of_place" in err
    assert parse_args(["--task_name", "SST2"]).zo_perturb == "in_place"  # the default keeps MeZO's path
