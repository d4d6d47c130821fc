"""CpuEngine behaviour on a tiny model: errors, slot isolation, batching, incremental prefill,
with either KV cache type (every test that takes `engine` or `kv` runs on both)."""
import numpy as np
import pytest

import onnxruntime as ort

import npuflow.engine.cpu as cpu
from npuflow.engine.base import EngineError
from npuflow.engine.cpu import CpuEngine

PROMPT = list(range(5, 45))


INT8_KV = cpu.int8_kv_supported()


@pytest.fixture(params=["float32", "int8"])
def kv(request):
    if request.param == "int8" and not INT8_KV:      # test_kv_cache_types checks the error instead
        pytest.skip(f"onnxruntime {ort.__version__} has no int8 KV cache")
    return request.param


@pytest.fixture
def engine(tiny_package, kv):
    eng = CpuEngine(tiny_package, max_slots=4, context_length=64, kv_cache=kv)
    yield eng
    eng.close()


def close(a, b):
    # different batch shapes quantize activations per row identically, so results agree tightly
    return np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max())


def test_shapes_and_lengths(engine):
    assert engine.vocab_size == engine.package.dims.vocab
    out = engine.prefill(0, PROMPT)
    assert out.shape == (engine.vocab_size,) and out.dtype == np.float32
    assert engine.length(0) == len(PROMPT)
    all_ = engine.prefill(1, PROMPT, all_logits=True)
    assert all_.shape == (len(PROMPT), engine.vocab_size)
    assert close(all_[-1], out)
    d = engine.decode([0, 1], [7, 8])
    assert d.shape == (2, engine.vocab_size)
    assert engine.length(0) == engine.length(1) == len(PROMPT) + 1
    engine.release(0)
    assert engine.length(0) == 0


def test_errors(engine):
    with pytest.raises(EngineError, match="empty prompt"):
        engine.prefill(0, [])
    with pytest.raises(EngineError, match="outside the vocabulary"):
        engine.prefill(0, [1, engine.vocab_size])
    with pytest.raises(EngineError, match="outside the vocabulary"):
        engine.prefill(0, [-1])
    with pytest.raises(EngineError, match="does not fit"):
        engine.prefill(0, [3] * 65)
    assert engine.length(0) == 0                       # nothing was written by refused calls
    engine.prefill(0, [3] * 60)
    with pytest.raises(EngineError, match="room for 4"):
        engine.prefill(0, [3] * 5)
    engine.prefill(0, [3] * 4)
    with pytest.raises(EngineError, match="full"):
        engine.decode([0], [3])
    with pytest.raises(EngineError, match="out of range"):
        engine.prefill(4, [3])
    with pytest.raises(EngineError, match="outside the vocabulary"):
        engine.decode([1], [10**6])
    with pytest.raises(EngineError, match="twice"):
        engine.decode([1, 1], [3, 3])
    for msg in ("empty prompt", "full"):
        assert "\n" not in msg


def test_context_length_clamped_to_model(tiny_package):
    eng = CpuEngine(tiny_package, context_length=10**6)
    assert eng.context_length == tiny_package.context_length


def test_incremental_prefill_and_decode_equal_one_pass(engine):
    whole = engine.prefill(0, PROMPT, all_logits=True)
    engine.prefill(1, PROMPT[:10])
    part = engine.prefill(1, PROMPT[10:30], all_logits=True)
    assert close(part, whole[10:30])
    for i in range(30, len(PROMPT)):
        assert close(engine.decode([1], [PROMPT[i]])[0], whole[i])


def test_chunked_prefill(engine, monkeypatch):
    whole = engine.prefill(0, PROMPT, all_logits=True)
    monkeypatch.setattr(cpu, "PREFILL_CHUNK", 7)
    assert close(engine.prefill(1, PROMPT, all_logits=True), whole)
    assert close(engine.prefill(2, PROMPT), whole[-1])


def _greedy(engine, slot, prompt, n):
    tok = int(engine.prefill(slot, prompt).argmax())
    out = [tok]
    for _ in range(n - 1):
        tok = int(engine.decode([slot], [tok])[0].argmax())
        out.append(tok)
    return out


def test_batched_decode_equals_alone_and_slots_are_isolated(tiny_package, kv):
    prompts = {0: PROMPT[:12], 1: PROMPT[3:30], 3: PROMPT[20:25]}     # slot 2 idle: a gap row
    alone = {}
    for s, p in prompts.items():
        eng = CpuEngine(tiny_package, max_slots=4, context_length=64, kv_cache=kv)
        alone[s] = _greedy(eng, s, p, 12)
        eng.close()
    eng = CpuEngine(tiny_package, max_slots=4, context_length=64, kv_cache=kv)
    eng.prefill(2, [9] * 50)                 # a live slot that sits out of the decode steps
    toks = {s: int(eng.prefill(s, p).argmax()) for s, p in prompts.items()}
    got = {s: [t] for s, t in toks.items()}
    for step in range(11):
        order = [3, 0, 1] if step % 2 else [0, 1, 3]                 # order of slots is free
        logits = eng.decode(order, [toks[s] for s in order])
        for row, s in enumerate(order):
            toks[s] = int(logits[row].argmax())
            got[s].append(toks[s])
    assert got == alone
    assert eng.length(2) == 50
    # the skipped slot still continues exactly as it would have alone
    ref = CpuEngine(tiny_package, max_slots=1, context_length=64, kv_cache=kv)
    assert close(eng.decode([2], [9])[0], (ref.prefill(0, [9] * 50), ref.decode([0], [9])[0])[1])


