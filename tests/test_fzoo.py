"""FZOO (zo_methods/fzoo.py) and the batched adapter queries it runs on (batched_queries.py), in float64 against the
maths: Rademacher directions, the step by hand on a toy, the normalisation's invariances, the mean of many one-sided
estimates against autograd's gradient, and one batched forward of n copies against n separate forwards."""
import json
import math
import statistics

import pytest
import torch

from large_models import run
from transformers import AutoModelForCausalLM, HfArgumentParser

from large_models.arguments import ArgumentError, Arguments, parse_args
from large_models.tasks import Sample, get_task
from medium_models.scoring import Collator, Feature, LabelLoss
from mezo_engine import batched_queries, lora, zo
from mezo_engine.batched_queries import StepLosses
from mezo_engine.data import TrainCollator, training_feature
from mezo_engine.evaluation import EvalConfig, generate_batch
from mezo_engine.objectives import AnswerLoss, F1Objective
from mezo_engine.zo_methods.fzoo import FZOO, normalised, one_sided
from tests.tiny import make_mlm, make_model, make_tokenizer

# ---- the maths on a toy: L = sum a_i (theta_i - c_i)^2 + sum theta_i^3 / 3 --------------------------------------
A, C = [1.0, 2.0, 0.5, 1.5], [0.3, -0.7, 1.1, 0.0]


def toy_loss(values) -> float:
    return sum(a * (t - c) ** 2 + t**3 / 3 for a, t, c in zip(A, values, C))


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def rademacher(seed: int, n: int) -> list[float]:
    return zo.draw_z([torch.zeros(n, dtype=torch.float64)], seed, zo.RADEMACHER)[0].tolist()


def test_rademacher_directions_are_fair_signs_regenerated_from_the_seed():
    params = [torch.zeros(100, 50, dtype=dt) for dt in (torch.float64, torch.float32, torch.bfloat16)]
    z = zo.draw_z(params, 7, zo.RADEMACHER)
    again = zo.draw_z(params, 7, zo.RADEMACHER)
    for zi, zj, p in zip(z, again, params):
        assert zi.dtype == p.dtype and torch.equal(zi, zj) and set(zi.unique().tolist()) == {-1.0, 1.0}
    plus = int((z[0] == 1).sum())  # Binomial(5000, 1/2): sd 35; 6 sd either side
    assert abs(plus - 2500) < 210
    assert not torch.equal(z[0], z[1].double())  # each parameter its own draw from the stream
    assert not torch.equal(z[0], zo.draw_z(params[:1], 8, zo.RADEMACHER)[0])


def test_one_fzoo_step_is_the_papers_formula_by_hand():
    """N = 5 queries: l_0 at theta, l_i at theta + eps u_i, d_i = (l_i - l_0) / eps, sigma = the sample standard
    deviation of the d_i, theta <- theta (1 - lr wd) - lr / N sum_i (d_i / sigma) u_i. The hand computation takes
    the losses from the closed form, so a missing 1/N, a population std or an extra 1/eps is off by >= 10%."""
    lr, wd, eps, n = 0.1, 0.3, 1e-2, 5
    start = [0.2, -0.4, 0.9, 0.5]
    theta = leaf(start)
    calls = []
    opt = FZOO([theta], lr=lr, weight_decay=wd, num_queries=n)
    loss, pairs = opt.zo_step(lambda: calls.append(1) or toy_loss(theta.tolist()), [123], eps, cache=True)
    assert theta.tolist() == start and len(calls) == n + 1 == opt.forwards_per_step(1)
    opt.step()
    seeds = zo.spread_seeds(123, n)
    us = [rademacher(s, 4) for s in seeds]
    d = [(toy_loss([t + eps * u for t, u in zip(start, ui)]) - toy_loss(start)) / eps for ui in us]
    sigma = statistics.stdev(d)
    want = [t * (1 - lr * wd) - lr / n * sum(di / sigma * ui[k] for di, ui in zip(d, us))
            for k, t in enumerate(start)]
    assert loss == toy_loss(start) and [s for s, _ in pairs] == seeds
    assert [g for _, g in pairs] == pytest.approx([di / sigma for di in d], rel=1e-12)
    assert theta.tolist() == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert opt.state_dict()["state"] == {}  # no state: a resumed run needs the step's seed only


