"""Tiny models and a tokenizer built from configs, so the tests never touch the network.

Two tokenizers: byte-level with no merges (every byte one token, plus four specials), and the same with a few
real BPE merges, among them the leading-space merges (``Ġ t`` -> ``Ġt`` -> ``Ġth`` -> ``Ġthe``) every real
byte-level tokenizer has. A tokenizer without merges cannot show an answer span that is off by one token where a
space merges into the next word; tests of answer spans run over both.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2's table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    chars = {}
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


# Merges in priority order; each result is a token of its own (ids after the 260 byte tokens).
MERGES = [("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("Ġ", "w"), ("Ġ", "s"), ("Ġs", "o"), ("e", "r"), ("a", "t"),
          ("Ġ", "a"), ("Ġw", "at"), ("Ġwat", "er"), ("Ġ", "g"), ("Ġg", "r"), ("e", "a"), ("Ġgr", "ea"),
          ("Ġgrea", "t"), ("i", "n"), ("Ġ", "i"), ("Ġi", "t")]


def _backend(vocab: dict, merges: list) -> Tokenizer:
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def _word_merges(vocab: dict, merges: list, word: str) -> None:
    """Append merges (after all others, so earlier tokenizations stay as they were) that join ``word``'s current
    tokens left to right into one token, and add the new tokens to ``vocab``."""
    pieces = _backend(vocab, merges).encode(word).tokens
    while len(pieces) > 1:
        merges.append((pieces[0], pieces[1]))
        pieces = [pieces[0] + pieces[1], *pieces[2:]]
        vocab.setdefault(pieces[0], len(vocab))


def make_tokenizer(merges: bool = False, words: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """The byte-level tokenizer, without merges (default) or with ``MERGES``. ``words`` (e.g. ``" terrible"``,
    ``"Maybe"``) become one token each through extra merges; their ids follow the others (a model then needs
    ``vocab_size`` above ``VOCAB``: ``len(tokenizer)``)."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in _byte_chars():
        vocab[ch] = len(vocab)
    rules = list(MERGES) if merges else []
    for a, b in rules:
        vocab[a + b] = len(vocab)
    for word in words:
        _word_merges(vocab, rules, word)
    return PreTrainedTokenizerFast(
        tokenizer_object=_backend(vocab, rules), pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>"
    )


VOCAB = len(SPECIALS) + 256 + len(MERGES)  # room for both tokenizers
COMMON = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_config(kind: str, layers: int = 2, vocab_size: int = VOCAB, tie: bool | None = None):
    """A tiny config of ``kind``; ``tie`` overrides the family's default ``tie_word_embeddings`` (OPT and GPT-2
    tie, LLaMA does not)."""
    config = _config(kind, layers, {**COMMON, "vocab_size": vocab_size})
    if tie is not None:
        config.tie_word_embeddings = tie
    return config


def _config(kind: str, layers: int, common: dict):
    if kind == "opt":
        return OPTConfig(hidden_size=32, num_hidden_layers=layers, ffn_dim=64, num_attention_heads=4,
                         max_position_embeddings=1024, word_embed_proj_dim=32, dropout=0.0, **common)
    if kind == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=1024, **common)
    if kind == "gpt2":
        return GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0, **common)
    raise ValueError(f"unknown tiny model kind {kind!r}")


class RMSNorm64(torch.nn.Module):
    """LLaMA's RMSNorm without its cast to float32 (same weight Parameter and eps): in a float64 model the cast
    would round every normalised activation to a float32 ulp (6e-8 relative), so two float64 computations that
    differ by 1e-16 could land on either side of a float32 rounding boundary and differ by that ulp."""

    def __init__(self, norm):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.variance_epsilon

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def make_model(kind: str, seed: int = 0, layers: int = 2, dtype=torch.float32, **config):
    """A tiny model of ``kind`` in eval mode; ``config``: ``vocab_size`` and ``tie`` for ``tiny_config``. In
    float64 LLaMA's RMSNorms become ``RMSNorm64``, so the model computes in float64 throughout."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, layers, **config)).to(dtype).eval()
    return float64_norms(model) if dtype == torch.float64 else model


def float64_norms(model):
    """``model`` (float64) with its LlamaRMSNorms replaced by ``RMSNorm64`` in place; returns it."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child).__name__ == "LlamaRMSNorm":
                setattr(parent, name, RMSNorm64(child))
    return model


def save_tiny(kind: str, path: Path, seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer as a HuggingFace directory that `--model_name` accepts."""
    path = Path(path)
    make_model(kind, seed).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


# ---- masked LMs (medium_models) --------------------------------------------------------------------------------

MLM_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's order: <s> 0, <pad> 1, </s> 2, <unk> 3
# The label words of the LM-BFF tasks the tests use; with a space in front each becomes one token.
LABEL_WORDS = (" terrible", " great", " Yes", " No", " Maybe", " correct", " incorrect")


def make_mlm_tokenizer(words: Sequence[str] = LABEL_WORDS) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer in RoBERTa's shape (``<s>`` cls, ``</s>`` sep, ``<mask>``), with the real BPE
    merges and ``words`` as single tokens."""
    vocab = {tok: i for i, tok in enumerate(MLM_SPECIALS)}
    for ch in _byte_chars():
        vocab[ch] = len(vocab)
    rules = list(MERGES)
    for a, b in rules:
        vocab[a + b] = len(vocab)
    for word in words:
        _word_merges(vocab, rules, word)
    return PreTrainedTokenizerFast(tokenizer_object=_backend(vocab, rules), bos_token="<s>", cls_token="<s>",
                                   eos_token="</s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                   mask_token="<mask>")


BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_wordpiece_tokenizer(words: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer in BERT's shape (``[CLS]``, ``[SEP]``, ``[MASK]``, segment ids): every printable ASCII
    character and its ``##`` continuation, and ``words`` (lower case, no leading space) as whole tokens."""
    chars = [chr(c) for c in range(33, 127)]
    vocab = {tok: i for i, tok in enumerate([*BERT_SPECIALS, *chars, *("##" + c for c in chars), *words])}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def mlm_config(kind: str, vocab_size: int, layers: int = 2):
    """A tiny RoBERTa or BERT masked-LM config (hidden 32, 4 heads) for ``vocab_size`` tokens."""
    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if kind == "roberta":
        return RobertaConfig(max_position_embeddings=514, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                             type_vocab_size=1, **common)
    if kind == "bert":
        return BertConfig(max_position_embeddings=512, pad_token_id=0, type_vocab_size=2, **common)
    raise ValueError(f"unknown tiny masked LM kind {kind!r}")


def make_mlm(kind: str, seed: int = 0, layers: int = 2, dtype=torch.float32):
    """A tiny masked LM of ``kind`` (``roberta`` or ``bert``) and its tokenizer, the model in eval mode."""
    tokenizer = make_mlm_tokenizer() if kind == "roberta" else make_wordpiece_tokenizer(
        [w.strip().lower() for w in LABEL_WORDS])
    torch.manual_seed(seed)
    model = AutoModelForMaskedLM.from_config(mlm_config(kind, len(tokenizer), layers))
    return model.to(dtype).eval(), tokenizer


def save_tiny_mlm(kind: str, path: Path, seed: int = 0) -> Path:
    """Write a tiny masked LM and its tokenizer as a HuggingFace directory that ``--model_name`` accepts."""
    model, tokenizer = make_mlm(kind, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)
