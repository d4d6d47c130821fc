import time

import pytest

from npuflow.llm_worker.detok import load_token_table
from npuflow.llm_worker.request import ModelLimits
from npuflow.llm_worker.scheduler import Scheduler
from npuflow.v1 import common_pb2, worker_pb2

from worker_helpers import EOS, FakeEngine

FR = common_pb2


def make(tokenizer_json, hf_tokenizer, *, slots=2, ctx=64, max_queue=8, defaults=None, prefix_cache=True,
         **engine_kw):
    v = hf_tokenizer.get_vocab_size()
    eng = FakeEngine(v, max_slots=slots, context_length=ctx, **engine_kw)
    limits = ModelLimits("tiny", v, ctx, (EOS,), defaults or {"temperature": 0.0})
    return Scheduler(eng, load_token_table(tokenizer_json, v), limits, max_queue=max_queue,
                     prefix_cache=prefix_cache), eng


def gen(rid, prompt, n=1, deadline=0, **sampling):
    return worker_pb2.GenerateRequest(request_id=rid, model="tiny", prompt_token_ids=prompt, n=n,
                                      deadline_unix_ms=deadline, sampling=common_pb2.SamplingParams(**sampling))


def run(s, max_steps=500):
    """Step until idle; returns {(request_id, index): [events]} and the number of steps."""
    out: dict = {}
    steps = 0
    while s.has_work and steps < max_steps:
        for _, ev in s.step():
            out.setdefault((ev.request_id, ev.index), []).append(ev)
        steps += 1
    return out, steps


def summary(evs):
    last = evs[-1]
    assert all(e.finish_reason == FR.FINISH_REASON_UNSPECIFIED for e in evs[:-1])
    return [t for e in evs for t in e.token_ids], "".join(e.text for e in evs), last


def test_greedy_length(tokenizer_json, hf_tokenizer):
    s, eng = make(tokenizer_json, hf_tokenizer)
    s.submit(gen("a", [40, 41], max_tokens=5), b"p")
    out, _ = run(s)
    ids, text, last = summary(out[("a", 0)])
    assert ids == [42, 43, 44, 45, 46]
    assert text == hf_tokenizer.decode(ids)
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == (FR.FINISH_REASON_LENGTH, 2, 5)
    assert s.free_slots and sorted(s.free_slots) == [0, 1] and not s.requests


def test_eos_stop_token_and_ignore_eos(tokenizer_json, hf_tokenizer):
    v = hf_tokenizer.get_vocab_size()
    s, _ = make(tokenizer_json, hf_tokenizer)
    s.submit(gen("eos", [v - 3], max_tokens=10), b"p")
    s.submit(gen("tok", [40], max_tokens=10, stop_token_ids=[43]), b"p")
    s.submit(gen("ign", [v - 3], max_tokens=6, ignore_eos=True), b"p")
    out, _ = run(s)
    ids, text, last = summary(out[("eos", 0)])
    assert ids == [v - 2, v - 1, 0, 1, EOS] and last.finish_reason == FR.FINISH_REASON_STOP
    assert text == hf_tokenizer.decode([v - 2, v - 1]) and last.completion_tokens == 5
    ids, text, last = summary(out[("tok", 0)])
    assert ids == [41, 42, 43] and text == hf_tokenizer.decode([41, 42]) and last.finish_reason == FR.FINISH_REASON_STOP
    ids, _, last = summary(out[("ign", 0)])
    assert ids == [v - 2, v - 1, 0, 1, 2, 3] and last.finish_reason == FR.FINISH_REASON_LENGTH


