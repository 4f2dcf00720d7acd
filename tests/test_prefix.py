"""Prefix tuning (mezo_engine/prefix.py) on tiny OPT, LLaMA (grouped-query attention) and GPT-2 models.

The central check: a prefix made from the real activations of tokens ``t`` makes the model score ``x`` exactly as
the plain model scores ``t + x`` (when ``x``'s positions continue after ``t``), so keys, values, masks and
padding go in where they belong. Then: shared-prefix scoring equals rows, generation equals a greedy loop, save and
reload give the same scores, and end-to-end runs train only the prefix.

The equivalences run in float64: both sides run other shapes (a cache of keys and values against tokens in front;
a shared prompt pass against full rows) and round differently; in float32 logits and scores of size ~5 differed by
a few ulps (4.8e-7 each) against tolerances of 1e-5. float64 rounds 2^-29 = 1.9e-9 times finer, so the same
differences are ~1e-15 and ATOL = 1e-11 leaves a margin of 1000, 10^8 below the wrong-position checks (> 1e-3).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import HfArgumentParser

from large_models import run
from mezo_engine import prefix
from large_models.arguments import ArgumentError, Arguments
from mezo_engine.data import TrainCollator, training_feature
from mezo_engine.evaluation import EvalConfig, candidate_scores
from mezo_engine.scoring import batch_loss, position_ids
from large_models.tasks import get_task
from tests.test_tasks import _write_copa, _write_sst2
from tests.tiny import make_model, make_tokenizer

KINDS = ["opt", "llama", "gpt2"]
F64 = torch.float64
ATOL = 1e-11  # float64 equivalences, see the module docstring
REPO = Path(__file__).resolve().parent.parent


def _prefixed(kind, n=3, seed=1, dtype=torch.float32, **kwargs):
    base = make_model(kind, dtype=dtype)
    return base, prefix.attach_prefix(copy.deepcopy(base), n, generator=torch.Generator().manual_seed(seed),
                                      **kwargs)


def _padded_inputs():
    x = torch.randint(4, 250, (3, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :2] = 0  # left padding
    mask[2, :5] = 0
    return x, mask


@pytest.mark.parametrize("kind", KINDS)
def test_real_activation_init_equals_the_models_keys_and_values(kind):
    base, model = _prefixed(kind, n=4, seed=7)
    tokens = prefix.draw_tokens(base, 4, torch.Generator().manual_seed(7))
    cache = base(input_ids=tokens[None], use_cache=True).past_key_values
    encoder = prefix.prefix_encoder(model)
    assert len(encoder.keys) == len(cache.layers) == 2
    for layer, key, value in zip(cache.layers, encoder.keys, encoder.values):
        assert torch.equal(key, layer.keys[0]) and torch.equal(value, layer.values[0])
    other = prefix.prefix_encoder(_prefixed(kind, n=4, seed=8)[1])  # another seed, other tokens
    assert not torch.equal(other.keys[0], encoder.keys[0])
    assert [p.requires_grad for p in model.parameters()].count(True) == 4  # keys and values of 2 layers


@pytest.mark.parametrize("kind", KINDS)
def test_prefix_of_real_tokens_scores_like_those_tokens_in_front(kind):
    base, model = _prefixed(kind, n=3, dtype=F64)
    t = prefix.draw_tokens(base, 3, torch.Generator().manual_seed(1))
    x, mask = _padded_inputs()
    full = torch.cat([t.expand(3, -1), x], 1)
    full_mask = torch.cat([torch.ones(3, 3, dtype=torch.long), mask], 1)
    after_t = 3 + position_ids(mask)  # x's positions continue after t's 0, 1, 2
    expected = base(input_ids=full, attention_mask=full_mask,
                    position_ids=torch.cat([torch.arange(3).expand(3, -1), after_t], 1)).logits[:, 3:]
    got = model(input_ids=x, attention_mask=mask, position_ids=after_t, use_cache=False).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], rtol=0, atol=ATOL)
    # Without position_ids the real tokens count from 0 (as MeZO's prefix): not the same as after_t ...
    default = model(input_ids=x, attention_mask=mask).logits
    zero_based = model(input_ids=x, attention_mask=mask, position_ids=position_ids(mask)).logits
    assert torch.equal(default, zero_based)
    assert (default - got)[mask.bool()].abs().max() > 1e-3
    # ... and the prefix changes the scores
    assert (default - base(input_ids=x, attention_mask=mask).logits)[mask.bool()].abs().max() > 1e-3


def test_a_mask_that_does_not_cover_the_real_tokens_is_refused():
    model = _random_prefix("opt")
    x, mask = _padded_inputs()
    with pytest.raises(ValueError, match=r"2-D attention mask over the 7 real tokens .* got shape \(3, 10\)"):
        model(input_ids=x, attention_mask=torch.cat([torch.ones(3, 3, dtype=torch.long), mask], 1))


def _data(root):
    _write_sst2(root)
    _write_copa(root)
    return root


def _random_prefix(kind, reparam=False, dtype=torch.float32):
    """A prefix far from real activations (standard normal), so that scores really depend on it."""
    model = prefix.attach_prefix(make_model(kind, dtype=dtype), 3, reparam=reparam, init_by_real_act=False,
                                 generator=torch.Generator().manual_seed(2))
    return model.eval()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["SST2", "Copa"])  # one-token answers; several tokens (the cache continuation)
def test_shared_scoring_equals_rows_with_a_prefix(kind, name, tmp_path, tokenizer):
    task = get_task(name)
    data = _data(tmp_path)
    samples = task.load("validation", data) + task.load("train", data)
    model = _random_prefix(kind, dtype=F64)
    scores = {how: candidate_scores(model, tokenizer, task.template, samples, samples[:1],
                                    EvalConfig(batch_size=3, progress=False, scoring=how))
              for how in ("shared", "rows")}
    for s, r in zip(scores["shared"], scores["rows"]):
        torch.testing.assert_close(torch.tensor(s), torch.tensor(r), rtol=0, atol=ATOL)
    plain = candidate_scores(make_model(kind, dtype=F64), tokenizer, task.template, samples, samples[:1],
                             EvalConfig(batch_size=3, progress=False, scoring="rows"))
    assert max(abs(a - b) for s, p in zip(scores["rows"], plain) for a, b in zip(s, p)) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reparam", [False, True])
def test_training_loss_and_prefix_gradients_equal_rows(kind, reparam, tmp_path):
    """Backprop through the cache: the same loss and the same gradients of every prefix parameter, none elsewhere.
    In float64: gradient entries (|g| <= ~1) carry the loss's relative rounding, ~1e-15, so rtol 1e-9 / atol 1e-12
    leave a margin over 1000."""
    tokenizer, task = make_tokenizer(), get_task("Copa")
    data = _data(tmp_path)
    features = [training_feature(tokenizer, task.template, s, True, 512)
                for s in task.load("train", data) + task.load("validation", data)]
    out = {}
    for shared in (True, False):
        model = _random_prefix(kind, reparam, dtype=F64).train()
        loss = batch_loss(model, TrainCollator(0, shared=shared)(features), True)
        loss.backward()
        assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("prefix_encoder."))
        out[shared] = loss.item(), [p.grad for p in prefix.prefix_parameters(model)]
    assert abs(out[True][0] - out[False][0]) < ATOL
    # reparam: the shared embeddings, and per layer two MLPs of two Linear layers (weight, bias); else keys, values
    assert len(out[True][1]) == (1 + 2 * 2 * 4 if reparam else 2 * 2)
    for a, b in zip(out[True][1], out[False][1]):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _greedy(model, ids, steps):
    """Greedy decoding by full forwards without a cache: the reference for generate()."""
    for _ in range(steps):
        next_id = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], 1)
    return ids


@pytest.mark.parametrize("kind", KINDS)
def test_generate_with_a_prefix_equals_greedy_full_forwards(kind):
    model = _random_prefix(kind)
    prompts = [[5, 70, 71, 72, 9, 11], [40, 41], [100, 101, 102]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
        for row, p in zip(out, prompts):
            assert row[width:].tolist() == _greedy(model, torch.tensor([p]), 5)[0, len(p):].tolist()
        beams = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, num_beams=2, pad_token_id=0)
    assert beams.shape == (3, width + 3)


def test_reparam_computes_keys_and_values_from_shared_embeddings():
    model = _random_prefix("llama", reparam=True)
    encoder = prefix.prefix_encoder(model)
    assert encoder.embeds.shape == (3, prefix.REPARAM_DIM)
    keys, values = encoder()[1]
    assert keys.shape == values.shape == (2, 3, 8)  # LLaMA's 2 key/value heads of width 8
    mlp = encoder.key_mlps[1]
    expected = mlp[2](torch.tanh(mlp[0](encoder.embeds))).view(3, 2, 8).transpose(0, 1)
    torch.testing.assert_close(keys, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="init_by_real_act .* needs reparam=False"):
        prefix.attach_prefix(make_model("opt"), 3, reparam=True, init_by_real_act=True)


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_the_same_scores(kind, tmp_path):
    model = _random_prefix(kind, reparam=kind == "gpt2")
    x, mask = _padded_inputs()
    prefix.save_prefix(model, tmp_path / "prefix")
    config = json.loads((tmp_path / "prefix" / prefix.CONFIG_FILE).read_text())
    assert config["num_prefix"] == 3 and config["reparam"] == (kind == "gpt2")
    loaded = prefix.load_prefix(make_model(kind), tmp_path / "prefix")
    assert torch.equal(loaded(input_ids=x, attention_mask=mask).logits, model(input_ids=x, attention_mask=mask).logits)
    with pytest.raises(ValueError, match="made for another model"):
        prefix.load_prefix(make_model("llama" if kind != "llama" else "opt"), tmp_path / "prefix")
    with pytest.raises(ValueError, match="already has a prefix"):
        prefix.attach_prefix(loaded)


# ---- end to end through run.main ---------------------------------------------------------------------------------

def _run(tmp_path, model_dir, data_dir, trainer, *flags, task="SST2"):
    out = tmp_path / "result.json"
    run.main(["--model_name", str(model_dir), "--task_name", task, "--data_dir", str(data_dir), "--result_file",
              str(out), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True", "--trainer", trainer,
              "--prefix_tuning", "--num_prefix", "4", "--num_train", "8", "--train_set_seed", "0", "--num_eval", "4",
              "--max_steps", "3", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
              "--zo_eps", "1e-1", "--logging_steps", "1", "--save_model", *flags])
    return json.loads(out.read_text())


def _spy_models(monkeypatch):
    seen = []
    real = run.evaluate_sharded

    def spy(model, *args, **kwargs):
        seen.append(model)
        return real(model, *args, **kwargs)
    monkeypatch.setattr(run, "evaluate_sharded", spy)
    return seen


def _sst2_scores(model, samples):
    task = get_task("SST2")
    return candidate_scores(model, make_tokenizer(), task.template, samples, [], EvalConfig(progress=False))


@pytest.mark.parametrize("trainer", ["zo", "regular"])
def test_training_moves_only_the_prefix_and_a_reload_predicts_the_same(trainer, tmp_path, tiny_model_dir, sst2_dir,
                                                                       monkeypatch):
    from transformers import AutoModelForCausalLM
    seen = _spy_models(monkeypatch)
    lr = "1.0" if trainer == "zo" else "1e-2"  # zo: a projected gradient ~1e-2 on these tiny models; Adam moves ~lr
    result = _run(tmp_path, tiny_model_dir, sst2_dir, trainer, "--train_as_classification", "--learning_rate", lr)
    assert result["mode"] == "prefix" and result["status"] == "completed" and result["train"]["global_step"] == 3
    assert result["config"]["zo_fold_adapters"] is True  # a LoRA option: a no-op here
    trained = seen[-1]
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base = {n: p for n, p in trained.named_parameters() if not n.startswith(prefix.ENCODER_NAME + ".")}
    assert base.keys() == dict(fresh.named_parameters()).keys()
    assert all(torch.equal(p, fresh.get_parameter(n)) for n, p in base.items())  # base weights bit-identical
    start = prefix.attach_prefix(copy.deepcopy(fresh), 4, generator=torch.Generator().manual_seed(42))  # --seed 42
    moved = [(a - b).abs().max().item() for a, b in zip(prefix.prefix_parameters(trained),
                                                        prefix.prefix_parameters(start))]
    assert len(moved) == 4 and min(moved) > 0  # every prefix tensor trained
    samples = get_task("SST2").load("validation", sst2_dir)[:4]
    after = _sst2_scores(trained, samples)
    assert max(abs(a - b) for s, t in zip(after, _sst2_scores(start, samples)) for a, b in zip(s, t)) > 1e-5
    reloaded = prefix.load_prefix(fresh, tmp_path / "out" / "prefix")
    assert _sst2_scores(reloaded, samples) == after
    assert not (tmp_path / "out" / "model").exists()  # the base model is not copied


def test_generation_task_trains_and_generates_with_a_prefix(tmp_path, tiny_opt_dir, squad_dir):
    result = _run(tmp_path, tiny_opt_dir, squad_dir, "zo", "--max_new_tokens", "4", "--learning_rate", "1e-2",
                  task="SQuAD")
    assert result["mode"] == "prefix" and 0.0 <= result["eval"]["f1"] <= 1.0
    assert len(result["eval_predictions"]) == 4


@pytest.mark.parametrize("flags, message", [
    (["--prefix_tuning", "--xgblora"], "--prefix_tuning: cannot be combined with --xgblora"),
    (["--prefix_tuning", "--lora"], "--prefix_tuning: cannot be combined with --lora"),
    (["--prefix_tuning", "--trainer", "none"], "--prefix_tuning with --trainer none: nothing would train"),
    (["--prefix_tuning", "--num_prefix", "0"], "--num_prefix 0: must be >= 1"),
    (["--prefix_tuning", "--no_reparam", "False"], "--prefix_init_by_real_act with --no_reparam False"),
])
def test_bad_prefix_combinations_are_refused(flags, message):
    base = ["--trainer", "zo", "--num_train", "4"]
    with pytest.raises(ArgumentError) as err:
        HfArgumentParser(Arguments).parse_args_into_dataclasses(args=base + flags)
    assert message in str(err.value)


def test_defaults_are_mezos():
    (args,) = HfArgumentParser(Arguments).parse_args_into_dataclasses(
        args=["--trainer", "zo", "--num_train", "4", "--prefix_tuning"])
    assert (args.num_prefix, args.no_reparam, args.prefix_init_by_real_act, args.mode) == (5, True, True, "prefix")


@pytest.mark.slow
def test_mezo_driver_mode_prefix(tmp_path, tiny_opt_dir, sst2_dir):
    out = tmp_path / "r.json"
    env = {"MODEL": str(tiny_opt_dir), "TASK": "SST2", "MODE": "prefix", "DATA_DIR": str(sst2_dir), "STEPS": "2",
           "TRAIN": "8", "DEV": "4", "EVAL": "4", "EVAL_STEPS": "2", "BS": "4", "SAVE_STEPS": "1"}
    proc = subprocess.run(["bash", "mezo.sh", "--result_file", str(out), "--disable_tqdm", "True"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads(out.read_text())["config"]
    assert (config["prefix_tuning"], config["num_prefix"], config["no_reparam"], config["prefix_init_by_real_act"]) \
        == (True, 5, True, True)
    assert (config["learning_rate"], config["zo_eps"]) == (1e-3, 1e-1)  # MeZO's advice for prefix tuning
    assert config["tag"] == "mezo-prefix-2-4-1e-3-1e-1-0"
