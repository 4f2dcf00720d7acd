"""Activation reuse within a ZO step (mezo_engine/activation_reuse.py, --zo_reuse_activations): where the cut falls,
that a replayed forward gives the recomputed loss bit for bit (the kept output is the same tensor the lower blocks
would compute again, on the same kernels, so equality is exact, not a tolerance), that the lower blocks really do
not run again, that forwards with a KV cache are left alone, and that whole runs train identically with and
without it."""
import pytest
import torch
import torch.nn.functional as F

from mezo_engine import head, lora
from mezo_engine.activation_reuse import ActivationReuse, Cut, blocks_of, body_of
from tests.tiny import make_model

KINDS = ["opt", "llama", "gpt2"]


def _batch(seed=0, rows=3, width=7):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (rows, width), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # one left-padded row
    return ids, mask


def _loss(model, ids, mask, **kwargs):
    out = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs)
    return F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item()


def _lower_runs(model, reuse, first):
    """A counter of real runs of blocks 0 .. first - 1 (a hook on a submodule: it fires only if the block's own
    forward runs, not when the block returns the kept output)."""
    runs = []
    for block in list(reuse.blocks)[:first]:
        inner = next(m for m in block.modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D")
        inner.register_forward_hook(lambda *a: runs.append(1))
    return runs


def _set_all(params, gen):
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_on_upper_blocks_replays_the_lower_blocks_bit_for_bit(kind):
    model = lora.attach_lora(make_model(kind, layers=4), r=2, alpha=4, blocks=(2, 3))
    params = [p for p in model.parameters() if p.requires_grad]
    assert {lora.layer_index(n) for n, _ in lora.lora_layers(model)} == {2, 3}
    reuse = ActivationReuse(model)
    assert reuse.cut(params) == Cut("blocks", 2)
    ids, mask = _batch()
    runs = _lower_runs(model, reuse, 2)
    gen = torch.Generator().manual_seed(1)
    values = []
    for _ in range(4):  # four perturbations of the adapters, as a step's forwards see them
        _set_all(params, gen)
        values.append([p.detach().clone() for p in params])
    recomputed = []
    for v in values:
        with torch.no_grad():
            for p, x in zip(params, v):
                p.copy_(x)
        recomputed.append(_loss(model, ids, mask))
    runs.clear()
    reused = []
    with reuse.step(params) as cut:
        assert cut == Cut("blocks", 2)
        for v in values:
            with torch.no_grad():
                for p, x in zip(params, v):
                    p.copy_(x)
            reused.append(_loss(model, ids, mask))
    assert reused == recomputed  # exact: the kept block output is what the lower blocks compute again
    assert len(set(recomputed)) == 4  # the perturbations changed the loss, so a stale upper part would show
    assert reuse.replays == 3 and len(runs) == 2  # blocks 0 and 1 ran once (two hooked modules), in the first
    body = body_of(model, reuse.blocks)
    assert "forward" not in body.__dict__ and all("forward" not in b.__dict__ for b in reuse.blocks)
    assert reuse._kept is None  # the activation is dropped with the step


@pytest.mark.parametrize("kind", KINDS)
def test_an_untied_head_replays_the_whole_body(kind):
    model = make_model(kind, layers=3)
    head.untie_embeddings(model)
    weight = model.get_output_embeddings().weight
    for p in model.parameters():
        p.requires_grad_(p is weight)
    reuse = ActivationReuse(model)
    assert reuse.cut([weight]) == Cut("body")
    ids, mask = _batch(seed=3)
    gen = torch.Generator().manual_seed(2)
    start = weight.detach().clone()
    deltas = [torch.randn(weight.shape, generator=gen) * 0.05 for _ in range(3)]
    recomputed = []
    for d in deltas:
        with torch.no_grad():
            weight.copy_(start + d)
        recomputed.append(_loss(model, ids, mask))
    embed_runs = []
    model.get_input_embeddings().register_forward_hook(lambda *a: embed_runs.append(1))
    reused = []
    with reuse.step([weight]):
        for d in deltas:
            with torch.no_grad():
                weight.copy_(start + d)
            reused.append(_loss(model, ids, mask))
    assert reused == recomputed and len(set(recomputed)) == 3
    assert reuse.replays == 2 and len(embed_runs) == 1


def test_no_cut_where_an_embedding_or_block_zero_is_perturbed():
    model = make_model("opt", layers=3)  # OPT ties its head to the input embedding
    reuse = ActivationReuse(model)
    assert reuse.cut([model.get_output_embeddings().weight]) is None  # the tied head is the embedding
    assert reuse.cut([next(reuse.blocks[0].parameters())]) is None
    assert reuse.cut([next(reuse.blocks[1].parameters())]) == Cut("blocks", 1)
    final_norm = model.model.decoder.final_layer_norm.weight  # in the body, outside the blocks
    assert reuse.cut([final_norm]) is None
    with reuse.step([next(reuse.blocks[0].parameters())]) as cut:
        assert cut is None and "forward" not in reuse.body.__dict__
    assert blocks_of(model) is reuse.blocks is model.model.decoder.layers and reuse.body is model.model.decoder


def test_other_inputs_and_cached_forwards_are_not_replayed():
    model = lora.attach_lora(make_model("llama", layers=3), r=2, alpha=4, blocks=(1, 2))
    params = [p for p in model.parameters() if p.requires_grad]
    reuse = ActivationReuse(model)
    ids, mask = _batch()
    other_ids, other_mask = _batch(seed=5)
    plain = [_loss(model, ids, mask), _loss(model, other_ids, other_mask)]
    with torch.no_grad():
        cached = model(input_ids=ids, attention_mask=mask, use_cache=True).logits
    with reuse.step(params):
        assert _loss(model, ids, mask) == plain[0]
        assert _loss(model, other_ids, other_mask) == plain[1]  # new tensors: recomputed (and kept instead)
        assert reuse.replays == 0
        with torch.no_grad():
            assert torch.equal(model(input_ids=other_ids, attention_mask=other_mask, use_cache=True).logits,
                               model(input_ids=other_ids, attention_mask=other_mask, use_cache=True).logits)
        assert reuse.replays == 0  # a forward that builds a KV cache runs every block
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids, attention_mask=mask, use_cache=True).logits, cached)
        assert _loss(model, other_ids, other_mask) == plain[1] and reuse.replays == 1