def test_release_reuses_slot_without_leakage(engine):
    first = engine.prefill(0, PROMPT[:20])
    engine.release(0)
    engine.prefill(0, PROMPT[20:])
    engine.release(0)
    assert close(engine.prefill(0, PROMPT[:20]), first)


def test_kv_cache_types(tiny_package, tmp_path):
    """int8 KV takes a quarter of float32's buffers; an unknown type, a package without the int8
    graph or an onnxruntime without the int8 cache is a clear error."""
    f32 = CpuEngine(tiny_package, max_slots=2, context_length=64)
    assert f32.kv_dtype == np.float32
    if INT8_KV:
        i8 = CpuEngine(tiny_package, max_slots=2, context_length=64, kv_cache="int8")
        assert i8.kv_dtype == np.int8 and f32._kv[0][0].nbytes == 4 * i8._kv[0][0].nbytes
    else:
        with pytest.raises(EngineError, match="kv_cache int8 needs an onnxruntime whose GroupQueryAttention"):
            CpuEngine(tiny_package, kv_cache="int8")
    with pytest.raises(ValueError, match="kv_cache must be one of float32, int8"):
        CpuEngine(tiny_package, kv_cache="float16")
    from npuflow.convert import convert
    exact = convert(tiny_package.extra["source"]["path"], tmp_path / "exact", float_activations=True)
    assert "model_kv_int8" not in exact.files
    with pytest.raises(EngineError, match="kv_cache int8 needs"):
        CpuEngine(exact, kv_cache="int8")


def test_int8_kv_calibration_computes_in_float32(tiny_package):
    """The int8 cache's scales come from a float32 prefill whatever accuracy_level the graph
    serves with (int8 activations round differently from one onnxruntime release to the next),
    and calibrating leaves the graph as it was."""
    import copy

    import onnx

    from npuflow.convert.kv_int8 import calibrate
    d = tiny_package.dims
    model = onnx.load(str(tiny_package.file("model")))
    levels = [a.i for n in model.graph.node if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "accuracy_level"]
    assert levels and set(levels) == {4}
    table = np.random.default_rng(0).standard_normal((d.vocab, d.hidden)).astype(np.float32)
    kw = dict(kv_heads=d.kv_heads, head_dim=d.head_dim, rope_theta=tiny_package.extra["graph"]["rope_theta"],
              interleaved=tiny_package.extra["graph"]["rotary_interleaved"])
    served = calibrate(model, lambda ids: table[ids], PROMPT, **kw)
    assert [a.i for n in model.graph.node if n.op_type == "MatMulNBits"
            for a in n.attribute if a.name == "accuracy_level"] == levels
    exact = copy.deepcopy(model)
    for n in exact.graph.node:
        for a in n.attribute:
            if n.op_type == "MatMulNBits" and a.name == "accuracy_level":
                a.i = 0
    for (k, v), (k0, v0) in zip(served, calibrate(exact, lambda ids: table[ids], PROMPT, **kw)):
        assert np.array_equal(k, k0) and np.array_equal(v, v0)


def test_close_twice(tiny_package):
    eng = CpuEngine(tiny_package)
    eng.close()
    eng.close()
    with pytest.raises(EngineError, match="closed"):
        eng.prefill(0, [1])


def test_truncate_keeps_a_prefix_for_the_next_prompt(engine):
    """What a reused prefix computes equals a fresh prefill of the whole prompt, bit for bit, even
    after the slot decoded past it; keeping more than the slot holds is an error."""
    fresh = engine.prefill(0, PROMPT)
    engine.release(0)
    engine.prefill(0, PROMPT[:25])
    engine.decode([0], [3])
    engine.decode([0], [4])
    engine.truncate(0, 25)
    assert engine.length(0) == 25
    assert np.array_equal(engine.prefill(0, PROMPT[25:]), fresh)
    for rest in (2, 3):                                  # the scheduler leaves at least two
        engine.truncate(0, len(PROMPT) - rest)
        assert np.array_equal(engine.prefill(0, PROMPT[-rest:]), fresh)
    with pytest.raises(EngineError, match="cannot keep"):
        engine.truncate(0, len(PROMPT) + 1)
    engine.truncate(0, 0)
    assert engine.length(0) == 0
