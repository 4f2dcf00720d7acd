"""SFC calibration (--sfc / --icl_sfc): upstream MeZO's calibration prompts, calibrated scores against a plain
forward computed by hand, shared-prefix scoring equal to rows, and the refusals.

The models are float64: a calibrated score is a difference of two sums of ~20 log-probs near -5, computed by the
engine with other shapes and kernels than the hand forward (or the other layout). In float32 a few ulps (4.8e-7 at
5) per log-prob add up to ~1e-5 over 20, against a tolerance of 1e-4; float64 rounds 2^-29 = 1.9e-9 times finer,
so ~1e-13, and ATOL = 1e-10 leaves a margin of 1000 while calibration itself moves the scores by > 1e-3.
"""
import json

import pytest
import torch
from tokenizers import processors

from large_models import run
from large_models.arguments import ArgumentError, Arguments
from mezo_engine.evaluation import EvalConfig, candidate_scores, predict_candidates
from large_models.tasks import Sample, get_task
from tests.tiny import make_model, make_tokenizer

SST2 = [Sample(0, {"sentence": "a joy to watch "}, 1, [0, 1]), Sample(1, {"sentence": "the water is boring"}, 0, [0, 1])]
COPA = [Sample(0, {"premise": "The sink overflowed.", "question": "effect"}, "The toilet filled with water.",
               ["The toilet filled with water.", "I ran to the store."]),
        Sample(1, {"premise": "The girl smiled.", "question": "cause"}, "She got a gift.",
               ["She got a gift.", "The sun set."])]
RTE = [Sample(0, {"premise": "Ann is here.", "hypothesis": "Ann is away."}, 1, [0, 1]),
       Sample(1, {"premise": "The sea is wet.", "hypothesis": "Water is wet."}, 0, [0, 1])]
RECORD = [Sample(0, {"passage": "Ann met Bob.\n@highlight\nThey talked", "query": "@placeholder smiled"},
                 ["Ann"], ["Ann", "Bob"])]

# Upstream MeZO's texts, written out here (not taken from templates.py): per task, the prompt and the prompt with
# a candidate (``encode`` / ``verbalize``), and the calibration prompt alone and with a candidate
# (``encode_sfc`` / ``verbalize_sfc``).
UPSTREAM = {
    "SST2": (lambda s: f"{s.data['sentence'].strip()} It was",
             lambda s, c: f"{s.data['sentence'].strip()} It was {['terrible', 'great'][c]}",
             lambda s: " It was", lambda s, c: f" It was {['terrible', 'great'][c]}"),
    "Copa": (lambda s: s.data["premise"][:-1] + {"effect": " so ", "cause": " because "}[s.data["question"]],
             lambda s, c: (s.data["premise"][:-1] + {"effect": " so ", "cause": " because "}[s.data["question"]]
                           + (c if c.startswith("I ") else c[0].lower() + c[1:])),
             lambda s: {"effect": "so", "cause": "because"}[s.data["question"]],
             lambda s, c: ({"effect": "so", "cause": "because"}[s.data["question"]] + " "
                           + (c if c.startswith("I ") else c[0].lower() + c[1:]))),
    "RTE": (lambda s: f"{s.data['premise']}\nDoes this mean that \"{s.data['hypothesis']}\" is true? Yes or No?\n",
            lambda s, c: (f"{s.data['premise']}\nDoes this mean that \"{s.data['hypothesis']}\" is true? "
                          f"Yes or No?\n{['Yes', 'No'][c]}"),
            lambda s: "", lambda s, c: ["Yes", "No"][c]),
    "ReCoRD": (lambda s: s.data["passage"].replace("@highlight\n", "- ") + "\n-",
               lambda s, c: (s.data["passage"].replace("@highlight\n", "- ") + "\n- "
                             + s.data["query"].replace("@placeholder", c)),
               lambda s: "-", lambda s, c: "- " + s.data["query"].replace("@placeholder", c)),
}
SAMPLES = {"SST2": SST2, "Copa": COPA, "RTE": RTE, "ReCoRD": RECORD}
ATOL = 1e-10  # float64 sums of ~20 log-probs, see the module docstring


