"""ZO fine-tuning inside a plain Hugging Face script: a causal LM learns the text of a JSONL file's records with
LoRA, by MeZO. Two lines differ from a Trainer script: the import and the arguments class (docs/your-data.md).

    python examples/hf_zo_jsonl.py --model smollm2-135m --data examples/moviesent/train.jsonl --max_steps 200
"""
import argparse

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling

from mezo_engine import ZOTrainer, ZOTrainingArguments  # instead of Trainer, TrainingArguments
from mezo_engine.models import resolve_model_path  # a hub id, a local folder, a .gguf, or smollm2-135m offline

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m")
parser.add_argument("--data", default="examples/moviesent/train.jsonl")
parser.add_argument("--template", default="Review: {review}\nSentiment: {sentiment}", help="a record as text")
parser.add_argument("--output_dir", default="result/hf_zo_jsonl")
parser.add_argument("--max_steps", type=int, default=200)
args = parser.parse_args()

path = resolve_model_path(args.model)
tokenizer = AutoTokenizer.from_pretrained(path)
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
model = AutoModelForCausalLM.from_pretrained(path)

records = load_dataset("json", data_files=args.data, split="train")
data = records.map(lambda r: tokenizer(args.template.format(**r) + tokenizer.eos_token),
                   remove_columns=records.column_names)

training = ZOTrainingArguments(
    output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=16, logging_steps=10,
    learning_rate=1e-3, zo_eps=1e-2, lora=True, lr_scheduler_type="constant", report_to="none", use_cpu=True,
    save_strategy="steps", save_steps=100)  # zo_optimizer="fzoo" etc. picks another ZO method
trainer = ZOTrainer(model=model, args=training, train_dataset=data,
                    data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
output = trainer.train(resume_from_checkpoint=True)  # continues from the newest good checkpoint, if any
trainer.save_model(args.output_dir)  # the LoRA adapter
print(f"status: {output.metrics['status']}, steps: {output.global_step}, mean training loss: "
      f"{output.training_loss:.4f}")