def _step_of(loss, start, eps, seed=5, n=8):
    theta = leaf(start)
    opt = FZOO([theta], lr=0.1, num_queries=n)
    opt.zo_step(lambda: loss(theta), [seed], eps, cache=False)
    opt.step()
    return [t - s for t, s in zip(theta.tolist(), start)]


def test_the_step_does_not_scale_with_the_loss_or_eps():
    """Normalised by sigma, the step of a linear loss is the same for the loss times 1000 and for eps 100x
    smaller (no stray 1/eps or loss scale left); in float64 the rounding of eps*u and of the differences leaves
    ~1e-12 relative."""
    g = torch.tensor([0.5, -2.0, 1.0, 0.25, 3.0], dtype=torch.float64)
    start = [0.1, 0.2, -0.3, 0.4, 0.0]
    base = _step_of(lambda th: float(g @ th.detach()), start, 1e-2)
    assert base == pytest.approx(_step_of(lambda th: 1000.0 * float(g @ th.detach()), start, 1e-2), rel=1e-10)
    assert base == pytest.approx(_step_of(lambda th: float(g @ th.detach()), start, 1e-4), rel=1e-9)
    assert max(abs(b) for b in base) > 1e-3  # the step moved


def test_equal_query_losses_move_nothing():
    theta = leaf([0.3, 0.4])
    opt = FZOO([theta], lr=0.1, num_queries=3)
    _, pairs = opt.zo_step(lambda: 1.0, [1], 1e-3, cache=True)
    opt.step()
    assert theta.tolist() == [0.3, 0.4] and [g for _, g in pairs] == [0.0, 0.0, 0.0]
    assert normalised([2.0, 4.0]) == pytest.approx([2 / math.sqrt(2), 4 / math.sqrt(2)])
    with pytest.raises(ValueError, match="needs 2 or more"):
        normalised([1.0])


# ---- tiny float64 models with LoRA -------------------------------------------------------------------------------
SST2 = [("a gripping , funny film", 1), ("dull and lifeless", 0), ("the best movie", 1), ("a mess", 0)]
COPA = [("The man turned on the faucet.", "Water flowed from the spout.", "The toilet filled."),
        ("I was tired.", "I went to bed.", "The dog barked."),
        ("The girl found a bug in her cereal.", "She lost her appetite.", "She poured milk in the bowl.")]


def _batch(task: str, shared: bool = True) -> dict:
    tokenizer, template = make_tokenizer(merges=True), get_task(task).template
    if task == "SST2":
        samples = [Sample(i, {"sentence": t}, y, [0, 1]) for i, (t, y) in enumerate(SST2)]
    else:
        samples = [Sample(i, {"premise": p, "question": "effect"}, a, [a, b]) for i, (p, a, b) in enumerate(COPA)]
    features = [training_feature(tokenizer, template, s, task == "SST2", 256) for s in samples]
    return TrainCollator(tokenizer.pad_token_id, shared=shared)(features)


def _adapted(kind: str, rank: int = 2, layers: int = 2, seed: int = 1):
    """A float64 tiny model with LoRA of ``rank`` on its default targets, both factors drawn non-zero."""
    model = lora.attach_lora(make_model(kind, layers=layers, dtype=torch.float64), r=rank, alpha=2 * rank)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.trainable_lora_parameters(model):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def _moves(params, copies: int, scale: float = 0.2, seed: int = 4) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[scale * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params] for _ in range(copies)]


def _separately(model, objective, batch, params, moves) -> list[float]:
    """The loss at params + move, one forward each through PEFT's own adapter path."""
    out = []
    with torch.no_grad():
        original = [p.detach().clone() for p in params]
        for move in moves:
            for p, p0, m in zip(params, original, move):
                p.copy_(p0 + m)
            out.append(objective(model, batch).item())
        for p, p0 in zip(params, original):
            p.copy_(p0)
    return out


# The batched forward multiplies (copies, rows x tokens, in) by (copies, in, r) and (copies, r, out) where the
# separate forward runs PEFT's (rows x tokens, in) x (in, r) x (r, out): the same products summed in another
# order and with other kernels, a few float64 ulps (1e-16) per dot product of <= 64 terms, ~1e-14 on a loss of
# ~1; 1e-12 leaves a margin of 100. A wrong copy or a missing delta moves a loss by the queries' spread (> 1e-4).
BATCHED_ATOL = 1e-12


