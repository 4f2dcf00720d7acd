"""scripts/benchmark.py and its package scripts/bench: the quick mode end to end (JSON complete, ratios
consistent), its upstream-style step, and that its steps cover the parameters the trainer's step perturbs.

No timing assertions: only that every measurement exists, is positive and finite, and that each ratio is the
stated quotient of the stored numbers.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmark
from bench import masked_lm, step, suite, upstream, workload
from bench.report import ratio_specs
from mezo_engine import lora
from mezo_engine.evaluation import score_features
from mezo_engine.trainer import zo_optimizer
from mezo_engine.zo_params import zo_params
from tests.tiny import float64_norms

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "benchmark.py"
VARIANTS = ("full", "lora", "xgblora")
F64_ATOL = 1e-11  # float64 scores near 5, see _tiny_setup
TIME_KEYS = [f"{kind}/{v}" for v in VARIANTS for kind in ("forward", "zo_step", "zo_step_forwards", "zo_overhead",
                                                           "naive_forward", "naive_step", "naive_step_forwards",
                                                           "trainer_step")]
TIME_KEYS += ["eval_batched", "eval_single", "eval_single_trimmed", "merge/xgblora"] + [f"ref/{v}" for v in VARIANTS]
TIME_KEYS += ["forward_folded/lora", "forward_folded/xgblora", "forward_plain/lora", "forward_plain/xgblora"]
TIME_KEYS += ["zo_step_oop/full", "zo_step_oop_forwards/full"]  # --zo_perturb out_of_place
MEMORY_KEYS = ["full:infer", "full:zo", "full:naive", "full:zo_oop", "full:infer_plus_largest_weight", "lora:infer",
               "lora:zo"]
TARGETED = [f"zo_step_over_two_forwards/{v}" for v in VARIANTS] + [f"naive_over_ours/{v}" for v in VARIANTS] + [
    "peak_memory_zo_over_inference/full", "peak_memory_zo_over_inference/lora", "merge_over_forward/xgblora",
    "eval_batched_speedup"] + [f"zo_step_over_ref/{v}" for v in VARIANTS] + [
    "folded_forward_over_plain/lora", "folded_forward_over_plain/xgblora"] + [
    f"trainer_step_over_zo_step/{v}" for v in VARIANTS] + [
    "zo_step_oop_over_zo_step/full", "peak_memory_oop_over_budget/full"]


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_quick_json_has_every_time_and_memory(quick_result):
    result, _ = quick_result
    assert set(TIME_KEYS) <= set(result["times"])
    for key in TIME_KEYS:
        t = result["times"][key]
        assert _positive(t["median"]) and len(t["samples"]) >= 1 and all(_positive(s) for s in t["samples"])
        assert t["min"] <= t["median"] <= t["max"]
        assert _positive(t["cpu_median"]) and len(t["cpu_samples"]) == len(t["samples"])
    assert set(MEMORY_KEYS) <= set(result["memory"])
    for key in MEMORY_KEYS:
        assert _positive(result["memory"][key]["peak_bytes"])


@pytest.mark.slow
def test_quick_ratios_are_quotients_of_stored_values(quick_result):
    result, _ = quick_result
    assert set(TARGETED) <= set(result["ratios"])

    def value(ref):
        kind, key = ref.split(":", 1)
        return result["times"][key]["median"] if kind == "t" else result["memory"][key]["peak_bytes"]

    for key, r in result["ratios"].items():
        assert _positive(r["value"]), key
        assert r["value"] == pytest.approx(value(r["num"]) / (r["factor"] * value(r["den"])), rel=1e-12), key
        if r["num"].startswith("t:"):
            num, den = (result["times"][ref[2:]]["cpu_median"] for ref in (r["num"], r["den"]))
            assert r["value_cpu_time"] == pytest.approx(num / (r["factor"] * den), rel=1e-12), key
    for v in VARIANTS:
        r = result["ratios"][f"zo_step_over_two_forwards/{v}"]
        times = result["times"]
        assert r["value"] == pytest.approx(times[f"zo_step/{v}"]["median"] / (2 * times[f"forward/{v}"]["median"]))
        for kind in ("zo_step", "naive_step"):  # a step's own forwards are timed inside it
            inner, outer = times[f"{kind}_forwards/{v}"]["samples"], times[f"{kind}/{v}"]["samples"]
            assert all(i <= o for i, o in zip(inner, outer))
    for key in TARGETED:
        assert result["ratios"][key]["target"] and isinstance(result["ratios"][key]["pass"], bool), key


@pytest.mark.slow
def test_quick_out_of_place_rows(quick_result):
    """i: the out-of-place step's time is its own (its two forwards timed inside it), and its memory budget is the
    inference peak plus the tiny config's largest weight: the 260 x 32 float32 embedding (or LM head)."""
    result, stdout = quick_result
    times, memory = result["times"], result["memory"]
    inner, outer = times["zo_step_oop_forwards/full"]["samples"], times["zo_step_oop/full"]["samples"]
    assert all(i <= o for i, o in zip(inner, outer))
    budget = memory["full:infer_plus_largest_weight"]
    assert budget["largest_weight_bytes"] == 260 * 32 * 4
    assert budget["peak_bytes"] == memory["full:infer"]["peak_bytes"] + budget["largest_weight_bytes"]
    assert "i: out-of-place ZO step (--zo_perturb out_of_place) / in-place ZO step (full) | " in stdout
    assert result["ratios"]["zo_step_oop_over_zo_step/full"]["target"] == "<= 1.1"


