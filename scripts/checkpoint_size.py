"""Size of an XGBLoRA checkpoint (adapter + run_state.pt with the merge stack) against a full model save.

    OMP_NUM_THREADS=1 python scripts/checkpoint_size.py --model smollm2-135m --merges 20

The boosters get random factors (the size does not depend on their values); 20 merges is mezo.sh's default run
(STEPS=20000 / XGBLORA_STEPS=1000). Also printed: the LoRA-GA fallback, which stores the adapted base weights.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from mezo_engine import lora
from mezo_engine.checkpoint import RunStateCallback
from mezo_engine.models import load_model_and_tokenizer


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def xgblora_checkpoint(model, name: str, merges: int, rank: int, store_base: bool, out: Path) -> float:
    """Write what a checkpoint adds for a PEFT model (the adapter and run_state.pt); return its size in MiB."""
    state = RunStateCallback(model, name, {}, store_base=store_base)
    gen = torch.Generator().manual_seed(0)
    for _ in range(merges):
        for _, layer in lora.lora_layers(model):
            torch.nn.init.normal_(layer.lora_B["default"].weight, generator=gen)
        state.record(lora.merge_and_reinit(model, generator=gen, warn_ratio=0))
    out.mkdir()
    model.save_pretrained(str(out))
    torch.save(state.state_dict(model), out / "run_state.pt")
    return folder_mb(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--merges", type=int, default=20)
    parser.add_argument("--rank", type=int, default=1)
    args = parser.parse_args()
    model, _ = load_model_and_tokenizer(args.model, torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "full")
        full = folder_mb(Path(tmp) / "full")
        peft = lora.attach_lora(model, r=args.rank, alpha=16)
        stack = xgblora_checkpoint(peft, args.model, args.merges, args.rank, False, Path(tmp) / "stack")
        base = xgblora_checkpoint(peft, args.model, 0, args.rank, True, Path(tmp) / "base")
    print(f"model {args.model}, fp32, XGBLoRA rank {args.rank} on {len(lora.lora_layers(peft))} modules")
    print(f"full model save:                            {full:8.2f} MiB")
    print(f"XGBLoRA checkpoint, {args.merges} merges (adapter + stack): {stack:8.2f} MiB  ({stack / full:.4f} x full)")
    print(f"LoRA-GA fallback (adapter + base weights):  {base:8.2f} MiB  ({base / full:.4f} x full)")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
