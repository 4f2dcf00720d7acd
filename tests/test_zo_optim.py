"""ZO optimizers (zo_methods/), the SPSA estimator and n-SPSA: hand computations on toys, bit-for-bit equality of
the fused step and the optimizer path, checkpoints of the optimizer state, and training runs on tiny models."""
import copy
import io
import math

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import HfArgumentParser

from large_models import run
from mezo_engine import lora, zo
from large_models.arguments import ArgumentError, Arguments
from mezo_engine.zo_methods.spsa import num_samples
from mezo_engine.scoring import batch_loss
from large_models.tasks import Sample, get_task
from mezo_engine.trainer import DivergenceError, zo_optimizer
from mezo_engine.zo_methods.adam import ZOAdam
from mezo_engine.zo_methods.momentum import ZOSGDMomentum
from mezo_engine.zo_methods.sgd import ZOSGD
from tests.tiny import make_model, make_tokenizer

# ---- a closed-form toy: three parameters, L = sum a_i (theta_i - c_i)^2 + sum theta_i^3 / 3 ---------------------
A, C = [1.0, 2.0, 0.5], [0.3, -0.7, 1.1]


def toy_loss(values) -> float:
    return sum(a * (t - c) ** 2 + t**3 / 3 for a, t, c in zip(A, values, C))


def leaf(t: torch.Tensor) -> torch.Tensor:
    """A trainable copy: ZO optimizers step the tensors that require grad (frozen boosters do not)."""
    return t.detach().clone().requires_grad_(True)


def toy():
    theta = leaf(torch.tensor([0.2, -0.4, 0.9], dtype=torch.float64))
    return theta, (lambda: toy_loss(theta.tolist()))


def hand_grad(theta: list, z: list, eps: float) -> float:
    plus = [t + eps * zi for t, zi in zip(theta, z)]
    minus = [t - eps * zi for t, zi in zip(theta, z)]
    return (toy_loss(plus) - toy_loss(minus)) / (2 * eps)


def z_of(seed: int) -> list:
    return zo.draw_z([torch.zeros(3, dtype=torch.float64)], seed)[0].tolist()


def run_toy(opt_cls, seeds, zo_eps=1e-3, **kwargs):
    theta, loss = toy()
    opt = opt_cls([theta], **kwargs)
    for seed in seeds:
        opt.add_estimate(zo.estimate([theta], loss, [seed], zo_eps))
        opt.step()
    return theta.tolist(), opt


def test_adam_matches_a_hand_computation():
    # eps = 0.1 and a large weight decay make upstream's placement of eps and of the decoupled decay visible.
    lr, (b1, b2), adam_eps, wd, seeds = 0.1, (0.8, 0.95), 0.1, 0.5, [11, 12, 13]
    got, opt = run_toy(ZOAdam, seeds, lr=lr, betas=(b1, b2), eps=adam_eps, weight_decay=wd)
    theta, m, v = toy()[0].tolist(), [0.0] * 3, [0.0] * 3
    for t, seed in enumerate(seeds, start=1):
        z = z_of(seed)
        g = hand_grad(theta, z, 1e-3)
        m = [b1 * mi + (1 - b1) * g * zi for mi, zi in zip(m, z)]
        v = [b2 * vi + (1 - b2) * (g * zi) ** 2 for vi, zi in zip(v, z)]
        step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        theta = [th - step * mi / (math.sqrt(vi) + adam_eps) for th, mi, vi in zip(theta, m, v)]
        theta = [th - lr * wd * th for th in theta]
    assert got == pytest.approx(theta, rel=1e-9, abs=1e-12)
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert float(state["step"]) == 3 and state["exp_avg"].tolist() == pytest.approx(m, rel=1e-9)
    assert state["exp_avg_sq"].tolist() == pytest.approx(v, rel=1e-9)