@pytest.mark.parametrize("kind", ["opt", "gpt2", "llama"])
@pytest.mark.parametrize("task, shared, as_classification, only_option", [
    ("SST2", True, True, True), ("Copa", True, False, True), ("Copa", False, False, True),
    ("Copa", False, False, False)])
def test_batched_queries_equal_separate_forwards(kind, task, shared, as_classification, only_option):
    model = _adapted(kind)
    params = lora.trainable_lora_parameters(model)
    objective, batch = AnswerLoss(as_classification, only_option), _batch(task, shared)
    moves = _moves(params, 3)
    before = [p.detach().clone() for p in params]
    got = batched_queries.query_losses(model, objective, batch, params, moves)
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # nothing written
    want = _separately(model, objective, batch, params, moves)
    assert got == pytest.approx(want, abs=BATCHED_ATOL, rel=0)
    assert min(abs(a - b) for i, a in enumerate(want) for b in want[i + 1:]) > 1e-4


def test_batched_queries_with_frozen_boosters_and_zero_moves():
    """XGBLoRA-like: rank-1 boosters, only block 0's train (the others frozen at B = 0 are skipped, as they add
    nothing); a zero move gives the unmoved loss."""
    model = _adapted("opt", rank=1)
    lora.merge_and_reinit(model, generator=torch.Generator().manual_seed(2))  # fresh boosters: B = 0
    lora.set_active_blocks(model, [0])
    params = lora.trainable_lora_parameters(model)
    frozen = [p for p in lora.trainable_lora_parameters(model, include_frozen=True) if not p.requires_grad]
    assert len(params) == 4 and len(frozen) == 4
    objective, batch = AnswerLoss(True), _batch("SST2")
    moves = [[torch.zeros_like(p) for p in params]] + _moves(params, 2)
    got = batched_queries.query_losses(model, objective, batch, params, moves)
    assert got == pytest.approx(_separately(model, objective, batch, params, moves), abs=BATCHED_ATOL, rel=0)
    assert got[0] == pytest.approx(objective(model, batch).item(), abs=BATCHED_ATOL)
    assert not any(p.requires_grad for p in frozen)  # PEFT's re-enabling did not unfreeze them


def test_batched_queries_of_a_masked_lm_label_loss():
    model, tokenizer = make_mlm("roberta", dtype=torch.float64)
    model = lora.attach_lora(model, r=2, alpha=4).eval()
    params = lora.trainable_lora_parameters(model)
    with torch.no_grad():
        for p, m in zip(params, _moves(params, 1, 0.1, seed=9)[0]):
            p.copy_(m)
    mask = tokenizer.mask_token_id
    rows = [[0, 40, 41, mask, 2], [0, 50, mask, 2], [0, 60, 61, 62, mask, 2]]
    batch = Collator(tokenizer.pad_token_id, causal=False)(
        [Feature(r, r.index(mask), i % 2) for i, r in enumerate(rows)])
    objective = LabelLoss(tokenizer.convert_tokens_to_ids(["Ġgreat", "Ġterrible"]), causal=False)
    moves = _moves(params, 3)
    got = batched_queries.query_losses(model, objective, batch, params, moves)
    assert got == pytest.approx(_separately(model, objective, batch, params, moves), abs=BATCHED_ATOL, rel=0)


def test_batched_generation_follows_each_copys_adapter():
    """Greedy generation (the F1 objective's forwards, a KV cache over several steps) of two copies in one batch
    gives each copy the answers of its own adapter values, and F1Objective's copies_loss scores each copy's
    answers: the gold answers are copy 0's own, so copy 0 scores F1 = 1 and copy 1, with other answers, less."""
    model, tokenizer = _adapted("opt", seed=3), make_tokenizer()
    params = lora.trainable_lora_parameters(model)
    rows = _batch("SST2", shared=False)
    ids, mask = rows["input_ids"][:2], rows["attention_mask"][:2]
    cfg, moves = EvalConfig(max_new_tokens=4), _moves(params, 2, scale=3.0)
    with torch.no_grad(), batched_queries.per_copy_adapters(model, params, moves):
        both = generate_batch(model, tokenizer, ids.repeat(2, 1), mask.repeat(2, 1), cfg)
    alone = []
    for move in moves:
        with torch.no_grad():
            for p, m in zip(params, move):
                p.add_(m)
            alone += generate_batch(model, tokenizer, ids, mask, cfg)
            for p, m in zip(params, move):
                p.sub_(m)
    assert both == alone and both[:2] != both[2:] and all(both[:2])
    objective = F1Objective(tokenizer, cfg)
    batch = {"input_ids": ids, "attention_mask": mask, "gold": [[answer] for answer in alone[:2]]}
    got = batched_queries.query_losses(model, objective, batch, params, moves)
    assert got == _separately(model, objective, batch, params, moves) and got[0] == -1.0 < got[1]


