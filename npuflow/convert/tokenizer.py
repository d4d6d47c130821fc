"""Build a `tokenizers` tokenizer.json from a GGUF vocabulary, or take a checkpoint's own.

GGUF byte-level BPE (tokenizer.ggml.model = gpt2): the vocabulary and merges are stored as-is;
the pre-tokenizer is named by tokenizer.ggml.pre and mapped here to its split regex.
Control tokens (type 3) become special added tokens (single ids, skipped by
decode(skip_special_tokens=True)); user-defined tokens (type 4) become non-special added tokens.
"""
from __future__ import annotations

import json
import pathlib

from .spec import ConvertError

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> list of split regexes applied in order (each isolating its matches)
PRE_TOKENIZERS = {
    "default": [_GPT2],
    "gpt-2": [_GPT2],
    "gpt2": [_GPT2],
    "smollm": [r"\p{N}", _GPT2],          # digits one by one, then GPT-2
    "llama-bpe": [_LLAMA3],
    "llama3": [_LLAMA3],
    "qwen2": [_QWEN2],
}

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
CHAT_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def byte_level_bpe_json(tokens: list[str], merges: list[str], token_types: list[int], pre: str,
                        bos_token_id: int | None) -> str:
    if pre not in PRE_TOKENIZERS:
        raise ConvertError(f"unsupported pre-tokenizer '{pre}' (supported: {', '.join(PRE_TOKENIZERS)})")
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    added = []
    for i, (t, kind) in enumerate(zip(tokens, token_types)):
        if kind in (CONTROL, USER_DEFINED):
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": kind == CONTROL})
    pre_tok = [_split(r) for r in PRE_TOKENIZERS[pre]]
    pre_tok.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False})
    post: dict = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    if bos_token_id is not None:
        bos = tokens[bos_token_id]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_token_id], "tokens": [bos]}}}
    doc = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre_tok},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [m.split(" ", 1) for m in merges]},
    }
    return json.dumps(doc, ensure_ascii=False)


def _get(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_tokenizer_json(reader, path: pathlib.Path) -> tuple[str, list[int], int | None]:
    """(tokenizer.json text, eos ids, bos id when the model adds BOS) from GGUF metadata."""
    model = _get(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ConvertError(f"{path}: unsupported tokenizer model '{model}' (supported: gpt2 byte-level BPE)")
    tokens = list(_get(reader, "tokenizer.ggml.tokens"))
    types = list(_get(reader, "tokenizer.ggml.token_type", [NORMAL] * len(tokens)))
    merges = list(_get(reader, "tokenizer.ggml.merges", []))
    pre = str(_get(reader, "tokenizer.ggml.pre", "default"))
    add_bos = bool(_get(reader, "tokenizer.ggml.add_bos_token", False))
    bos = _get(reader, "tokenizer.ggml.bos_token_id")
    bos_id = int(bos) if add_bos and bos is not None else None
    text = byte_level_bpe_json(tokens, merges, types, pre, bos_id)
    eos: list[int] = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        v = _get(reader, key)
        if v is not None:
            eos.append(int(v))
    if _get(reader, "tokenizer.chat_template"):
        index = {t: i for i, t in enumerate(tokens)}
        eos += [index[t] for t in CHAT_STOP_TOKENS if t in index]
    return text, list(dict.fromkeys(eos)), bos_id