@pytest.mark.slow
def test_quick_zo_optimizer_state_is_one_and_two_parameter_copies(quick_result):
    result, stdout = quick_result
    states = result["zo_optimizer_state"]
    assert set(states) == {"full", "lora"}
    assert states["lora"]["trainable_params"] < states["full"]["trainable_params"]
    for s in states.values():
        assert s["trainable_bytes"] == 4 * s["trainable_params"]  # float32
        assert s["momentum_bytes"] == s["trainable_bytes"]  # one buffer per trainable parameter
        assert s["adam_bytes"] == 2 * s["trainable_bytes"] + 4 * s["trainable_tensors"]  # two, and a float32 step each
    assert "h: ZO momentum state, extra memory (full" in stdout and "h: ZO-Adam state, extra memory (lora" in stdout


@pytest.mark.slow
def test_quick_prints_table_and_meta(quick_result):
    result, stdout = quick_result
    assert "| measurement | value | value from CPU time | target | pass/fail |" in stdout
    meta = result["meta"]
    assert meta["model"] == "tiny" and meta["device"] == "cpu" and meta["threads"] >= 1
    assert len(result["table"]) >= len(TARGETED)


def _resolved(*flags: str):
    """The benchmark's settings for ``--quick --device cpu`` and ``flags``, resolved as the script resolves them."""
    args = benchmark.parse_args(["--quick", "--device", "cpu", *flags])
    device, dtype = suite.resolve(args)
    return args, device, dtype


def _tiny_setup():
    """The tiny benchmark model in float64 (RMSNorm too), for the equivalences below: the two sides run other
    layouts and kernels, which in float32 round by a few ulps of losses and scores near 5 (4.8e-7 each). float64
    rounds 2^-29 = 1.9e-9 times finer, ~1e-15, so F64_ATOL = 1e-11 (rel 1e-12 on losses near 1) leaves a margin of
    1000 while a wrong position or answer token changes them by orders of magnitude more."""
    args, device, dtype = _resolved("--examples", "3")
    ctx = workload.make_context(args, device, dtype)
    model = float64_norms(workload.build_model("tiny", torch.float64, device, seed=0))
    return ctx, model, workload.make_batch(ctx.features, ctx.pad_id, device, shared=False)


def test_naive_loss_equals_the_trainer_loss():
    """Upstream's loss on its rows equals the trainer's loss on both layouts (rows, and the shared prefix)."""
    ctx, model, batch = _tiny_setup()
    shared = workload.make_batch(ctx.features, ctx.pad_id, torch.device("cpu"))
    assert "prompt_ids" in shared and "input_ids" not in shared
    naive = upstream.naive_loss_fn_for(model, batch)()
    assert naive == pytest.approx(workload.loss_fn_for(model, batch)(), rel=1e-12)
    assert naive == pytest.approx(workload.loss_fn_for(model, shared)(), rel=1e-12)