def test_batched_queries_refuse_what_they_cannot_vary():
    model = _adapted("opt")
    embedding = model.get_input_embeddings().weight
    with pytest.raises(ValueError, match="LoRA factors only"):
        with batched_queries.per_copy_adapters(model, [embedding], [[torch.zeros_like(embedding)]]):
            pass
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        batched_queries.query_losses(model, AnswerLoss(True), _batch("SST2"), [], [[]])


def test_mean_of_one_sided_estimates_is_the_autograd_gradient():
    """(1/n) sum_i d_i u_i over n = 2000 Rademacher queries of one rank-1 adapter (d = 64) against autograd. Its
    error has expected squared norm about d/n |grad|^2 (each entry's variance is the other entries' squared sum),
    relative ~0.18 here (0.16-0.20 over three seeds), concentrated (a sum of 64 terms); an estimate half as large
    is off by ~0.5, twice as large by ~1.0."""
    model = _adapted("opt", rank=1, layers=1)
    for block in model.base_model.model.model.decoder.layers:
        block.activation_fn = torch.nn.GELU()  # no ReLU kink for the one-sided difference to straddle
    model.eval()
    params = [lora.factors(lora.lora_layers(model)[0][1])[i] for i in (0, 1)]
    for p in lora.trainable_lora_parameters(model):
        p.requires_grad_(any(p is q for q in params))
    objective, batch = AnswerLoss(True), _batch("SST2")
    grad = torch.cat([g.flatten() for g in torch.autograd.grad(objective(model, batch), params)])
    eps, n, seeds = 1e-5, 2000, zo.spread_seeds(17, 2000)
    base = batched_queries.query_losses(model, objective, batch, params, [[torch.zeros_like(p) for p in params]])[0]
    total = torch.zeros_like(grad)
    for chunk in range(0, n, 500):
        us = [torch.cat([z.flatten() for z in zo.draw_z(params, s, zo.RADEMACHER)]) for s in seeds[chunk:chunk + 500]]
        moves = [[z.mul(eps).view_as(p) for z, p in zip(u.split([p.numel() for p in params]), params)] for u in us]
        d = one_sided(base, batched_queries.query_losses(model, objective, batch, params, moves), eps)
        total += sum(di * u for di, u in zip(d, us))
    error = ((total / n - grad).norm() / grad.norm()).item()
    assert grad.numel() == 64 and grad.norm() > 1e-3 and error < 0.3, error


# ---- the optimizer on a model: batched and sequential agree -------------------------------------------------------
def test_batched_and_sequential_steps_agree():
    """The same FZOO step through one batched forward and through N + 1 forwards in turn (PEFT's path): the
    losses agree to 1e-12 (BATCHED_ATOL), the d_i = dl / eps to 1e-9 and the normalised pairs to ~1e-8 (sigma is
    O(0.1) here); the parameters after the step to lr * 1e-8."""
    results = []
    for batched in (True, False):
        model = _adapted("opt")
        params = lora.trainable_lora_parameters(model)
        objective, batch = AnswerLoss(True), _batch("SST2")

        def local(m=model):
            with torch.no_grad():
                return objective(m, batch).item()

        run_batched = (lambda p, d, m=model: batched_queries.query_losses(m, objective, batch, p, d))
        opt = FZOO(params, lr=1e-2, num_queries=4, batched=batched)
        loss, pairs = opt.zo_step(StepLosses(local, batched=run_batched), [9], 1e-3, cache=True)
        opt.step()
        results.append((loss, [g for _, g in pairs], torch.cat([p.detach().flatten() for p in params])))
    (loss_b, g_b, p_b), (loss_s, g_s, p_s) = results
    assert loss_b == pytest.approx(loss_s, abs=BATCHED_ATOL) and g_b == pytest.approx(g_s, abs=1e-7)
    assert max(abs(g) for g in g_b) > 0.5 and (p_b - p_s).abs().max() < 1e-9


