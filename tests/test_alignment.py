"""mezo_engine.alignment on a tiny float64 LLaMA: a merge built from the gradient's own top singular directions
reaches the rank bound, its opposite the negative bound, and a small step changes the loss as <G, dW> predicts."""
import math

import pytest
import torch

from mezo_engine import alignment, lora
from tests.tiny import make_model


def _model():
    return lora.attach_lora(make_model("llama", seed=3, dtype=torch.float64), r=1, alpha=2)


def _batches(vocab: int) -> list[dict]:
    gen = torch.Generator().manual_seed(7)
    return [{"input_ids": (ids := torch.randint(3, vocab, (3, 10), generator=gen)), "labels": ids} for _ in range(2)]


def _loss(model, batch):
    return model(**batch).loss


def _top_direction_merge(grads: dict, step: float, sign: float = 1.0) -> list[lora.MergeFactor]:
    """Rank-1 factors whose update is -sign * step * s1 * u1 v1^T per module (scaling 2, so B carries half)."""
    factors = []
    for name, g in grads.items():
        u, s, vh = torch.linalg.svd(g.double())
        factors.append(lora.MergeFactor(module=name, A=vh[:1].float(), B=(-sign * step * s[0] / 2 * u[:, :1]).float(),
                                        scaling=2.0, fan_in_fan_out=False, coeff=1.0))
    return factors


def test_group_merges_splits_where_a_module_repeats():
    f = [lora.MergeFactor(m, torch.zeros(1, 2), torch.zeros(2, 1), 1.0, False, 1.0) for m in "abcab"]
    assert [[x.module for x in g] for g in alignment.group_merges(f)] == [["a", "b", "c"], ["a", "b"]]


def test_top_singular_merge_reaches_the_rank_bound_and_predicts_the_loss_change():
    model = _model()
    batches = _batches(model.config.vocab_size)
    grads = lora.estimate_lora_ga_grads_backprop(model, batches, _loss)
    bound = alignment.best_rank_cosine(grads, rank=1)
    top = sum(float(torch.linalg.svdvals(g.double())[0] ** 2) for g in grads.values())
    assert bound == pytest.approx(math.sqrt(top) / alignment._norm(grads))
    assert 0.3 < bound < 1.0  # a rank-1 update cannot follow a full-rank gradient exactly

    downhill = _top_direction_merge(grads, step=1e-3)
    uphill = _top_direction_merge(grads, step=1e-3, sign=-1.0)
    first, second = alignment.merge_alignment(model, [downhill, uphill], batches, _loss)
    assert first.cosine == pytest.approx(bound, rel=1e-4)  # u1 s1 v1^T per module is the bound's maximiser
    assert second.cosine == pytest.approx(-bound, rel=1e-3)  # measured after the first merge moved W a little
    assert first.predicted_change == pytest.approx(-1e-3 * top, rel=1e-4)
    assert first.loss_after - first.loss_before == pytest.approx(first.predicted_change, rel=1e-2)
    assert second.loss_before == first.loss_after  # each merge is measured at the weights the previous one left
    assert first.rank == 1 and first.modules == len(grads)
    entries = sum(g.numel() for g in grads.values())
    assert first.random_cosine == pytest.approx(1 / math.sqrt(entries))


def test_random_merge_sits_near_the_random_scale():
    model = _model()
    batches = _batches(model.config.vocab_size)
    gen = torch.Generator().manual_seed(11)
    names = [n for n, _ in lora.lora_layers(model)]
    weights = {n: layer.get_base_layer().weight for n, layer in lora.lora_layers(model)}
    merge = [lora.MergeFactor(n, torch.randn(1, weights[n].shape[1], generator=gen),
                              torch.randn(weights[n].shape[0], 1, generator=gen), 1e-3, False, 1.0) for n in names]
    (m,) = alignment.merge_alignment(model, [merge], batches, _loss)
    assert abs(m.cosine) < 4 * m.random_cosine < m.best_cosine


def test_script_replays_a_real_runs_checkpoint(tmp_path, tiny_opt_dir, sst2_dir):
    """scripts/merge_alignment.py on a tiny regular XGBLoRA run of run.py: one row per merge the checkpoint holds,
    each measured where the previous one left the weights."""
    import json

    from large_models import run
    from scripts import merge_alignment
    result = tmp_path / "result.json"
    run.main(["--model_name", str(tiny_opt_dir), "--task_name", "SST2", "--data_dir", str(sst2_dir), "--result_file",
              str(result), "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "True", "--trainer", "regular",
              "--xgblora", "--xgblora_steps_per_iteration", "2", "--num_train", "12", "--train_set_seed", "0",
              "--num_eval", "4", "--max_steps", "6", "--per_device_train_batch_size", "4",
              "--train_as_classification", "--learning_rate", "1e-2", "--save_strategy", "steps", "--save_steps", "6"])
    out = tmp_path / "alignment.json"
    merge_alignment.main([str(result), str(tmp_path / "out" / "checkpoint-6"), "--examples", "8", "--out", str(out)])
    measured = json.loads(out.read_text())
    merges = measured["merges"]
    assert measured["examples"] == 8 and [m["merge"] for m in merges] == [1, 2, 3]  # steps 2, 4, 6
    assert all(m["rank"] == 1 and m["modules"] == 4 for m in merges)  # q and v of 2 blocks
    assert all(-1 <= m["cosine"] <= m["best_cosine"] <= 1 for m in merges)
    assert [m["loss_before"] for m in merges[1:]] == [m["loss_after"] for m in merges[:-1]]