@pytest.mark.parametrize("flags", [["--head_tuning", "--untie_emb"], ["--lora", "--lora_layers", "1-1"],
                                   ["--xgblora", "--xgblora_steps_per_iteration", "1", "--lora_layers", "1-1"]],
                         ids=["head", "lora", "xgblora"])
def test_runs_train_identically_with_and_without_reuse(tmp_path, tiny_model_dir, sst2_dir, flags):
    """Three ZO steps (XGBLoRA merging after each) with and without reuse: the same logged losses and projected
    gradients exactly, and the ledger counts the replayed forwards (one of each step's two). Row scoring: the tiny
    tokenizer splits the answers into several tokens, which shared-prefix scoring runs from a KV cache."""
    from tests.task_fixtures import run_zo_sst2
    common = [*flags, "--max_steps", "3", "--logging_steps", "1", "--learning_rate", "1e-2", "--zo_eps", "1e-2",
              "--scoring", "rows"]
    runs = {name: run_zo_sst2(tmp_path / name, tiny_model_dir, sst2_dir, *common, *extra)
            for name, extra in (("reuse", []), ("recompute", ["--zo_reuse_activations", "False"]))}
    rows = {name: [(r["loss"], r["projected_grad_abs_mean"]) for r in result["train"]["log_history"] if "loss" in r]
            for name, result in runs.items()}
    assert len(rows["reuse"]) == 3 and rows["reuse"] == rows["recompute"]
    assert min(g for _, g in rows["reuse"]) > 0
    assert runs["reuse"]["ledger"]["reused_forwards"] == 3 and runs["recompute"]["ledger"]["reused_forwards"] == 0
    assert runs["reuse"]["ledger"]["forwards"] == runs["recompute"]["ledger"]["forwards"] == 6


@pytest.mark.parametrize("value, message", [("3-1", "FIRST 3 is above LAST 1"), ("a-2", "give FIRST-LAST"),
                                            ("1-2-3", "give FIRST-LAST")])
def test_lora_layers_is_checked_before_anything_loads(value, message):
    from transformers import HfArgumentParser

    from large_models.arguments import ArgumentError, Arguments

    def parse(*flags):
        return HfArgumentParser(Arguments).parse_args_into_dataclasses(args=["--trainer", "zo", "--num_train", "8",
                                                                             *flags])
    with pytest.raises(ArgumentError, match=f"--lora_layers {value}: {message}"):
        parse("--lora", "--lora_layers", value)
    with pytest.raises(ArgumentError, match="--lora_layers 1-2: needs --lora or --xgblora"):
        parse("--lora_layers", "1-2")


def test_lora_layers_beyond_the_model_is_refused_from_its_config(tiny_opt_dir):
    from transformers import HfArgumentParser

    from large_models.arguments import Arguments
    from large_models.run import check_model
    from mezo_engine.models import ModelError
    args, = HfArgumentParser(Arguments).parse_args_into_dataclasses(args=[
        "--trainer", "zo", "--num_train", "8", "--lora", "--lora_layers", "1-5", "--model_name", str(tiny_opt_dir)])
    with pytest.raises(ModelError, match="--lora_layers 1-5: this model's blocks are 0-1"):
        check_model(args)


def test_forwards_with_a_kv_cache_are_recomputed_in_a_run(tmp_path, tiny_opt_dir, sst2_dir):
    """Shared-prefix scoring of answers of several tokens runs the prompt into a KV cache: nothing is replayed, and
    the run is the one without reuse."""
    from tests.task_fixtures import run_zo_sst2
    common = ["--head_tuning", "--untie_emb", "--logging_steps", "1", "--learning_rate", "1e-2", "--zo_eps", "1e-2"]
    runs = [run_zo_sst2(tmp_path / name, tiny_opt_dir, sst2_dir, *common, *extra)
            for name, extra in (("reuse", []), ("recompute", ["--zo_reuse_activations", "False"]))]
    assert [r["ledger"]["reused_forwards"] for r in runs] == [0, 0]
    assert [[h["loss"] for h in r["train"]["log_history"] if "loss" in h] for r in runs][0] == \
        [[h["loss"] for h in r["train"]["log_history"] if "loss" in h] for r in runs][1]