# ---- through run.py ----------------------------------------------------------------------------------------------
def _run(tmp_path, model_dir, data_dir, *flags):
    out = tmp_path / "result.json"
    run.main(["--model_name", str(model_dir), "--task_name", "SST2", "--data_dir", str(data_dir),
              "--result_file", str(out), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True",
              "--num_train", "8", "--train_set_seed", "0", "--num_eval", "4", "--max_steps", "2",
              "--per_device_train_batch_size", "4", "--train_as_classification", "--trainer", "zo",
              "--zo_optimizer", "fzoo", "--learning_rate", "1e-3", "--logging_steps", "1", *flags])
    return json.loads(out.read_text())


def _forwards_seen(monkeypatch) -> dict:
    """What the zo steps of a run.py run forward: ``rows``, the first dimension of every model call inside a
    batched query; ``local``, the number of one-at-a-time loss evaluations (``StepLosses.local``)."""
    seen, original, init = {"rows": [], "local": 0}, batched_queries.query_losses, StepLosses.__init__

    def counting(model, objective, batch, params, deltas):
        handle = model.register_forward_pre_hook(lambda m, a, k: seen["rows"].append(k["input_ids"].shape[0]),
                                                 with_kwargs=True)
        try:
            return original(model, objective, batch, params, deltas)
        finally:
            handle.remove()

    def counted_init(self, local, *args, **kwargs):
        def count():
            seen["local"] += 1
            return local()
        init(self, count, *args, **kwargs)
    monkeypatch.setattr(batched_queries, "query_losses", counting)
    monkeypatch.setattr(StepLosses, "__init__", counted_init)
    return seen


@pytest.mark.parametrize("mode", [["--lora", "--lora_r", "2"], ["--xgblora", "--xgblora_steps_per_iteration", "1"]])
def test_fzoo_trains_adapters_through_run_py_in_one_forward_a_step(tmp_path, tiny_opt_dir, sst2_dir, monkeypatch,
                                                                    mode):
    seen = _forwards_seen(monkeypatch)
    result = _run(tmp_path, tiny_opt_dir, sst2_dir, *mode, "--fzoo_num_queries", "3")
    assert result["config"]["zo_optimizer"] == "fzoo" and result["train"]["global_step"] == 2
    # one loss evaluation of 4 copies (the base and 3 queries) a step: SST-2's 4 prompts (shared prefix), then
    # their 8 answers (several byte tokens each) continued from the prompts' cache; nothing one at a time
    assert seen == {"rows": [4 * 4, 4 * 8] * 2, "local": 0}
    assert result["ledger"]["forwards"] == 2 * 4  # the ledger counts the batched pass as its N + 1 forwards
    losses = [h["loss"] for h in result["train"]["log_history"] if "loss" in h]
    assert len(losses) == 2 and len(set(losses)) == 2 and all(math.isfinite(x) for x in losses)
    if "--xgblora" in mode:
        assert result["train"]["boosting"]["num_merges"] == 2  # FZOO keeps no state for a merge to reset


def test_fzoo_trains_the_full_model_through_run_py_in_turn(tmp_path, tiny_opt_dir, sst2_dir, monkeypatch):
    seen = _forwards_seen(monkeypatch)
    result = _run(tmp_path, tiny_opt_dir, sst2_dir, "--save_model")
    assert seen == {"rows": [], "local": 2 * 9}  # nothing batched: N + 1 = 9 forwards a step, one at a time
    assert result["ledger"]["forwards"] == 2 * 9
    before = AutoModelForCausalLM.from_pretrained(tiny_opt_dir)
    after = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model").named_parameters())
    # a step moves every entry by lr * (1/N) sum_i c_i u_i, at most lr * max |c_i| (logged per step); float32
    # rounding of the weights adds a few ulps of entries below 10
    moved = [(after[n] - p).abs().max().item() for n, p in before.named_parameters()]
    bound = 1e-3 * sum(h["projected_grad_abs_max"] for h in result["train"]["log_history"] if "loss" in h)
    assert min(moved) > 0 and max(moved) <= bound + 1e-5, (max(moved), bound)