def bos_tokenizer():
    """The BPE tokenizer with a BOS token before every text, as OPT's and LLaMA's tokenizers add one."""
    tok = make_tokenizer(merges=True)
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


@pytest.fixture(scope="module", params=["bytes", "bpe-merges", "bpe-bos"])
def tok(request):
    return {"bytes": lambda: make_tokenizer(), "bpe-merges": lambda: make_tokenizer(True), "bpe-bos": bos_tokenizer}[
        request.param]()


@pytest.fixture(scope="module")
def models():
    return {kind: make_model(kind, seed=3, dtype=torch.float64) for kind in ("opt", "llama", "gpt2")}


def summed_answer_logprob(model, tokenizer, row: str, bare: str, prompt: str) -> float:
    """Upstream MeZO by hand: one plain forward over ``row`` (demonstrations included), the sum of the
    log-probabilities of its last n tokens, n counted without demonstrations as ``len(bare) - len(prompt)``."""
    n = len(tokenizer.encode(bare.strip(" "))) - len(tokenizer.encode(prompt.strip(" ")))
    ids = tokenizer.encode(row)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()  # float64 (the model's own dtype)
    picked = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return picked[-n:].sum().item()


def hand_scores(model, tokenizer, task_name, sample, demos, calibration):
    """Upstream's calibrated score of every candidate: sum over the real prompt (with demonstrations) minus sum
    over the calibration prompt (``icl_sfc``: after the same demonstrations)."""
    encode, verbalize, encode_sfc, verbalize_sfc = UPSTREAM[task_name]
    demo_text = "\n\n".join(verbalize(d, d.correct_candidate if task_name != "ReCoRD" else d.correct_candidate[0])
                            .strip() for d in demos).strip()

    def row(text, keep_demos):
        return (demo_text + "\n\n" + text.strip(" ")).lstrip().strip(" ") if keep_demos else text.strip(" ")
    return [summed_answer_logprob(model, tokenizer, row(verbalize(sample, c), True), verbalize(sample, c),
                                  encode(sample))
            - summed_answer_logprob(model, tokenizer, row(verbalize_sfc(sample, c), calibration == "icl_sfc"),
                                    verbalize_sfc(sample, c), encode_sfc(sample))
            for c in sample.candidates]


@pytest.mark.parametrize("task_name", ["SST2", "Copa", "RTE", "ReCoRD"])
def test_calibration_prompts_are_upstreams(task_name):
    template = get_task(task_name).template
    calibration = template.calibration()
    _, _, encode_sfc, verbalize_sfc = UPSTREAM[task_name]
    for s in SAMPLES[task_name]:
        assert calibration.encode(s) == encode_sfc(s)
        assert [calibration.verbalize(s, c) for c in s.candidates] == [verbalize_sfc(s, c) for c in s.candidates]


@pytest.mark.parametrize("task_name", ["SST2", "Copa", "RTE", "ReCoRD"])
@pytest.mark.parametrize("calibration", ["sfc", "icl_sfc"])
@pytest.mark.parametrize("kind", ["opt", "llama", "gpt2"])
def test_calibrated_score_is_candidate_sum_minus_calibration_sum(tok, models, task_name, calibration, kind):
    task, model = get_task(task_name), models[kind]
    samples = SAMPLES[task_name]
    demos = [SST2[0], SST2[1]] if task_name == "SST2" else samples[:1]
    cfg = EvalConfig(progress=False, calibration=calibration, batch_size=4)
    got = candidate_scores(model, tok, task.template, samples, demos, cfg)
    want = [hand_scores(model, tok, task_name, s, demos, calibration) for s in samples]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=ATOL)
    plain = candidate_scores(model, tok, task.template, samples, demos, EvalConfig(progress=False))
    assert not any(g == pytest.approx(p, abs=1e-3) for g, p in zip(got, plain))  # calibration changed the scores