def test_naive_step_with_zero_lr_restores_the_parameters():
    """Upstream's out-of-place p + eps z - 2 eps z + eps z rounds three times at |p| + eps |z| <= 1.01 (the norm
    weights are 1): <= 1.5 float64 ulps of 1 = 3.3e-16 per entry, far inside 1e-14; a step that moved the
    parameters (lr 0 ignored, or z redrawn with another seed) would move them by ~eps |z| ~ 1e-3."""
    ctx, model, batch = _tiny_setup()
    named = [(n, p) for n, p in model.named_parameters()]
    before = [p.detach().clone() for _, p in named]
    upstream.naive_step(named, upstream.naive_loss_fn_for(model, batch), seed=3, eps=1e-3, lr=0.0, wd=0.0)
    for (name, p), p0 in zip(named, before):
        torch.testing.assert_close(p.detach(), p0, rtol=0, atol=1e-14, msg=name)


def test_upstream_row_scores_equal_the_batched_scores():
    """The "one row at a time" baseline scores the same examples as the batched shared-prefix evaluation."""
    ctx, model, _ = _tiny_setup()
    rows = [r for f in ctx.features for r in f.rows]
    lens = [n for f in ctx.features for n in f.option_lens]
    single = upstream.upstream_row_scores(model, rows, lens, torch.device("cpu"))
    batched = [s for per in score_features(model, ctx.features, ctx.pad_id, batch_size=2) for s in per]
    assert len(single) == len(rows) == 2 * len(ctx.features)
    assert single == pytest.approx(batched, abs=F64_ATOL)


def test_benchmark_adapters_are_live():
    """The timed adapters have B != 0 (as after a step), so the folded forward really folds."""
    args, device, _ = _resolved()
    model = workload.attach_variant(workload.build_model("tiny", torch.float32, device, 0), "lora", args)
    layers = lora.lora_layers(model)
    assert layers and all(layer.lora_B[a].weight.abs().min() > 0 for _, layer in layers for a in layer.active_adapters)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_benchmark_steps_the_parameters_the_trainer_steps(variant):
    """What the benchmark's steps perturb, in z's order, with which weight decay and cache choice, is what the
    trainer's ZO optimizer perturbs (the trainer the benchmark times for g.), weight decay on."""
    args, device, dtype = _resolved("--weight-decay", "0.1")
    ctx = workload.make_context(args, device, dtype)
    model = workload.variant_model(variant, ctx)
    zp, optimizer = zo_params(model), zo_optimizer(step.zo_trainer(model, ctx).optimizer)
    assert [id(p) for p in zp.params] == [id(p) for p in optimizer.zo_params()]
    assert zp.decay == [wd > 0 for _, wd in optimizer.rates()] and any(zp.decay)
    assert all(zp.decay) == (variant != "full")  # norms take no decay; adapters are all decayed
    assert zp.cache == (variant != "full")


def test_ratio_specs_keep_the_table_order():
    """The case modules' ratios, assembled in the order the table has always printed them."""
    keys = [r.key for r in ratio_specs(VARIANTS, 2, trainer_step=True)]
    assert keys[:7] == [f"{k}/full" for k in ("zo_step_over_two_forwards", "zo_step_over_its_forwards",
                                               "zo_overhead_over_two_forwards", "naive_over_ours",
                                               "naive_forward_over_forward", "naive_step_over_its_forwards",
                                               "trainer_step_over_zo_step")]
    assert keys[21:24] == [f"zo_step_over_ref/{v}" for v in VARIANTS]
    assert keys[28:] == ["peak_memory_zo_over_inference/full", "peak_memory_zo_over_inference/lora",
                         "peak_memory_naive_over_inference/full", "zo_step_oop_over_zo_step/full",
                         "zo_step_oop_over_two_forwards/full", "peak_memory_oop_over_budget/full",
                         "peak_memory_oop_over_inference/full", "eval_batched_speedup", "eval_batched_speedup_trimmed",
                         "real_trainer_step_over_ref/xgblora", "pair_batched_over_two_forwards/lora",
                         "merge_over_forward/xgblora"]