def test_momentum_matches_a_hand_computation():
    lr, mu, wd, seeds = 0.05, 0.9, 0.1, [21, 22, 23]
    got, opt = run_toy(ZOSGDMomentum, seeds, lr=lr, momentum=mu, weight_decay=wd)
    theta, buf = toy()[0].tolist(), [0.0] * 3
    for seed in seeds:
        z = z_of(seed)
        g = hand_grad(theta, z, 1e-3)
        buf = [mu * b + g * zi + wd * th for b, zi, th in zip(buf, z, theta)]
        theta = [th - lr * b for th, b in zip(theta, buf)]
    assert got == pytest.approx(theta, rel=1e-9, abs=1e-12)
    assert opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"].tolist() == pytest.approx(buf, rel=1e-9)


def test_n_spsa_averages_the_directions():
    lr, wd, seeds = 0.1, 0.2, [5, 6, 7]
    theta, loss = toy()
    before = theta.tolist()
    pairs = zo.estimate([theta], loss, seeds, 1e-3, cache=True)
    assert theta.tolist() == before  # restored bit for bit
    assert [s for s, _ in pairs] == seeds
    for (seed, g), expected in zip(pairs, [zo.estimate([theta], loss, [s], 1e-3, cache=True)[0][1] for s in seeds]):
        assert g == expected  # each direction's estimate is the one-seed estimate
    opt = ZOSGD([theta], lr=lr, weight_decay=wd)
    opt.add_estimate(pairs)
    opt.step()
    mean = [sum(g * z_of(s)[i] for s, g in pairs) / 3 for i in range(3)]
    assert theta.tolist() == pytest.approx([t - lr * (wd * t + d) for t, d in zip(before, mean)], rel=1e-12)
    opt.step()  # nothing pending: no change
    assert theta.tolist() == pytest.approx([t - lr * (wd * t + d) for t, d in zip(before, mean)], rel=1e-12)


def test_sample_seeds_and_the_sample_schedule():
    seeds = zo.sample_seeds(3, 7, 4)
    assert seeds[0] == zo.step_seed(3, 7) and len(set(seeds)) == 4
    assert zo.sample_seeds(3, 7, 2) == seeds[:2]  # a direction's seed does not depend on how many are drawn
    assert [num_samples("linear", 4, s, 10) for s in range(10)] == [1, 1, 1, 1, 1, 2, 2, 2, 3, 3]
    assert [num_samples("constant", 4, s, 10) for s in (0, 9)] == [4, 4]
    with pytest.raises(ValueError, match="sample scheduler 'power' unknown"):
        num_samples("power", 4, 0, 10)


# ---- one seed: the fused step, the optimizer path and today's zo_step agree bit for bit ---------------------------
def _two_tensors(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [leaf(torch.randn(5, 3, generator=g).to(dtype)), leaf(torch.randn(4, generator=g).to(dtype))]


def _nonlinear_loss(params):
    return lambda: float(sum((p.detach().sin() * (i + 1)).sum() for i, p in enumerate(params)))


@pytest.mark.parametrize("cache", [False, True])
def test_one_seed_estimate_then_step_equals_zo_step(cache):
    old, new = _two_tensors(), _two_tensors()
    result = zo.zo_step(old, _nonlinear_loss(old), seed=4, eps=1e-2, lr=0.1, weight_decay=0.3, decay=[True, False],
                        cache=cache)
    opt = ZOSGD([{"params": [new[0]], "weight_decay": 0.3}, {"params": [new[1]], "weight_decay": 0.0}], lr=0.1)
    pairs = zo.estimate(opt.zo_params(), _nonlinear_loss(new), [4], 1e-2, cache=cache)
    assert pairs == [(4, result.projected_grad)]
    opt.add_estimate(pairs)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(old, new))
    assert not torch.equal(old[0], _two_tensors()[0])


def _model_and_loss(variant: str):
    torch.manual_seed(0)
    model = make_model("opt")
    if variant == "lora":
        model = lora.attach_lora(model, r=2, alpha=4)
        for _, layer in lora.lora_layers(model):  # a non-zero B: the forwards depend on every adapter parameter
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.1)
    else:
        model.requires_grad_(True)
    ids = torch.tensor([[5, 60, 61, 62, 70, 80, 90]])

    def loss() -> float:
        with torch.no_grad():
            return float(model(input_ids=ids).logits.float().pow(2).mean())

    return model.eval(), loss


