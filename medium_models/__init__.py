"""MeZO's medium-model experiments: prompt-based fine-tuning of masked LMs (RoBERTa, BERT) on the LM-BFF k-shot
tasks, with the engine (``mezo_engine``) that ``large_models`` uses. A causal LM takes the same prompts, its label
word scored as the next token after the text before the mask."""
