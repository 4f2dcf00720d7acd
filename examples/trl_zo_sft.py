"""ZO fine-tuning of a chat model through TRL's SFTTrainer: each JSONL record becomes a user/assistant exchange in
the model's chat template, and only the assistant's reply is trained on (LoRA, MeZO). Two lines differ from an
SFTTrainer script: the import and the config class (docs/your-data.md).

    python examples/trl_zo_sft.py --model smollm2-135m --data examples/moviesent/train.jsonl --max_steps 200
"""
import argparse

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from mezo_engine import ZOSFTConfig, ZOSFTTrainer  # instead of trl's SFTConfig, SFTTrainer
from mezo_engine.models import resolve_model_path  # a hub id, a local folder, a .gguf, or smollm2-135m offline

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--data", default="examples/moviesent/train.jsonl")
parser.add_argument("--output_dir", default="result/trl_zo_sft")
parser.add_argument("--max_steps", type=int, default=200)
args = parser.parse_args()

path = resolve_model_path(args.model)
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)


def chat(record):
    question = f"Is this movie review positive or negative?\n{record['review']}"
    return {"prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": record["sentiment"]}]}


records = load_dataset("json", data_files=args.data, split="train")
data = records.map(chat, remove_columns=records.column_names)

config = ZOSFTConfig(
    output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=16, logging_steps=10,
    learning_rate=3e-4, zo_eps=1e-2, lora=True, lr_scheduler_type="constant", report_to="none", use_cpu=True,
    max_length=256)  # at 1e-3 the loss fell to 1.4 by step 50, then blew up (docs/your-data.md)
trainer = ZOSFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
output = trainer.train()
trainer.save_model(args.output_dir)  # the LoRA adapter
print(f"status: {output.metrics['status']}, steps: {output.global_step}, mean training loss: "
      f"{output.training_loss:.4f}")