def test_masked_lm_ratio_is_the_step_over_two_forwards(tmp_path):
    """--masked-lm: one row per variant whose ratio is its stored step time over twice its forward time; the
    batch is one mask per row with the label words at the mask (medium_models' loss)."""
    result = benchmark.main(["--masked-lm", "--quick", "--device", "cpu", "--repeats", "1", "--warmup", "0",
                             "--examples", "4", "--out", str(tmp_path / "m.json")])
    assert [r["variant"] for r in result["masked_lm"]] == list(workload.VARIANTS)
    for row in result["masked_lm"]:
        # The script stores unrounded times, so the ratio is their quotient to the last bit of a float64 division.
        assert row["step / 2 forwards"] == row["zo_step_s"] / (2 * row["forward_s"])
    batch, label_ids = masked_lm.masked_lm_batch(vocab=100, rows=4, seed=0)
    assert (batch["input_ids"][torch.arange(4), batch["position"]] == 99).all() and label_ids == [50, 51]
    assert json.loads((tmp_path / "m.json").read_text())["meta"]["model"] == "tiny-roberta"


def test_the_real_trainer_step_cases_run_each_layout(tmp_path, tiny_opt_dir, sst2_dir):
    """--trainer-step-model's cases on a tiny model: XGBLoRA, ZO-LoRA with the pair as two forwards and as one
    batched forward, and REF; each Trainer case takes one step with a finite loss."""
    import argparse
    from bench import step as step_cases
    args = argparse.Namespace(trainer_step_model=str(tiny_opt_dir), data_dir=str(sst2_dir), examples=4, seed=0)
    cases = step_cases.trainer_step_cases(args, str(tmp_path))
    assert set(cases) == {"real_trainer_step/xgblora", "real_trainer_step/lora", "real_trainer_step/lora_pair_batched",
                          "ref/real"}
    for name, case in cases.items():
        out = case()
        if name != "ref/real":
            assert torch.isfinite(out)


def test_activation_reuse_times_each_variant_with_and_without_reuse(tmp_path, tiny_opt_dir, sst2_dir):
    """--activation-reuse on a tiny 2-block OPT: per variant the step with and without reuse and two forwards, the
    ratios the quotients of the stored times, and the cut each variant's flags give (the head untied: the body;
    LoRA on the upper third, block 1 of 2: below block 1)."""
    result = benchmark.main(["--activation-reuse", "--device", "cpu", "--trainer-step-model", str(tiny_opt_dir),
                             "--data-dir", str(sst2_dir), "--examples", "4", "--threads", "1", "--repeats", "1",
                             "--warmup", "0", "--out", str(tmp_path / "r.json")])
    assert result["cuts"]["head"]["cut"] == {"kind": "body", "first": 0}
    assert result["cuts"]["lora_upper"]["cut"] == {"kind": "blocks", "first": 1}
    assert result["cuts"]["lora_upper"]["flags"] == ["--lora", "--lora_layers", "1-1"]
    for key, r in result["ratios"].items():
        assert r["value"] == result["times"][r["num"][2:]]["median"] / result["times"][r["den"][2:]]["median"]
    assert result["ratios"]["reuse_step_over_two_forwards/head"]["target"] == "<= 0.6"
    assert json.loads((tmp_path / "r.json").read_text())["cuts"] == result["cuts"]


def test_methods_memory_has_every_method_its_reference_rows_and_exact_ratios(tmp_path, tiny_opt_dir, sst2_dir):
    """--methods-memory on a tiny model (every case in this process, one step each): a ratio per method and mode,
    each the quotient of the stored peaks; every reference runs B rows but batched FZOO-LoRA's, (N + 1) B, as its
    step's forward does; FZOO-LoRA is also stated against B rows."""
    from bench import methods_memory
    examples, queries = 4, 2
    result = benchmark.main(["--methods-memory", "--device", "cpu", "--trainer-step-model", str(tiny_opt_dir),
                             "--data-dir", str(sst2_dir), "--examples", str(examples), "--fzoo-num-queries",
                             str(queries), "--threads", "1", "--mem-steps", "1", "--mem-jobs", "0",
                             "--out", str(tmp_path / "mm.json")])
    ratios, memory = result["ratios"], result["memory"]
    expected = [f"peak_memory_over_inference/{mode}/{m}" for mode, names in methods_memory.METHODS.items()
                for m in names]
    assert list(ratios) == expected + ["peak_memory_over_inference_b_rows/lora/fzoo"]
    assert methods_memory.METHODS == {"lora": ("sgd", "adam", "lozo", "lozo_m", "subzero", "hizoo", "fzoo"),
                                      "full": ("sgd", "lozo", "subzero", "hizoo", "sparse_mezo", "fzoo")}
    for key, r in ratios.items():
        num, den = memory[r["num"][2:]], memory[r["den"][2:]]
        assert r["value"] == num["peak_bytes"] / den["peak_bytes"]  # to the last bit
        assert r["target"] == ("" if "b_rows" in key else "<= 1.2")
        assert isinstance(num["optimizer_state_bytes"], int) and num["examples"] == examples
        mode, method = key.split("/")[1:]
        batched = (mode, method) == ("lora", "fzoo") and "b_rows" not in key
        assert den["rows"] == (queries + 1) * examples if batched else den["rows"] == examples
        assert r["den"] == f"m:{mode}:infer_x{queries + 1 if batched else 1}"
        if "b_rows" not in key:  # the reference's widest forward is the step's
            assert den["largest_forward_rows"] == num["largest_forward_rows"]
    assert memory["lora:adam"]["optimizer"] == "ZOAdam" and memory["full:sparse_mezo"]["optimizer"] == "SparseMeZO"
    assert len(result["table"]) == len(ratios) and json.loads((tmp_path / "mm.json").read_text())["ratios"] == ratios