@pytest.mark.parametrize("calibration", ["sfc", "icl_sfc"])
@pytest.mark.parametrize("kind", ["opt", "llama", "gpt2"])
def test_shared_prefix_equals_rows_with_sfc(tok, models, calibration, kind):
    for task_name in ("SST2", "Copa", "RTE", "ReCoRD"):
        task, samples = get_task(task_name), SAMPLES[task_name]
        demo_sets = [samples[::-1]] * len(samples)  # one set per sample, as MeZO's in-context default
        scores = [candidate_scores(models[kind], tok, task.template, samples, demo_sets,
                                   EvalConfig(progress=False, calibration=calibration, scoring=scoring, batch_size=3))
                  for scoring in ("shared", "rows")]
        for shared, rows in zip(*scores):
            assert shared == pytest.approx(rows, abs=ATOL)


def test_prediction_is_the_argmax_of_calibrated_scores(models):
    tok, model = bos_tokenizer(), models["opt"]
    cfg = EvalConfig(progress=False, calibration="sfc")
    for task_name in ("SST2", "Copa", "RTE"):
        samples = SAMPLES[task_name]
        want = [s.candidates[max(range(len(s.candidates)), key=hand_scores(model, tok, task_name, s, [], "sfc")
                                 .__getitem__)] for s in samples]
        assert predict_candidates(model, tok, get_task(task_name).template, samples, [], cfg) == want


@pytest.mark.parametrize("flags, message", [
    (["--task_name", "SQuAD", "--sfc"], "--sfc: task SQuAD is generation"),
    (["--task_name", "DROP", "--icl_sfc"], "--icl_sfc: task DROP is generation"),
    (["--task_name", "SST2", "--sfc", "--icl_sfc"], "--sfc and --icl_sfc: choose one"),
])
def test_sfc_refusals_name_the_flag(flags, message):
    from transformers import HfArgumentParser
    with pytest.raises(ArgumentError) as err:
        HfArgumentParser(Arguments).parse_args_into_dataclasses(args=flags)
    assert message in str(err.value)


def test_generation_template_has_no_calibration_prompt():
    with pytest.raises(ValueError, match="no SFC calibration prompt"):
        get_task("SQuAD").template.calibration().encode(Sample(0, {"title": "T"}, ["x"], None))


def test_run_with_sfc_evaluates_calibrated(tmp_path, tiny_opt_dir, monkeypatch):
    """run.py --sfc: the evaluation's predictions are the argmax of the calibrated scores (the flag reaches it)."""
    (tmp_path / "SST-2").mkdir()
    rows = ["a joy to watch \t1", "boring \t0", "the water is great \t1", "dull and slow \t0"]
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "SST-2" / name).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    run.main(["--model_name", str(tiny_opt_dir), "--task_name", "SST2", "--data_dir", str(tmp_path),
              "--result_file", str(out), "--output_dir", str(tmp_path / "o"), "--disable_tqdm", "True",
              "--trainer", "none", "--num_train", "1", "--train_set_seed", "0", "--icl_sfc"])
    result = json.loads(out.read_text())
    assert result["config"]["icl_sfc"] is True and result["config"]["sfc"] is False
    task = get_task("SST2")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_opt_dir), AutoTokenizer.from_pretrained(tiny_opt_dir)
    valid, train = task.load("validation", tmp_path), task.load("train", tmp_path)
    demos = task.sample_subset(train, 0, 1)
    want = [s.candidates[max(range(2), key=hand_scores(model, tokenizer, "SST2", s, demos, "icl_sfc").__getitem__)]
            for s in valid]
    assert result["eval_predictions"] == want
