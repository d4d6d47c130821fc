"""Log-probabilities follow the released text: entries concatenate to the text, EOS and stop
strings leave no entry behind, and held-back text holds its entries back."""
from npuflow.llm_worker.detok import load_token_table
from npuflow.llm_worker.request import Choice, ModelLimits, build_request
from npuflow.llm_worker.sampling import Pick
from npuflow.v1 import common_pb2, worker_pb2

from worker_helpers import EOS

FR = common_pb2


def choice(tokenizer_json, hf_tokenizer, stop=(), max_tokens=50) -> Choice:
    v = hf_tokenizer.get_vocab_size()
    limits = ModelLimits("tiny", v, 256, (EOS,), {"temperature": 0.0})
    msg = worker_pb2.GenerateRequest(request_id="r", prompt_token_ids=[5], sampling=common_pb2.SamplingParams(
        max_tokens=max_tokens, stop=list(stop), logprobs=True))
    return build_request(msg, b"p", limits, load_token_table(tokenizer_json, v)).choices[0]


def feed(c: Choice, ids):
    """Accept ids one at a time; returns the events (one per token, like one step each)."""
    evs = []
    for t in ids:
        if c.finished:
            break
        c.accept(Pick(t, -0.5))
        ev = c.take_event()
        if ev is not None:
            evs.append(ev)
    return evs


def joined(evs):
    text = "".join(e.text for e in evs)
    lps = [lp for e in evs for lp in e.logprobs]
    return text, lps


def test_entries_concatenate_to_text_and_eos_has_none(tokenizer_json, hf_tokenizer):
    ids = hf_tokenizer.encode("Hello, world! 😀 日本語").ids
    c = choice(tokenizer_json, hf_tokenizer)
    evs = feed(c, ids + [EOS])
    text, lps = joined(evs)
    assert text == "Hello, world! 😀 日本語"
    assert [lp.token_id for lp in lps] == ids          # no entry for EOS
    assert b"".join(lp.token_bytes for lp in lps) == text.encode()
    assert evs[-1].finish_reason == FR.FINISH_REASON_STOP
    sent_text, sent_bytes = b"", b""
    for e in evs:  # after every event, the entries cover the text and at most part of one character
        sent_text += e.text.encode()
        sent_bytes += b"".join(lp.token_bytes for lp in e.logprobs)
        assert sent_bytes.startswith(sent_text) and len(sent_bytes) - len(sent_text) < 4


def test_split_character_holds_its_entry_with_its_text(tokenizer_json, hf_tokenizer):
    emoji = "😀".encode()
    byte_ids = [hf_tokenizer.token_to_id(ch) for ch in _byte_chars(emoji)]
    assert None not in byte_ids
    c = choice(tokenizer_json, hf_tokenizer)
    evs = feed(c, byte_ids[:2])
    assert all(e.text == "" and not e.logprobs for e in evs)   # half a character: nothing yet
    evs = feed(c, byte_ids[2:])
    text, lps = joined(evs)
    assert text == "😀" and len(lps) == 4


def test_stop_string_cuts_text_and_entries(tokenizer_json, hf_tokenizer):
    ids = hf_tokenizer.encode("The quick brown fox jumps").ids
    c = choice(tokenizer_json, hf_tokenizer, stop=["brown"])
    evs = feed(c, ids)
    text, lps = joined(evs)
    assert text == "The quick " and evs[-1].stop_reason == "brown"
    assert "".join(lp.token_bytes.decode() for lp in lps).startswith(text)
    assert b"brown" not in b"".join(lp.token_bytes for lp in lps[:-1])
    assert all(b"fox" not in lp.token_bytes for lp in lps)


def _byte_chars(b: bytes):
    from npuflow.llm_worker.detok import byte_unicode_alphabet
    inv = {v: k for k, v in byte_unicode_alphabet().items()}
    return [inv[x] for x in b]