@pytest.mark.parametrize("variant, cache", [("full", False), ("lora", True)])
def test_fused_step_equals_the_optimizer_path_on_a_model(variant, cache):
    (fused_model, fused_loss), (path_model, path_loss) = _model_and_loss(variant), _model_and_loss(variant)
    fused = ZOSGD([p for p in fused_model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.01)
    path = ZOSGD([p for p in path_model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.01)
    before = copy.deepcopy(path_model.state_dict())
    for seed in (3, 4):
        result = fused.fused_step(fused_loss, seed, eps=1e-3, cache=cache)
        fused.step()  # what the Trainer's loop calls next: nothing is pending, so nothing changes
        pairs = zo.estimate(path.zo_params(), path_loss, [seed], 1e-3, cache=cache)
        assert pairs == [(seed, result.projected_grad)]
        path.add_estimate(pairs)
        path.step()
    a, b = fused_model.state_dict(), path_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(b[k], before[k]) for k in b)


def test_fused_step_refuses_pending_estimates():
    opt = ZOSGD(_two_tensors(), lr=0.1)
    opt.add_estimate([(1, 0.5)])
    with pytest.raises(RuntimeError, match="estimates pending"):
        opt.fused_step(lambda: 0.0, 2, 1e-3)


# ---- state in state_dict, LR from param_groups --------------------------------------------------------------------
@pytest.mark.parametrize("cls, kwargs", [(ZOSGDMomentum, {"momentum": 0.8}), (ZOAdam, {"betas": (0.5, 0.9)})])
def test_state_dict_round_trip_continues_identically(cls, kwargs):
    params = _two_tensors()
    opt = cls([{"params": [params[0]], "weight_decay": 0.1}, {"params": [params[1]]}], lr=0.05, **kwargs)
    for seed, g in ((1, 0.7), (2, -1.3)):
        opt.add_estimate([(seed, g)])
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    fresh = [leaf(p) for p in params]
    loaded = cls([{"params": [fresh[0]], "weight_decay": 0.1}, {"params": [fresh[1]]}], lr=0.05, **kwargs)
    loaded.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    cold_params = [leaf(p) for p in params]
    cold = cls([{"params": [cold_params[0]], "weight_decay": 0.1}, {"params": [cold_params[1]]}], lr=0.05, **kwargs)
    for o in (opt, loaded, cold):
        o.add_estimate([(3, 0.4)])
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(params, fresh))
    assert not torch.equal(params[0], cold_params[0])  # without the state the step differs


@pytest.mark.parametrize("cls", [ZOSGD, ZOSGDMomentum, ZOAdam])
def test_the_lr_comes_from_param_groups(cls):
    """In float64: h - s and b - s each carry the rounding of s + step, up to 0.75 ulp of |s| < 4 together
    (6.7e-16; in float32 2.4e-7, above the old atol 1e-7), so atol 1e-14 has a margin of 15, while an lr that is
    not halved is off by 0.5 |b - s| > 5e-4."""
    base, halved = _two_tensors(dtype=torch.float64), _two_tensors(dtype=torch.float64)
    start = [p.detach().clone() for p in base]
    opt_base, opt_halved = cls(base, lr=0.1), cls(halved, lr=0.1)
    scheduler = LambdaLR(opt_halved, lambda step: 0.5**step)
    opt_halved.step()  # nothing pending: no change, but the scheduler expects a step before its own
    scheduler.step()
    assert opt_halved.param_groups[0]["lr"] == pytest.approx(0.05)
    for o in (opt_base, opt_halved):
        o.add_estimate([(9, 2.0)])
        o.step()
    for b, h, s in zip(base, halved, start):
        torch.testing.assert_close(h - s, 0.5 * (b - s), rtol=0, atol=1e-14)
        assert (b - s).abs().max() > 1e-3