def test_stop_string_across_tokens_never_leaks(tokenizer_json, hf_tokenizer):
    s, _ = make(tokenizer_json, hf_tokenizer)
    gen_ids = list(range(259, 266))  # "he" "ld" "ll" "ow" "rld" "ve" "é"
    full = hf_tokenizer.decode(gen_ids)
    assert full == "heldllowrldveé"
    stop = "lo"  # straddles "ll" | "ow"
    s.submit(gen("a", [258], max_tokens=10, stop=["zz", stop]), b"p")
    out, _ = run(s)
    evs = out[("a", 0)]
    ids, text, last = summary(evs)
    assert last.finish_reason == FR.FINISH_REASON_STOP and last.stop_reason == stop
    assert text == "heldl" and ids == gen_ids[:4]
    streamed = ""
    for e in evs:
        streamed += e.text
        assert full.startswith(streamed) and stop not in streamed


def test_stop_string_held_back_then_released(tokenizer_json, hf_tokenizer):
    s, _ = make(tokenizer_json, hf_tokenizer)
    s.submit(gen("a", [258], max_tokens=4, stop=["llz"]), b"p")
    out, _ = run(s)
    assert [e.text for e in out[("a", 0)]] == ["he", "ld", "", "llow"]  # "ll" held back one step
    assert [list(e.token_ids) for e in out[("a", 0)]] == [[259], [260], [261], [262]]
    assert out[("a", 0)][-1].finish_reason == FR.FINISH_REASON_LENGTH


def test_continuous_batching_one_decode_per_step(tokenizer_json, hf_tokenizer):
    s, eng = make(tokenizer_json, hf_tokenizer, slots=2)
    s.submit(gen("a", [10], max_tokens=3), b"p")
    s.submit(gen("b", [20], max_tokens=8), b"p")
    s.submit(gen("c", [30], max_tokens=3), b"q")
    first = s.step()
    assert {ev.request_id for _, ev in first} == {"a", "b"} and s.n_waiting == 1
    out, _ = run(s)
    assert summary(out[("c", 0)])[0] == [31, 32, 33]  # admitted when a's slot freed
    decodes = [c for c in eng.calls if c[0] == "decode"]
    assert max(len(c[1]) for c in decodes) == 2
    steps_with_two = [c for c in decodes if len(c[1]) == 2]
    assert len(steps_with_two) >= 4  # b ran together with a, then with c


def test_events_batched_per_step_and_peer(tokenizer_json, hf_tokenizer):
    s, _ = make(tokenizer_json, hf_tokenizer)
    s.submit(gen("a", [10], max_tokens=4), b"p1")
    s.submit(gen("b", [20], max_tokens=4), b"p2")
    s.step()
    evs = s.step()
    assert sorted((peer, ev.request_id) for peer, ev in evs) == [(b"p1", "a"), (b"p2", "b")]
    assert all(len(ev.token_ids) == 1 for _, ev in evs)


def test_abort_within_a_step(tokenizer_json, hf_tokenizer):
    s, eng = make(tokenizer_json, hf_tokenizer, slots=1)
    s.submit(gen("a", [10], max_tokens=0), b"p")
    s.submit(gen("w", [10], max_tokens=0), b"p")
    for _ in range(3):
        s.step()
    s.abort("a")
    s.abort("w")  # still waiting
    s.abort("unknown")
    evs = s.step()
    finals = {ev.request_id: ev for _, ev in evs}
    assert finals["a"].finish_reason == FR.FINISH_REASON_ABORT and finals["w"].finish_reason == FR.FINISH_REASON_ABORT
    assert all(not ev.token_ids for ev in finals.values())
    assert s.free_slots == [0] and s.held == {0: [10]} and not s.has_work and not s.requests


def test_deadline(tokenizer_json, hf_tokenizer):
    s, _ = make(tokenizer_json, hf_tokenizer, ctx=100_000, decode_s=0.002)
    s.submit(gen("a", [10], max_tokens=0, deadline=int(time.time() * 1000) + 50), b"p")
    s.submit(gen("late", [10], max_tokens=0, deadline=int(time.time() * 1000) - 1), b"p")
    out, _ = run(s, max_steps=10_000)
    last = out[("a", 0)][-1]
    assert last.finish_reason == FR.FINISH_REASON_ERROR
    assert last.error.code == FR.ERROR_CODE_DEADLINE_EXCEEDED and last.completion_tokens > 3
    assert out[("late", 0)][-1].error.code == FR.ERROR_CODE_DEADLINE_EXCEEDED
    assert sorted(s.free_slots) == [0, 1]


