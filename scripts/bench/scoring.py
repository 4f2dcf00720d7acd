"""Row f.: the project's batched candidate scoring against upstream's one row at a time, on the same examples."""
from __future__ import annotations

from collections.abc import Callable

from bench.ratios import Ratio
from bench.upstream import upstream_row_scores
from bench.workload import Context
from mezo_engine.evaluation import score_features, score_rows


def eval_cases(model, ctx: Context) -> dict[str, Callable[[], object]]:
    """The project's batched evaluation (``evaluation.score_features``: shared prefix, ``--eval_batch_size``
    examples a batch) and upstream's, one row at a time, of the same examples."""
    rows = [r for f in ctx.features for r in f.rows]
    lens = [n for f in ctx.features for n in f.option_lens]
    size = ctx.args.eval_batch_size
    return {"eval_batched": lambda: score_features(model, ctx.features, ctx.pad_id, size),
            "eval_single": lambda: upstream_row_scores(model, rows, lens, ctx.device),
            "eval_single_trimmed": lambda: score_rows(model, rows, lens, ctx.pad_id, batch_size=1)}


# f.: measured with the full-parameter model.
EVAL_RATIOS = (Ratio("eval_batched_speedup", "t:eval_single", "t:eval_batched", 1.0, ">=", 3.0,
                     "f: one row at a time (upstream's forward) / batched shared-prefix evaluation time"),
               Ratio("eval_batched_speedup_trimmed", "t:eval_single_trimmed", "t:eval_batched", 1.0, "", 0.0,
                     "one row at a time with trimmed logits / batched shared-prefix evaluation time"))


def ratios(variants: tuple[str, ...]) -> list[Ratio]:
    """f. where the full-parameter model ran."""
    return list(EVAL_RATIOS) if "full" in variants else []