def test_hyperparameters_out_of_range_are_named():
    with pytest.raises(ValueError, match="momentum 1.0: must be in"):
        ZOSGDMomentum(_two_tensors(), momentum=1.0)
    with pytest.raises(ValueError, match="beta2 1.5: must be in"):
        ZOAdam(_two_tensors(), betas=(0.9, 1.5))


# ---- flags --------------------------------------------------------------------------------------------------------
def _parse(*flags) -> Arguments:
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(args=list(flags))
    return args


def test_upstream_names_are_aliases():
    args = _parse("--trainer", "zo", "--num_train", "4", "--zero_order_sample", "3",
                  "--zero_order_sample_scheduler", "linear")
    assert (args.zo_num_samples, args.zo_sample_scheduler) == (3, "linear")
    defaults = _parse("--trainer", "zo", "--num_train", "4")
    assert (defaults.zo_optimizer, defaults.zo_momentum, defaults.zo_num_samples, defaults.zo_sample_scheduler) == (
        "sgd", 0.9, 1, "constant")


@pytest.mark.parametrize("flags, message", [
    (["--trainer", "regular", "--zo_optimizer", "adam"],
     "--zo_optimizer adam with --trainer regular: only --trainer zo uses it"),
    (["--trainer", "none", "--zero_order_sample", "2"], "--zero_order_sample 2 with --trainer none"),
    (["--trainer", "regular", "--zo_momentum", "0.5"], "--zo_momentum 0.5 with --trainer regular"),
    (["--trainer", "zo", "--zo_momentum", "0.5"], "--zo_momentum 0.5: only --zo_optimizer momentum uses it (not sgd)"),
    (["--trainer", "zo", "--zo_optimizer", "momentum", "--zo_momentum", "1.2"], "--zo_momentum 1.2: must be in [0, 1)"),
    (["--trainer", "zo", "--zo_num_samples", "0"], "--zo_num_samples 0: must be >= 1"),
    (["--trainer", "zo", "--zo_sample_scheduler", "linear"], "linear with --zo_num_samples 1"),
    (["--trainer", "zo", "--zo_num_samples", "2", "--zero_order_sample", "3"],
     "--zero_order_sample 3 and --zo_num_samples 2: the same setting twice"),
    (["--trainer", "zo", "--zo_optimizer", "adam", "--adam_beta2", "1.0"], "--adam_beta2 1.0: must be in [0, 1)"),
])
def test_bad_zo_flags_name_the_flag_and_value(flags, message):
    with pytest.raises(ArgumentError) as err:
        _parse("--num_train", "4", *flags)
    assert message in str(err.value)


# ---- inside the Trainer -------------------------------------------------------------------------------------------
TEXTS = ["a gripping , funny film", "dull and lifeless", "the best movie of the year", "a mess", "warm and wise",
         "boring", "a joy to watch", "painfully slow"]
SAMPLES = [Sample(i, {"sentence": t, "label": (i + 1) % 2}, (i + 1) % 2, [0, 1]) for i, t in enumerate(TEXTS)]


def _trainer(tmp_path, *flags):
    base = ["--task_name", "SST2", "--output_dir", str(tmp_path), "--per_device_train_batch_size", "4",
            "--num_train", "8", "--train_as_classification", "--learning_rate", "1e-2", "--logging_steps", "1",
            "--seed", "3", "--disable_tqdm", "True", "--lr_scheduler_type", "constant", "--report_to", "none",
            "--trainer", "zo"]
    args = _parse(*base, *flags)
    torch.manual_seed(args.seed)
    return run.build_trainer(args, get_task("SST2"), make_model("opt"), make_tokenizer(), SAMPLES, [])


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("optimizer, mode", [("adam", "--lora"), ("momentum", "--lora"), ("momentum", None)])
def test_training_with_momentum_and_adam(tmp_path, optimizer, mode):
    trainer = _trainer(tmp_path, "--zo_optimizer", optimizer, "--max_steps", "3", *([mode] if mode else []))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    opt = zo_optimizer(trainer.optimizer)
    assert type(opt) is {"adam": ZOAdam, "momentum": ZOSGDMomentum}[optimizer]
    losses = _losses(trainer)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses) and len(set(losses)) > 1
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, before[name]) != (name in trained), name  # trained ones moved, frozen ones are intact
    key = "exp_avg" if optimizer == "adam" else "momentum_buffer"
    assert all(torch.count_nonzero(opt.state[p][key]) > 0 for p in opt.zo_params())


