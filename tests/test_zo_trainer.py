"""The drop-in trainers for one's own scripts (``mezo_engine.ZOTrainer``, ``ZOSFTTrainer``): by backprop they are
the Trainer (and TRL's SFTTrainer) step for step; by ZO they run the engine's step, resume exactly from their own
checkpoints and report divergence; on a tiny OPT with the BPE tokenizer (real merges)."""
from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
import trl
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from mezo_engine import ModelLoss, ZOTrainer, ZOTrainingArguments, runner
from tests.tiny import make_model, make_tokenizer

REPO = Path(__file__).resolve().parent.parent
TEXTS = ["the water is warm", "a great film to see", "it is the best", "so it goes", "the sea at night",
         "great water in it", "the end of it", "to the west we go"]
COMMON = dict(max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1, seed=0,
              report_to="none", lr_scheduler_type="constant", disable_tqdm=True, use_cpu=True)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(merges=True)


@pytest.fixture(scope="module")
def dataset(tokenizer):
    return Dataset.from_dict({"input_ids": [tokenizer.encode(t) for t in TEXTS]})


def collator(tokenizer):
    return DataCollatorForLanguageModeling(tokenizer, mlm=False)


def model():
    torch.manual_seed(0)
    return make_model("opt", dtype=torch.float64)


def losses(trainer) -> list[float]:
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def test_by_backprop_it_is_the_trainer_step_for_step(tmp_path, tokenizer, dataset):
    """``trainer="regular"``, whole model: the same losses as ``transformers.Trainer`` with the same settings (the
    same batches through the same AdamW; float64, so any other order of operations would show)."""
    hf = Trainer(model=model(), args=TrainingArguments(output_dir=str(tmp_path / "hf"), **COMMON),
                 train_dataset=dataset, data_collator=collator(tokenizer))
    hf.train()
    zo = ZOTrainer(model=model(), args=ZOTrainingArguments(output_dir=str(tmp_path / "zo"), trainer="regular",
                                                           **COMMON),
                   train_dataset=dataset, data_collator=collator(tokenizer))
    out = zo.train()
    assert len(losses(hf)) == 4 and losses(zo) == losses(hf)
    assert out.metrics["status"] == "completed" and zo.status == "completed"


def test_by_zo_it_is_the_engines_step_with_the_models_own_loss(tmp_path, tokenizer, dataset):
    """ZO-LoRA through the drop-in against the engine's trainer (``runner.make_trainer``, as run.py builds it) given
    the model's loss as its objective: the same logged losses and the same adapters, which moved from their
    initialisation (LoRA's B starts at 0)."""
    flags = dict(COMMON, trainer="zo", lora=True, zo_eps=1e-2, learning_rate=1e-2)
    drop_in = ZOTrainer(model=model(), args=ZOTrainingArguments(output_dir=str(tmp_path / "a"), **flags),
                        train_dataset=dataset, data_collator=collator(tokenizer))
    drop_in.train()
    args = ZOTrainingArguments(output_dir=str(tmp_path / "b"), **flags)
    args.model_name = drop_in.args.model_name
    engine = runner.make_trainer(args, model(), ModelLoss(causal=True), None, lambda: [], "loss",
                                 train_dataset=dataset, data_collator=collator(tokenizer))
    engine.train()
    assert len(losses(drop_in)) == 4 and losses(drop_in) == losses(engine)
    b = {n: p for n, p in drop_in.model.named_parameters() if "lora_B" in n}
    assert b and all(torch.equal(p, dict(engine.model.named_parameters())[n]) for n, p in b.items())
    assert any(p.abs().sum() > 0 for p in b.values())
    assert all(math.isfinite(x) for x in losses(drop_in))


def test_it_resumes_exactly_from_its_own_checkpoint(tmp_path, tokenizer, dataset):
    flags = dict(COMMON, trainer="zo", lora=True, zo_eps=1e-2, save_strategy="steps", save_steps=2)
    whole = ZOTrainer(model=model(), args=ZOTrainingArguments(output_dir=str(tmp_path / "whole"), **flags),
                      train_dataset=dataset, data_collator=collator(tokenizer))
    whole.train()
    first = ZOTrainer(model=model(), args=ZOTrainingArguments(output_dir=str(tmp_path / "cut"),
                                                              **{**flags, "max_steps": 2}),
                      train_dataset=dataset, data_collator=collator(tokenizer))
    first.train()
    second = ZOTrainer(model=model(), args=ZOTrainingArguments(output_dir=str(tmp_path / "cut"), **flags),
                       train_dataset=dataset, data_collator=collator(tokenizer))
    second.train(resume_from_checkpoint=True)  # the newest checkpoint that passes the checks: checkpoint-2
    assert second.state.log_history[0]["step"] == 1 and losses(second) == losses(whole)
    params = dict(whole.model.named_parameters())
    assert all(torch.equal(p, params[n]) for n, p in second.model.named_parameters() if "lora_" in n)


