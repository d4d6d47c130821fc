from npuflow.llm_worker.detok import IncrementalDetokenizer, byte_unicode_alphabet, load_token_table

from worker_helpers import EOS


def byte_ids(hf_tokenizer, data: bytes) -> list[int]:
    """One single-byte token per byte (forces every multibyte character to be split)."""
    inv = {b: ch for ch, b in byte_unicode_alphabet().items()}
    return [hf_tokenizer.token_to_id(inv[b]) for b in data]


def test_alphabet_is_a_bijection():
    a = byte_unicode_alphabet()
    assert len(a) == 256 and sorted(a.values()) == list(range(256))


def test_table_matches_tokenizer(tokenizer_json, hf_tokenizer):
    table = load_token_table(tokenizer_json, 1000)
    assert len(table) == 1000 and table.bytes_of(999) == b""
    text = "Hello, world! héllo 日本語 😀"
    ids = hf_tokenizer.encode(text).ids
    assert b"".join(table.bytes_of(i) for i in ids).decode() == text
    assert table.is_special(EOS) and table.bytes_of(EOS) == b"<|im_end|>"


def test_multibyte_characters_split_across_tokens(tokenizer_json, hf_tokenizer):
    table = load_token_table(tokenizer_json)
    text = "aé日😀b"
    ids = byte_ids(hf_tokenizer, text.encode())
    assert len(ids) == len(text.encode())
    d = IncrementalDetokenizer(table)
    deltas = [d.push(i) for i in ids]
    assert "".join(deltas) == text
    assert "\ufffd" not in "".join(deltas)
    assert deltas[:3] == ["a", "", "é"]  # é is 2 bytes: nothing after its first byte


def test_special_tokens_skipped_and_tail_flushed(tokenizer_json, hf_tokenizer):
    table = load_token_table(tokenizer_json)
    d = IncrementalDetokenizer(table)
    ids = [1, *hf_tokenizer.encode("hi").ids, EOS]
    assert "".join(d.push(i) for i in ids) == "hi"
    half = byte_ids(hf_tokenizer, "日".encode())[:2]
    assert [d.push(i) for i in half] == ["", ""]
    assert d.flush() == "\ufffd"