def test_max_tokens_zero_runs_to_the_end_of_context(tokenizer_json, hf_tokenizer):
    s, eng = make(tokenizer_json, hf_tokenizer, ctx=16)
    s.submit(gen("a", [100, 101, 102, 103], max_tokens=0), b"p")
    out, _ = run(s)
    ids, _, last = summary(out[("a", 0)])
    assert len(ids) == 12 and last.finish_reason == FR.FINISH_REASON_LENGTH


@pytest.mark.parametrize("prompt_len,max_tokens,code,param", [
    (16, 0, FR.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED, ""),
    (10, 7, FR.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED, "max_tokens"),
    (0, 1, FR.ERROR_CODE_INVALID_ARGUMENT, "prompt"),
])
def test_context_and_prompt_validation(tokenizer_json, hf_tokenizer, prompt_len, max_tokens, code, param):
    s, _ = make(tokenizer_json, hf_tokenizer, ctx=16)
    s.submit(gen("a", [50] * prompt_len, n=2, max_tokens=max_tokens), b"p")
    evs = s.step()
    assert [ev.index for _, ev in evs] == [0, 1]  # every choice ends
    for _, ev in evs:
        assert ev.finish_reason == FR.FINISH_REASON_ERROR and ev.error.code == code and ev.error.param == param
    assert not s.requests and not s.has_work


def test_other_validation(tokenizer_json, hf_tokenizer):
    v = hf_tokenizer.get_vocab_size()
    s, _ = make(tokenizer_json, hf_tokenizer)
    s.submit(gen("a", [v], max_tokens=1), b"p")
    s.submit(gen("b", [5], max_tokens=1, stop=["a", "b", "c", "d", "e"]), b"p")
    s.submit(gen("c", [5], max_tokens=1, temperature=9.0), b"p")
    s.submit(worker_pb2.GenerateRequest(request_id="d", model="other", prompt_token_ids=[5]), b"p")
    errs = {ev.request_id: ev.error for _, ev in s.step()}
    assert (errs["a"].code, errs["a"].param) == (FR.ERROR_CODE_INVALID_ARGUMENT, "prompt")
    assert errs["b"].param == "stop" and errs["c"].param == "temperature"
    assert errs["d"].code == FR.ERROR_CODE_NOT_FOUND


def test_queue_full(tokenizer_json, hf_tokenizer):
    # room for slots + max_queue = 3 sequences, as the gateway admits: all three arrive before a step
    s, _ = make(tokenizer_json, hf_tokenizer, slots=1, max_queue=2)
    for rid in "abcd":
        s.submit(gen(rid, [5], max_tokens=2), b"p")
    evs = [ev for _, ev in s.step()]
    over = [ev for ev in evs if ev.finish_reason == FR.FINISH_REASON_ERROR]
    assert [ev.request_id for ev in over] == ["d"] and over[0].error.code == FR.ERROR_CODE_OVERLOADED
    out, _ = run(s)
    assert {k[0] for k in out} == {"a", "b", "c"}


def test_queue_counts_choices(tokenizer_json, hf_tokenizer):
    s, _ = make(tokenizer_json, hf_tokenizer, slots=1, max_queue=2)
    s.submit(gen("a", [5], max_tokens=2), b"p")
    s.submit(gen("b", [5], n=3, max_tokens=2), b"p")      # 1 + 3 sequences > 3
    s.submit(gen("c", [5], n=2, max_tokens=2), b"p")      # 1 + 2 fits
    out, _ = run(s)
    assert [ev.error.code for ev in out[("b", 0)]] == [FR.ERROR_CODE_OVERLOADED]
    assert out[("c", 1)][-1].finish_reason == FR.FINISH_REASON_LENGTH
    s.submit(gen("big", [5], n=5, max_tokens=2), b"p")    # alone it may need more than the room
    out, _ = run(s)
    assert all(out[("big", i)][-1].finish_reason == FR.FINISH_REASON_LENGTH for i in range(5))


