"""Token id -> bytes, and an incremental detokenizer that never emits half a UTF-8 character.

The table is built once from the package's tokenizer.json. Byte-level BPE vocabularies (GPT-2,
Llama 3, Qwen, SmolLM) spell every byte as one printable character; that alphabet is mapped
back to bytes. SentencePiece-style vocabularies get "▁" -> " " and <0xHH> byte tokens. Special
added tokens map to their text (for logprobs) and are flagged so they are left out of the output.
"""
from __future__ import annotations

import codecs
import json
import pathlib
import re
from dataclasses import dataclass

import numpy as np

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def byte_unicode_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted: char -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@dataclass(frozen=True)
class TokenTable:
    pieces: list[bytes]        # id -> raw bytes (special tokens: their text)
    special: np.ndarray        # id -> bool, left out of generated text

    def __len__(self) -> int:
        return len(self.pieces)

    def bytes_of(self, token_id: int) -> bytes:
        return self.pieces[token_id] if 0 <= token_id < len(self.pieces) else b""

    def is_special(self, token_id: int) -> bool:
        return bool(self.special[token_id]) if 0 <= token_id < len(self.pieces) else True


def _is_byte_level(doc: dict) -> bool:
    return "ByteLevel" in json.dumps(doc.get("decoder")) or "ByteLevel" in json.dumps(doc.get("pre_tokenizer"))


def load_token_table(tokenizer_json: str | pathlib.Path, vocab_size: int = 0) -> TokenTable:
    """Read tokenizer.json; the table covers max(vocab_size, the tokenizer's size) ids
    (ids the tokenizer does not know map to no bytes)."""
    doc = json.loads(pathlib.Path(tokenizer_json).read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(doc.get("model", {}).get("vocab") or {})
    added = doc.get("added_tokens") or []
    size = max([vocab_size, *(i + 1 for i in vocab.values()), *(a["id"] + 1 for a in added)])
    pieces = [b""] * size
    special = np.zeros(size, dtype=bool)
    if _is_byte_level(doc):
        alphabet = byte_unicode_alphabet()

        def to_bytes(tok: str) -> bytes:
            if all(ch in alphabet for ch in tok):
                return bytes(alphabet[ch] for ch in tok)
            return tok.encode("utf-8")
    else:
        def to_bytes(tok: str) -> bytes:
            m = _BYTE_TOKEN.match(tok)
            return bytes([int(m.group(1), 16)]) if m else tok.replace("▁", " ").encode("utf-8")
    for tok, i in vocab.items():
        pieces[i] = to_bytes(tok)
    for a in added:  # added tokens are written as plain text, not in the byte alphabet
        pieces[a["id"]] = a["content"].encode("utf-8")
        special[a["id"]] = bool(a.get("special", False))
    return TokenTable(pieces=pieces, special=special)


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back only complete characters."""

    def __init__(self, table: TokenTable):
        self._table = table
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if self._table.is_special(token_id):
            return ""
        return self._decoder.decode(self._table.bytes_of(token_id))

    def flush(self) -> str:
        """What is left at the end (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)
