"""The objective passed into the trainer; --non_diff (minus the F1 of generated answers, zo only) and
--train_from_validation (train and dev drawn from the validation split, evaluation on the rest)."""
import json

import pytest
import torch
from transformers import HfArgumentParser

from large_models import run
from large_models.arguments import ArgumentError, Arguments, parse_args
from large_models.pipeline import objective_for
from mezo_engine.data import TrainCollator, encode_prompt, prompt_feature, training_feature
from mezo_engine.evaluation import EvalConfig, generate_batch
from mezo_engine.metrics import normalize_answer
from mezo_engine.objectives import AnswerLoss, F1Objective
from mezo_engine.scoring import batch_loss
from large_models.tasks import Sample, get_task
from mezo_engine.trainer import MezoTrainer
from tests.tiny import make_model, make_tokenizer

QUESTIONS = ["Who is here?", "Where is the big red house of the old man?", "When?"]


def squad_samples(golds):
    return [Sample(i, {"title": "T", "context": "Ann lives in the red house.", "question": q}, g, None)
            for i, (q, g) in enumerate(zip(QUESTIONS, golds))]


def greedy_by_hand(model, tokenizer, prompt: list[int], steps: int) -> str:
    """Greedy decoding one token at a time with plain forwards (no cache, no batch), cut at a newline."""
    ids = list(prompt)
    newline = tokenizer.encode("\n")[-1]
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt in (newline, tokenizer.eos_token_id):
                break
            ids.append(nxt)
    return tokenizer.decode(ids[len(prompt):], skip_special_tokens=True).split("\n")[0].strip()


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum(min(p.count(w), g.count(w)) for w in set(p))
    return 0.0 if same == 0 else 2 * same / (len(p) + len(g))


@pytest.mark.parametrize("kind, seed", [("opt", 2), ("llama", 4), ("gpt2", 6)])  # seeds whose answers have words
def test_f1_objective_is_minus_mean_f1_of_greedy_generations(kind, seed):
    tokenizer, model = make_tokenizer(merges=True), make_model(kind, seed=seed)
    template = get_task("SQuAD").template
    prompts = [encode_prompt(tokenizer, template, s) for s in squad_samples([[]] * 3)]
    assert len({len(p) for p in prompts}) == 3  # different lengths: the batch is left-padded
    hand = [greedy_by_hand(model, tokenizer, p, 6) for p in prompts]
    assert all(normalize_answer(h) for h in hand), hand  # each has words, so F1 can be other than 0
    # gold answers: exact, one extra word (F1 < 1), and a miss next to a partial match (best over golds)
    golds = [[hand[0]], [hand[1] + " extra"], ["zzzz", "qqq " + hand[2]]]
    want = [max(token_f1(h, g) for g in gs) for h, gs in zip(hand, golds)]
    assert want[0] == 1.0 and 0 < want[1] < 1 and 0 < want[2] < 1
    batch = TrainCollator(tokenizer.pad_token_id)(
        [prompt_feature(tokenizer, template, s, 200) for s in squad_samples(golds)])
    loss = F1Objective(tokenizer, EvalConfig(max_new_tokens=6, progress=False))(model, batch)
    # The objective returns a float32 tensor: the cast rounds by <= half an ulp of 1 (6e-8); 1e-6 is 16x that, and
    # a token counted wrong in one of the 3 answers (<= 13 tokens with the gold) moves the mean F1 by > 1e-3.
    assert loss.item() == pytest.approx(-sum(want) / 3, abs=1e-6)


def test_generation_under_folded_adapters_is_peft_generation():
    """The zo step runs the objective inside lora.folded_adapters: generation must see the adapter there too."""
    from mezo_engine import lora
    tokenizer = make_tokenizer(merges=True)
    model = lora.attach_lora(make_model("llama", seed=4), r=4, alpha=8).eval()
    for _, layer in lora.lora_layers(model):
        torch.nn.init.normal_(lora._lora_AB(layer)[1], std=2.0)  # a non-zero adapter that changes the answers
    template, cfg = get_task("SQuAD").template, EvalConfig(max_new_tokens=6, progress=False)
    batch = TrainCollator(tokenizer.pad_token_id)(
        [prompt_feature(tokenizer, template, s, 200) for s in squad_samples([["x"]] * 3)])
    peft = generate_batch(model, tokenizer, batch["input_ids"], batch["attention_mask"], cfg)
    with model.disable_adapter():
        plain = generate_batch(model, tokenizer, batch["input_ids"], batch["attention_mask"], cfg)
    with torch.no_grad(), lora.folded_adapters(model):
        folded = generate_batch(model, tokenizer, batch["input_ids"], batch["attention_mask"], cfg)
    assert peft != plain and folded == peft