def test_fzoo_counts_its_forwards_and_sends_one_all_reduce(tmp_path, tiny_opt_dir, sst2_dir):
    args = parse_args(["--trainer", "zo", "--zo_optimizer", "fzoo", "--num_train", "4", "--fzoo_num_queries", "5"])
    opt = FZOO([torch.zeros(2, requires_grad=True)], num_queries=args.fzoo_num_queries)
    assert opt.forwards_per_step(1) == 6
    sent = []
    losses = StepLosses(lambda: 1.0)
    losses.mean_over_ranks = lambda values: sent.append(len(values)) or list(values)
    opt.zo_step(losses, [3], 1e-3, cache=True)
    assert sent == [6]  # the base loss and the five queries, averaged over the ranks at once


@pytest.mark.parametrize("flags, message", [
    (["--fzoo_num_queries", "1"], "--fzoo_num_queries 1: must be >= 2"),
    (["--zo_num_samples", "2"], "--zo_num_samples 2 with --zo_optimizer fzoo: FZOO draws --fzoo_num_queries"),
    (["--zo_perturb", "out_of_place"], "--zo_perturb out_of_place with --zo_optimizer fzoo: only sgd")])
def test_bad_fzoo_flags_are_named(flags, message):
    with pytest.raises(ArgumentError, match=message):
        _validated("--trainer", "zo", "--zo_optimizer", "fzoo", "--num_train", "4", *flags)
    with pytest.raises(ArgumentError, match="--fzoo_batched False: only --zo_optimizer fzoo uses it"):
        _validated("--trainer", "zo", "--num_train", "4", "--fzoo_batched", "False")


def _validated(*flags):
    return HfArgumentParser(Arguments).parse_args_into_dataclasses(args=list(flags))


# ---- MeZO's +eps / -eps pair as one forward (--zo_pair_batched) ------------------------------------------------
@pytest.mark.parametrize("flags", [["--lora", "--zo_optimizer", "sgd"], ["--xgblora", "--xgblora_steps_per_iteration",
                                                                         "2", "--zo_optimizer", "adam"]])
def test_the_pair_as_one_forward_is_the_two_forwards(tmp_path, tiny_opt_dir, sst2_dir, flags):
    """Three ZO steps with each direction's +eps and -eps losses from one forward of two copies, and from two
    forwards: the logged losses (each after the updates before it) and |projected gradients| agree within the
    batched forward's rounding (BATCHED_ATOL on a loss; / (2 eps) on a projected gradient), and both count two
    forwards a step."""
    from tests.task_fixtures import run_zo_sst2
    common = [*flags, "--load_float64", "--max_steps", "3", "--logging_steps", "1", "--learning_rate", "1e-2",
              "--zo_eps", "1e-2", "--report_to", "none"]
    runs = [run_zo_sst2(tmp_path / name, tiny_opt_dir, sst2_dir, *common, *extra)
            for name, extra in (("pair", ["--zo_pair_batched"]), ("apart", []))]
    rows = [[r for r in result["train"]["log_history"] if "loss" in r] for result in runs]
    assert [len(r) for r in rows] == [3, 3] and all(r["ledger"]["forwards"] == 6 for r in runs)
    assert [r["loss"] for r in rows[0]] == pytest.approx([r["loss"] for r in rows[1]], abs=BATCHED_ATOL, rel=0)
    grads = [[r["projected_grad_abs_mean"] for r in rs] for rs in rows]
    assert grads[0] == pytest.approx(grads[1], abs=BATCHED_ATOL / 2e-2, rel=0)
    assert min(grads[1]) > 1e-6  # the steps moved the adapters: the later losses test the updates too


@pytest.mark.parametrize("flags, message", [
    (["--lora", "--zo_optimizer", "fzoo"], "--zo_pair_batched with --zo_optimizer fzoo: only sgd, momentum, adam"),
    ([], "--zo_pair_batched with ft training: only LoRA factors can differ"),
    (["--lora", "--zo_perturb", "out_of_place"], "--zo_pair_batched with --zo_perturb out_of_place: choose one"),
])
def test_the_pair_batched_flag_is_refused_where_it_cannot_batch(flags, message):
    with pytest.raises(ArgumentError, match=message):
        HfArgumentParser(Arguments).parse_args_into_dataclasses(args=["--trainer", "zo", "--zo_pair_batched",
                                                                      *flags])