def test_a_blow_up_ends_as_diverged_with_its_step(tmp_path, tokenizer, dataset):
    args = ZOTrainingArguments(output_dir=str(tmp_path / "d"), **dict(COMMON, trainer="zo", learning_rate=1e6,
                                                                         max_steps=8))
    trainer = ZOTrainer(model=model(), args=args, train_dataset=dataset, data_collator=collator(tokenizer))
    trainer.train()
    assert trainer.status.startswith("diverged at step ")


def test_the_weight_of_a_batch_is_the_label_tokens_the_loss_averages_over(tokenizer, dataset):
    batch = collator(tokenizer)([dataset[0], dataset[1]])
    m = model()
    # a causal LM predicts each token from the ones before it: the first label of a row is never a target
    counted = int(batch["labels"][:, 1:].ne(-100).sum())
    assert ModelLoss(causal=True).weight(batch) == counted
    per_token = torch.nn.functional.cross_entropy(m(**batch).logits[:, :-1].flatten(0, 1),
                                                  batch["labels"][:, 1:].flatten(), reduction="sum")
    # transformers computes the loss from float32 logits (its ForCausalLMLoss casts them): float32 rounding, about
    # 1e-7 relative on a loss of a few nats, so a wrong count (off by one token in ~20: 5e-2) cannot pass
    assert torch.allclose(ModelLoss(causal=True)(m, batch).double() * counted, per_token, rtol=1e-6)


def test_arguments_of_another_class_are_refused(tmp_path, dataset, tokenizer):
    with pytest.raises(TypeError, match="needs its arguments class \\(ZOTrainingArguments\\), got TrainingArguments"):
        ZOTrainer(model=model(), args=TrainingArguments(output_dir=str(tmp_path)), train_dataset=dataset)


def sft_data():
    return Dataset.from_dict({"prompt": ["Is the water warm?", "Is it great?", "Where do we go?", "Is it the end?"],
                              "completion": [" yes it is", " it is the best", " to the west", " so it goes"]})


def test_zo_sft_by_backprop_is_trls_sft_trainer_step_for_step(tmp_path, tokenizer):
    from mezo_engine import ZOSFTConfig, ZOSFTTrainer
    sft_args = dict(COMMON, max_length=64, bf16=False)
    sft = trl.SFTTrainer(model=model(), args=trl.SFTConfig(output_dir=str(tmp_path / "sft"), **sft_args),
                         train_dataset=sft_data(), processing_class=tokenizer)
    sft.train()
    zo = ZOSFTTrainer(model=model(), args=ZOSFTConfig(output_dir=str(tmp_path / "zo"), trainer="regular", **sft_args),
                      train_dataset=sft_data(), processing_class=tokenizer)
    zo.train()
    assert len(losses(sft)) == 4 and losses(zo) == losses(sft)


def test_zo_sft_trains_the_completion_only(tmp_path, tokenizer):
    """ZO-LoRA on prompt/completion data: TRL's collator masks the prompts, so the weight of a batch (the tokens the
    loss averages over) is its completion tokens (with the closing EOS)."""
    from mezo_engine import ZOSFTConfig, ZOSFTTrainer
    trainer = ZOSFTTrainer(model=model(), args=ZOSFTConfig(output_dir=str(tmp_path / "zo"), lora=True, zo_eps=1e-2,
                                                           max_length=64, **COMMON),
                           train_dataset=sft_data(), processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    completion = tokenizer.encode(" yes it is")
    assert trainer.objective.weight(batch) == len(completion) + 1
    trainer.train()
    assert trainer.status == "completed" and len(losses(trainer)) == 4
    # an untrained model's loss on the completion tokens: about ln(vocabulary) = ln 279 = 5.63 nats a token
    assert abs(losses(trainer)[0] - math.log(len(tokenizer))) < 1


# ---- the example scripts (examples/), on a tiny model ------------------------------------------------------
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tiny_chat_dir(tmp_path_factory):
    """A tiny OPT with the BPE tokenizer and a chat template, saved as a folder the examples' --model takes."""
    path = tmp_path_factory.mktemp("tiny-chat")
    model().float().save_pretrained(path)
    tok = make_tokenizer(merges=True)
    tok.chat_template = CHAT
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("script", ["hf_zo_jsonl.py", "trl_zo_sft.py"])
def test_the_example_scripts_train_an_adapter(tmp_path, tiny_chat_dir, script, monkeypatch, capsys):
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"review": t, "sentiment": "positive" if i % 2 else "negative"}) + "\n"
                            for i, t in enumerate(TEXTS)))
    monkeypatch.setattr(sys, "argv", [script, "--model", str(tiny_chat_dir), "--data", str(data), "--output_dir",
                                      str(tmp_path / "out"), "--max_steps", "2"])
    runpy.run_path(str(REPO / "examples" / script), run_name="__main__")
    assert "status: completed, steps: 2, mean training loss: " in capsys.readouterr().out
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