def test_engine_error_ends_only_that_request(tokenizer_json, hf_tokenizer):
    s, _ = make(tokenizer_json, hf_tokenizer, fail_token=77)
    s.submit(gen("bad", [76, 77], max_tokens=3), b"p")
    s.submit(gen("ok", [10], max_tokens=3), b"p")
    out, _ = run(s)
    last = out[("bad", 0)][-1]
    assert last.finish_reason == FR.FINISH_REASON_ERROR and last.error.code == FR.ERROR_CODE_INTERNAL
    assert summary(out[("ok", 0)])[0] == [11, 12, 13]
    s.submit(gen("after", [10], max_tokens=2), b"p")
    assert summary(run(s)[0][("after", 0)])[0] == [11, 12]


def test_chunked_prefill(tokenizer_json, hf_tokenizer):
    s, eng = make(tokenizer_json, hf_tokenizer, ctx=1024)
    s.budget.tokens = lambda target_s: 16  # keep chunks small
    s.submit(gen("short", [5], max_tokens=20), b"p")
    s.submit(gen("long", list(range(3, 103)), max_tokens=2), b"p")
    out, _ = run(s)
    assert summary(out[("long", 0)])[0] == [103, 104]
    prefills = [c for c in eng.calls if c[0] == "prefill" and c[1] == 1]
    assert len(prefills) == 7 and max(c[2] for c in prefills) == 16
    # the short request kept decoding while the long prompt was prefilled
    first_long_token_step = next(i for i, c in enumerate(eng.calls) if c == ("decode", (0, 1)))
    assert sum(1 for c in eng.calls[:first_long_token_step] if c == ("decode", (0,))) >= 5


def test_n_choices_and_seed_independence(tokenizer_json, hf_tokenizer):
    def texts(extra):
        s, _ = make(tokenizer_json, hf_tokenizer, slots=4, defaults={})
        s.submit(gen("a", [10], n=2, max_tokens=12, temperature=1.5, seed=7), b"p")
        for i, rid in enumerate(extra):
            s.submit(gen(rid, [20 + i], max_tokens=12, temperature=1.5, seed=i), b"p")
        out, _ = run(s)
        return [summary(out[("a", i)])[0] for i in range(2)]
    alone = texts([])
    assert alone == texts(["x", "y"])
    assert alone[0] != alone[1]


def test_logprobs_in_events(tokenizer_json, hf_tokenizer):
    s, _ = make(tokenizer_json, hf_tokenizer)
    s.submit(gen("a", [10], max_tokens=3, logprobs=True, top_logprobs=2), b"p")
    out, _ = run(s)
    lps = [lp for e in out[("a", 0)] for lp in e.logprobs]
    assert [lp.token_id for lp in lps] == [11, 12, 13]
    assert all(len(lp.top) == 2 and lp.top[0].token_id == lp.token_id for lp in lps)
    assert lps[0].token_bytes == hf_tokenizer.id_to_token(11).encode() or lps[0].token_bytes


def test_prefill_budget_follows_speed():
    from npuflow.llm_worker.scheduler import PrefillBudget
    b = PrefillBudget(lo=16, hi=512, start=32)
    assert b.tokens(0.1) == 32
    b.record(100, 0.5)  # 200 tok/s
    assert b.tokens(0.15) == 30 and b.tokens(0.4) == 80
    b.record(4, 10.0)  # too small a sample to learn from
    assert b.tokens(0.4) == 80
    for _ in range(20):
        b.record(100, 0.01)
    assert b.tokens(0.4) == 512


def _answer(s, rid, prompt, **kw):
    s.submit(gen(rid, prompt, max_tokens=4, **kw), b"p")
    out, _ = run(s)
    evs = out[(rid, 0)]
    return [t for e in evs for t in e.token_ids], evs[-1]