def test_a_methods_memory_child_is_given_the_parents_settings():
    """The command of a memory child parses to the settings the parent measured with."""
    from bench import methods_memory
    parent = benchmark.parse_args(["--methods-memory", "--trainer-step-model", "smollm2-135m", "--data-dir", "data",
                                   "--examples", "6", "--fzoo-num-queries", "3", "--mem-steps", "2", "--seed", "5",
                                   "--lora-r", "4", "--threads", "1"])
    cmd = methods_memory.child_command("lora:fzoo", parent)
    child = benchmark.parse_args(cmd[2:])
    assert child.methods_memory and child.memory_child == "lora:fzoo"
    for key in ("trainer_step_model", "examples", "fzoo_num_queries", "mem_steps", "seed", "lora_r", "threads",
                "device"):
        assert getattr(child, key) == getattr(parent, key), key
    assert child.data_dir == parent.data_dir or Path(child.data_dir) == Path(parent.data_dir).resolve()


@pytest.mark.slow
def test_layouts_time_each_layouts_runs_together(tmp_path, tiny_opt_dir, sst2_dir):
    """scripts/layouts.py on a tiny model: one row per layout, as many runs as it says, the total their sum."""
    import layouts
    rows = layouts.main(["--model", str(tiny_opt_dir), "--data-dir", str(sst2_dir), "--examples", "4", "--steps",
                         "1", "--warmup", "0", "--layouts", "1x1,2x1", "--run-flags=--zo_pair_batched",
                         "--out", str(tmp_path / "l.json")])
    assert [(r["layout"], r["runs"], r["threads"], len(r["steps_per_s_each"])) for r in rows] == [
        ("1x1", 1, 1, 1), ("2x1", 2, 1, 2)]
    assert all(r["steps_per_s_total"] == sum(r["steps_per_s_each"]) for r in rows)
    assert json.loads((tmp_path / "l.json").read_text())["layouts"] == rows


@pytest.mark.slow
def test_real_step_speed_compares_a_real_run_with_the_bench_row(tmp_path, tiny_opt_dir, sst2_dir):
    """scripts/real_step_speed.py on a tiny model, LoRA: the two real runs took the asked steps (their forwards),
    the real seconds a step are the difference of their loops over the timed steps, the ratio their quotient."""
    import real_step_speed
    rows = real_step_speed.main(["--model", str(tiny_opt_dir), "--data-dir", str(sst2_dir), "--modes", "lora",
                                 "--examples", "4", "--steps", "2", "--warmup", "1", "--out", str(tmp_path / "r.json")])
    (row,) = rows
    short, long = row["ledgers"]["short"], row["ledgers"]["long"]
    assert (short["forwards"], long["forwards"]) == (2, 6)  # ZO-SGD: two forwards a step, 1 and 3 steps
    loop = [real_step_speed.loop_seconds(x) for x in (short, long)]
    assert row["real_s_per_step"] == (loop[1] - loop[0]) / 2
    assert row["real_over_bench"] == row["real_s_per_step"] / row["bench_s_per_step"] and row["bench_s_per_step"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == rows
