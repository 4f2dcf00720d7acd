"""MeZO-style zeroth-order and regular fine-tuning of causal LMs, with LoRA and XGBLoRA adapters."""