def test_a_prompt_that_starts_like_a_finished_one_reuses_its_kv(tokenizer_json, hf_tokenizer):
    s, eng = make(tokenizer_json, hf_tokenizer, slots=2)
    first = list(range(10, 30))
    _answer(s, "a", first)
    _answer(s, "other", [40, 41, 42])                    # the LRU slot goes to an unrelated prompt
    eng.calls.clear()
    longer = first + [50, 51, 52]
    toks, last = _answer(s, "b", longer)
    slot = next(c[1] for c in eng.calls if c[0] == "truncate")
    assert ("truncate", slot, 20) in eng.calls and ("prefill", slot, 3) in eng.calls
    assert last.cached_prompt_tokens == 20 and last.prompt_tokens == 23
    fresh, _ = make(tokenizer_json, hf_tokenizer, slots=2, prefix_cache=False)
    assert toks == _answer(fresh, "b", longer)[0]
    eng.calls.clear()
    toks_again, last = _answer(s, "c", longer)           # the same prompt: all but its last two
    assert toks_again == toks and last.cached_prompt_tokens == 21
    assert [c for c in eng.calls if c[0] == "prefill"] == [("prefill", slot, 2)]


def test_no_reuse_when_off_or_after_an_engine_error(tokenizer_json, hf_tokenizer):
    s, eng = make(tokenizer_json, hf_tokenizer, slots=1, prefix_cache=False)
    _answer(s, "a", [10, 11, 12])
    _, last = _answer(s, "b", [10, 11, 12, 13])
    assert last.cached_prompt_tokens == 0 and not s.held and not any(c[0] == "truncate" for c in eng.calls)
    s, eng = make(tokenizer_json, hf_tokenizer, slots=1, fail_token=15)
    _, last = _answer(s, "a", [10, 11, 12, 13])              # decodes 14, then 15 fails in the engine
    assert last.finish_reason == FR.FINISH_REASON_ERROR and not s.held and eng.seqs[0] == []
    _, last = _answer(s, "b", [10, 11, 12, 20])
    assert last.cached_prompt_tokens == 0


def test_prefill_pieces_end_on_the_engines_chunk_boundaries(tokenizer_json, hf_tokenizer):
    """With an engine that prefills in chunks of 8 (the AX engine's prefill length), a small
    budget still sends pieces that end on multiples of 8, so no chunk is run twice."""
    from npuflow.llm_worker.scheduler import PrefillBudget
    s, eng = make(tokenizer_json, hf_tokenizer, slots=1)
    eng.prefill_align = 8
    s.align = 8
    s.budget = PrefillBudget(lo=3, hi=5, start=5)
    _answer(s, "a", list(range(10, 40)))                    # 30 tokens
    assert [c[2] for c in eng.calls if c[0] == "prefill"] == [8, 8, 8, 6]
    eng.calls.clear()
    _answer(s, "b", list(range(10, 23)) + list(range(60, 80)))   # reuses 13, then 13 -> 24 -> 32 -> 33
    assert [c[2] for c in eng.calls if c[0] == "prefill"] == [11, 8, 1]


def test_a_short_match_leaves_a_longer_cached_prompt_alone(tokenizer_json, hf_tokenizer):
    """Same text, another image (here: another long tail): the second prompt shares only a short
    head with the first, so it takes the empty slot, and the first prompt's KV stays whole for
    its repeat; without an empty slot the short match is still used."""
    s, eng = make(tokenizer_json, hf_tokenizer, slots=2, ctx=64)
    head, tail_a, tail_b = [10, 11, 12], list(range(20, 40)), list(range(40, 60))
    _answer(s, "a", head + tail_a)
    _, last = _answer(s, "b", head + tail_b)
    assert last.cached_prompt_tokens == 0
    _, last = _answer(s, "a2", head + tail_a)
    assert last.cached_prompt_tokens == len(head + tail_a) - 2
    _, last = _answer(s, "c", head + [70, 71, 72, 73])       # both slots hold prompts now
    assert last.cached_prompt_tokens == len(head)
