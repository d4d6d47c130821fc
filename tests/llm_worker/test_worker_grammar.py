"""Constrained decoding: the output of a grammar request always parses and matches its schema;
a bad grammar is INVALID_ARGUMENT naming the field; the mask is cheap next to a decode step."""
import json
import time

import jsonschema
import numpy as np
import pytest

llg = pytest.importorskip("llguidance")

from npuflow.llm_worker.detok import load_token_table  # noqa: E402
from npuflow.llm_worker.grammar import GrammarVocab  # noqa: E402
from npuflow.llm_worker.request import ModelLimits  # noqa: E402
from npuflow.llm_worker.scheduler import Scheduler  # noqa: E402
from npuflow.v1 import common_pb2, worker_pb2  # noqa: E402

from worker_helpers import EOS, FakeEngine  # noqa: E402

FR = common_pb2
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]},
                                           "tag": {"type": "string", "maxLength": 6}},
          "required": ["ok", "n", "tag"], "additionalProperties": False}


def grammar(schema) -> str:
    return llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})


def make(tokenizer_json, hf_tokenizer, slots=4):
    v = hf_tokenizer.get_vocab_size()
    eng = FakeEngine(v, max_slots=slots, context_length=256)
    limits = ModelLimits("tiny", v, 256, (EOS,), {"temperature": 0.0},
                         grammar=GrammarVocab(tokenizer_json, v, (EOS,)))
    return Scheduler(eng, load_token_table(tokenizer_json, v), limits, max_queue=8)


def run(s):
    out = {}
    while s.has_work:
        for _, ev in s.step():
            out.setdefault((ev.request_id, ev.index), []).append(ev)
    return out


def gen(rid, g, n=1, **sampling):
    return worker_pb2.GenerateRequest(request_id=rid, prompt_token_ids=[7, 8], n=n, grammar=g,
                                      grammar_param="response_format",
                                      sampling=common_pb2.SamplingParams(**sampling))


def test_output_matches_schema_greedy_and_sampled(tokenizer_json, hf_tokenizer):
    s = make(tokenizer_json, hf_tokenizer)
    s.submit(gen("g", grammar(SCHEMA), max_tokens=200, temperature=0.0), b"p")
    s.submit(gen("t", grammar(SCHEMA), n=3, max_tokens=200, temperature=1.5, seed=3), b"p")
    s.submit(gen("free", "", max_tokens=10, temperature=0.0), b"p")   # unconstrained neighbour
    out = run(s)
    for key in [("g", 0), ("t", 0), ("t", 1), ("t", 2)]:
        evs = out[key]
        assert evs[-1].finish_reason == FR.FINISH_REASON_STOP, evs[-1]
        text = "".join(e.text for e in evs)
        jsonschema.validate(json.loads(text), SCHEMA)
    free = "".join(e.text for e in out[("free", 0)])
    assert not free.startswith("{")


def test_json_object_and_length_cut(tokenizer_json, hf_tokenizer):
    s = make(tokenizer_json, hf_tokenizer)
    s.submit(gen("e", grammar({"type": "object"}), max_tokens=50, temperature=0.0), b"p")
    long = {"type": "object", "properties": {"s": {"type": "string", "minLength": 30}}, "required": ["s"]}
    s.submit(gen("o", grammar(long), max_tokens=3, temperature=0.0), b"p")
    out = run(s)
    assert isinstance(json.loads("".join(e.text for e in out[("e", 0)])), dict)
    last = out[("o", 0)][-1]
    assert last.finish_reason == FR.FINISH_REASON_LENGTH and last.completion_tokens == 3
    assert "".join(e.text for e in out[("o", 0)]).startswith("{")


def test_invalid_grammar_is_invalid_argument(tokenizer_json, hf_tokenizer):
    s = make(tokenizer_json, hf_tokenizer)
    s.submit(gen("bad", grammar({"type": "nonsense"})), b"p")
    (_, ev), = s.take_events()
    assert ev.finish_reason == FR.FINISH_REASON_ERROR
    assert ev.error.code == FR.ERROR_CODE_INVALID_ARGUMENT and ev.error.param == "response_format"
    assert not s.requests and not s.running


@pytest.mark.model
def test_mask_cost_per_step_on_the_default_vocabulary(default_package):
    """One mask for the default model's 49k vocabulary, measured along a schema-valid output."""
    v = default_package.dims.vocab
    vocab = GrammarVocab(default_package.tokenizer_path, v, default_package.eos_token_ids)
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "tags": {
        "type": "array", "items": {"type": "string"}}}, "required": ["name", "tags"]}
    m = vocab.matcher(grammar(schema), "response_format")
    rng = np.random.default_rng(0)
    times = []
    for _ in range(150):
        row = rng.normal(size=v).astype(np.float32)
        t0 = time.perf_counter()
        m.apply(row)
        times.append(time.perf_counter() - t0)
        tok = int(np.argmax(row))
        assert m.consume(tok)
        if m.done:
            break
    per_step_ms = 1000 * float(np.median(times))
    print(f"grammar mask: median {per_step_ms:.3f} ms, max {1000 * max(times):.3f} ms over {len(times)} steps")
    assert per_step_ms < 2.0


def test_compiled_grammars_are_reused_and_bounded(tokenizer_json, hf_tokenizer):
    from npuflow.llm_worker import grammar as G
    v = hf_tokenizer.get_vocab_size()
    vocab = GrammarVocab(tokenizer_json, v, (EOS,))
    g = grammar(SCHEMA)
    a, b = vocab.matcher(g, "response_format"), vocab.matcher(g, "response_format")
    assert len(vocab._compiled) == 1
    first = np.flatnonzero(a.allowed())
    tok = int(first[0])
    assert a.consume(tok)                                   # one copy moves on, the other does not
    assert np.array_equal(np.flatnonzero(b.allowed()), first)
    for k in range(G.CACHED_GRAMMARS + 5):
        vocab.matcher(grammar({"type": "object", "properties": {f"k{k}": {"type": "integer"}}}), "response_format")
    assert len(vocab._compiled) == G.CACHED_GRAMMARS
    with pytest.raises(Exception):
        vocab.matcher("not a grammar", "response_format")


def test_schema_without_a_way_on_is_the_requests_error(tokenizer_json, hf_tokenizer):
    """A schema no value satisfies (the gateway refuses the ones it can see) ends the choice as an
    error naming the request's field, in one line, not as an internal error or a cut-short stop."""
    s = make(tokenizer_json, hf_tokenizer)
    s.submit(gen("r", grammar({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}), max_tokens=20,
                 temperature=0.0), b"p")
    last = run(s)[("r", 0)][-1]
    assert last.finish_reason == FR.FINISH_REASON_ERROR, last
    assert last.error.code == FR.ERROR_CODE_INVALID_ARGUMENT and last.error.param == "response_format", last
    assert "\n" not in last.error.message and "response_format" in last.error.message, last.error.message