def _no_grad_loss(model, batch) -> float:
    with torch.no_grad():
        return batch_loss(model, batch, True, True).item()


def test_default_trainer_step_is_todays_zo_step_bit_for_bit(tmp_path):
    """--zo_optimizer sgd, one sample: the fused step over the model's trainable parameters in model order, with
    weight decay only on the decayed ones, exactly as zo.zo_step was called before the ZO optimizers existed."""
    trainer = _trainer(tmp_path, "--max_steps", "2", "--weight_decay", "0.5")
    reference = copy.deepcopy(trainer.model)
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    assert len(zo_optimizer(trainer.optimizer).param_groups) > 2  # runs of decayed / undecayed parameters
    batch = trainer.data_collator(trainer.train_dataset[:4])
    named = [(n, p) for n, p in reference.named_parameters() if p.requires_grad]
    decay = set(trainer.get_decay_parameter_names(reference))
    for step in (0, 1):
        trainer.state.global_step = step
        trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()  # nothing pending after the fused step
        zo.zo_step([p for _, p in named], lambda: _no_grad_loss(reference, batch), seed=zo.step_seed(3, step),
                   eps=1e-3, lr=1e-2, weight_decay=0.5, decay=[n in decay for n, _ in named])
    a, b = trainer.model.state_dict(), reference.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_linear_sample_schedule_runs_the_forwards_it_says(tmp_path):
    # 4 steps, n = 4, linear: 1, 1, 2, 3 directions -> 2 + 2 + 4 + 6 forwards.
    trainer = _trainer(tmp_path, "--max_steps", "4", "--zo_num_samples", "4", "--zo_sample_scheduler", "linear")
    calls = []
    handle = trainer.model.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():  # forwards of the model per loss evaluation (the shared-prefix loss may take more than one)
        trainer.compute_loss(trainer.model, trainer.data_collator(trainer.train_dataset[:4]))
    per_loss, calls[:] = len(calls), []
    trainer.train()
    handle.remove()
    assert per_loss >= 1 and len(calls) == 14 * per_loss and len(_losses(trainer)) == 4


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
@pytest.mark.parametrize("steps, merged", [("2", True), ("1", False)])
def test_booster_state_is_zero_after_a_merge(tmp_path, optimizer, steps, merged):
    trainer = _trainer(tmp_path, "--xgblora", "--xgblora_steps_per_iteration", "2", "--max_steps", steps,
                       "--zo_optimizer", optimizer)
    trainer.train()
    opt = zo_optimizer(trainer.optimizer)
    states = [opt.state[p] for p in lora.trainable_lora_parameters(trainer.model, include_frozen=True)]
    assert all(states)
    nonzero = [torch.count_nonzero(v) > 0 for s in states for v in s.values()]
    assert not any(nonzero) if merged else all(nonzero)


def test_a_non_finite_loss_or_estimate_stops_the_run_on_the_optimizer_path(tmp_path):
    """The NaN check itself: the checks of a finite blow-up (which would stop this run first) are off."""
    trainer = _trainer(tmp_path, "--zo_optimizer", "momentum", "--zo_num_samples", "2", "--learning_rate", "1e6",
                       "--max_steps", "30", "--diverge_loss_ratio", "0", "--diverge_zero_grad_steps", "0")
    with pytest.raises(DivergenceError, match=r"diverged at step \d+: (loss|projected_gradient) (nan|inf|-inf)"):
        trainer.train()
    assert 1 <= trainer.state.global_step < 30