def test_prompt_batch_carries_prompt_without_answer_and_gold(tokenizer):
    template = get_task("SQuAD").template
    samples = squad_samples([["Ann", "ann"], ["the red house"], ["now"]])
    batch = TrainCollator(tokenizer.pad_token_id)([prompt_feature(tokenizer, template, s, 30) for s in samples])
    assert batch["gold"] == [["Ann", "ann"], ["the red house"], ["now"]]
    for row, mask, s in zip(batch["input_ids"], batch["attention_mask"], samples):
        prompt = tokenizer.encode(template.encode(s).strip(" "))[-30:]  # cut on the left, answer absent
        assert row[mask.bool()].tolist() == prompt and mask[-1] == 1  # left-padded
        assert tokenizer.decode(prompt).endswith("Answer:")


def _args(*flags):
    return parse_args(["--task_name", "SQuAD", "--trainer", "zo", "--num_train", "4", "--output_dir", "/tmp/x",
                       *flags])


def test_objective_for_follows_the_flags():
    tok = make_tokenizer()
    assert isinstance(objective_for(_args("--non_diff"), tok, get_task("SQuAD")), F1Objective)
    loss = objective_for(_args(), tok, get_task("SQuAD"))
    assert isinstance(loss, AnswerLoss) and not loss.as_classification and loss.only_train_option
    sst = parse_args(["--task_name", "SST2", "--trainer", "zo", "--num_train", "4", "--output_dir", "/tmp/x",
                      "--train_as_classification"])
    assert objective_for(sst, tok, get_task("SST2")).as_classification


def test_trainer_uses_the_objective_it_is_given(tokenizer):
    model = make_model("opt")
    task = get_task("SST2")
    samples = [Sample(i, {"sentence": t}, i % 2, [0, 1]) for i, t in enumerate(["a joy", "dull", "great fun"])]
    batch = TrainCollator(tokenizer.pad_token_id)(
        [training_feature(tokenizer, task.template, s, True, 64) for s in samples])
    args = parse_args(["--trainer", "zo", "--num_train", "3", "--output_dir", "/tmp/x", "--train_as_classification",
                       "--report_to", "none"])
    seen = []

    def objective(m, b):
        seen.append(b)
        return torch.tensor(7.5)
    given = MezoTrainer(model=model, args=args, processing_class=tokenizer, objective=objective, evaluator=None)
    assert given.compute_loss(model, batch).item() == 7.5 and seen == [batch]
    with pytest.raises(TypeError, match="objective"):  # no default built from the arguments: the app gives it
        MezoTrainer(model=model, args=args, processing_class=tokenizer, evaluator=None)
    app = MezoTrainer(model=model, args=args, processing_class=tokenizer, objective=objective_for(args, tokenizer, task),
                      evaluator=None)
    with torch.no_grad():
        want = batch_loss(model, batch, as_classification=True).item()
        assert app.compute_loss(model, batch).item() == want  # the same ops on the same batch: bit-equal
    assert want != pytest.approx(batch_loss(model, batch, as_classification=False).item(), abs=1e-3)


@pytest.mark.parametrize("flags, message", [
    (["--task_name", "SQuAD", "--non_diff", "--trainer", "regular", "--num_train", "4"],
     "--non_diff with --trainer regular"),
    (["--task_name", "SQuAD", "--non_diff"], "--non_diff with --trainer none"),
    (["--task_name", "SST2", "--non_diff", "--trainer", "zo", "--num_train", "4"],
     "--non_diff: task SST2 is not a generation task"),
    (["--task_name", "DROP", "--non_diff", "--trainer", "zo", "--num_train", "4", "--only_train_option", "False"],
     "--only_train_option False with --non_diff"),
    (["--task_name", "SQuAD", "--train_from_validation"], "--train_from_validation with --num_train 0"),
    (["--task_name", "SQuAD", "--train_from_validation", "--num_train", "2"],
     "--train_from_validation with --trainer none and neither --train_set_seed"),
])
def test_refusals_name_the_flag_and_value(flags, message):
    with pytest.raises(ArgumentError) as err:
        HfArgumentParser(Arguments).parse_args_into_dataclasses(args=flags)
    assert message in str(err.value)


@pytest.fixture(scope="module")
def squad_dev_only(tmp_path_factory):
    """A SQuAD folder with only the dev file, as ../shared/data has."""
    root = tmp_path_factory.mktemp("squad-dev")
    (root / "SQuAD").mkdir()
    qas = [{"id": str(i), "question": f"Who is number {i}?", "answers": [{"text": f"Ann {i}", "answer_start": 0}]}
           for i in range(10)]
    data = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Ann 0 to Ann 9 are here.",
                                                                      "qas": qas}]}]}
    (root / "SQuAD" / "dev-v1.1.json").write_text(json.dumps(data))
    return root


def test_eval_pool_leaves_out_the_drawn_examples():
    valid = squad_samples([["a"], ["b"], ["c"]])
    pool = run.eval_pool(valid, [valid[2], valid[0]], True)
    assert pool == [valid[1]] and run.eval_pool(valid, [valid[0]], False) == valid
    assert run.validation_split(valid, pool, True) == {"validation_examples": 3, "drawn_for_train_and_dev": 2,
                                                      "eval_pool": 1}


def test_non_diff_zo_trains_on_the_validation_split_and_evaluates_on_the_rest(tmp_path, tiny_opt_dir,
                                                                              squad_dev_only, monkeypatch):
    seen = {}
    real = run.run_one

    def spy(args, task, train_set, eval_samples, *rest, **kw):
        seen.update(train=list(train_set), eval=list(eval_samples))
        return real(args, task, train_set, eval_samples, *rest, **kw)
    monkeypatch.setattr(run, "run_one", spy)
    out = tmp_path / "r.json"
    run.main(["--model_name", str(tiny_opt_dir), "--task_name", "SQuAD", "--data_dir", str(squad_dev_only),
              "--result_file", str(out), "--output_dir", str(tmp_path / "o"), "--disable_tqdm", "True",
              "--trainer", "zo", "--non_diff", "--train_from_validation", "--num_train", "5", "--num_dev", "1",
              "--train_set_seed", "0", "--max_steps", "3", "--per_device_train_batch_size", "2",
              "--logging_steps", "1", "--max_new_tokens", "4", "--per_device_eval_batch_size", "2",
              "--learning_rate", "1e-3"])
    result = json.loads(out.read_text())
    train_ids, eval_ids = {s.id for s in seen["train"]}, {s.id for s in seen["eval"]}
    assert len(train_ids) == 6 and len(eval_ids) == 4 and not train_ids & eval_ids  # disjoint, covering all 10
    assert result["train_from_validation"] == {"validation_examples": 10, "drawn_for_train_and_dev": 6,
                                               "eval_pool": 4}
    assert result["num_train"] == 5 and result["num_dev"] == 1 and result["num_eval"] == 4
    assert result["train"]["global_step"] == 3 and result["config"]["non_diff"] is True
    losses = [h["loss"] for h in result["train"]["log_history"] if "loss" in h]
    assert len(losses) == 3 and all(-1.0 <= x <= 0.0 for x in losses)  # minus an F1, not a positive LM loss


def test_train_from_validation_refuses_to_leave_nothing_to_evaluate(tmp_path, tiny_opt_dir, squad_dev_only):
    with pytest.raises(SystemExit) as stop:
        run.main(["--model_name", str(tiny_opt_dir), "--task_name", "SQuAD", "--data_dir", str(squad_dev_only),
                  "--result_file", str(tmp_path / "r.json"), "--trainer", "zo", "--train_from_validation",
                  "--num_train", "8", "--num_dev", "2", "--train_set_seed", "0"])
    assert "--num_train 8 + --num_dev 2 took all 10 validation examples" in str(stop.value)
    assert not (tmp_path / "r.json").exists()
