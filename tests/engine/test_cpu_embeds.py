"""CpuEngine.prefill(embeds=(rows, values)): given rows of the prompt take given input embeddings
(the vision-language path writes image embeddings over the image-token positions)."""
import numpy as np
import pytest

import npuflow.engine.cpu as cpu
from npuflow.engine.base import EngineError
from npuflow.engine.cpu import CpuEngine

PROMPT = list(range(5, 45))
ROWS = np.array([3, 4, 5, 6, 20, 33], np.int64)


@pytest.fixture
def engine(tiny_package):
    eng = CpuEngine(tiny_package, max_slots=4, context_length=128)
    yield eng
    eng.close()


def close(a, b):
    return np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max())


def other_values(engine, k, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (k, engine.package.dims.hidden)).astype(np.float32)


def test_table_rows_as_embeds_are_bit_identical(engine):
    plain = engine.prefill(0, PROMPT, all_logits=True)
    rows_of_table = engine._embed.lookup(np.asarray(PROMPT)[ROWS])
    same = engine.prefill(1, PROMPT, all_logits=True, embeds=(ROWS, rows_of_table))
    assert np.array_equal(plain, same)
    empty = engine.prefill(2, PROMPT, embeds=(np.zeros(0, np.int64), np.zeros((0, engine.package.dims.hidden))))
    assert np.array_equal(plain[-1], empty)
    # decoding after them continues identically too
    assert np.array_equal(engine.decode([0], [9]), engine.decode([1], [9]))


def test_other_embeds_change_logits_from_their_rows_on(engine):
    plain = engine.prefill(0, PROMPT, all_logits=True)
    got = engine.prefill(1, PROMPT, all_logits=True, embeds=(ROWS, other_values(engine, len(ROWS))))
    first = int(ROWS.min())
    assert np.array_equal(got[:first], plain[:first])            # causal: rows before are untouched
    diff = np.abs(got - plain).max(axis=1)
    assert (diff[first:] > 1e-3).all()
    # the order of the pairs does not matter
    perm = np.random.default_rng(1).permutation(len(ROWS))
    again = engine.prefill(2, PROMPT, all_logits=True,
                           embeds=(ROWS[perm], other_values(engine, len(ROWS))[perm]))
    assert np.array_equal(again, got)


def test_embeds_split_across_prefill_chunks(engine, monkeypatch):
    values = other_values(engine, len(ROWS), seed=3)
    whole = engine.prefill(0, PROMPT, all_logits=True, embeds=(ROWS, values))
    monkeypatch.setattr(cpu, "PREFILL_CHUNK", 7)      # rows 3..6 in chunk 0, 20 in chunk 2, 33 in chunk 4
    pieces = engine.prefill(1, PROMPT, all_logits=True, embeds=(ROWS, values))
    assert close(pieces, whole)
    last = engine.prefill(2, PROMPT, embeds=(ROWS, values))
    assert close(last, whole[-1])


def test_rows_are_relative_to_this_prefill(engine):
    values = other_values(engine, len(ROWS), seed=4)
    whole = engine.prefill(0, PROMPT, all_logits=True, embeds=(ROWS, values))
    cut = 10
    engine.prefill(1, PROMPT[:cut], embeds=(ROWS[ROWS < cut], values[ROWS < cut]))
    rest = engine.prefill(1, PROMPT[cut:], all_logits=True, embeds=(ROWS[ROWS >= cut] - cut, values[ROWS >= cut]))
    assert close(rest, whole[cut:])


def _z(k, h):
    return np.zeros((k, h), np.float32)


@pytest.mark.parametrize("make, message", [
    (lambda H: (np.array([0, 1]), _z(2, H + 1)), "values must be float"),
    (lambda H: (np.array([1, 2]), np.zeros(H, np.float32)), "values must be float"),
    (lambda H: (np.array([1, 2]), _z(1, H)), "values must be float"),
    (lambda H: (np.array([1]), np.zeros((1, H), np.int64)), "values must be float"),
    (lambda H: (np.array([0, 40]), _z(2, H)), "outside the prompt"),
    (lambda H: (np.array([-1]), _z(1, H)), "outside the prompt"),
    (lambda H: (np.array([2, 2]), _z(2, H)), "twice"),
    (lambda H: (np.array([[1, 2]]), _z(2, H)), "flat array of integers"),
    (lambda H: (np.array([1.0]), _z(1, H)), "flat array of integers"),
    (lambda H: (np.array([1]), np.full((1, H), np.nan, np.float32)), "finite"),
    (lambda H: (np.array([1]),), "pair"),
    (lambda H: 5, "pair"),
])
def test_bad_embeds_are_engine_errors(engine, make, message):
    with pytest.raises(EngineError, match=message):
        engine.prefill(0, PROMPT, embeds=make(engine.package.dims.hidden))
    assert engine.length(0) == 0                       # nothing was appended
    assert engine.prefill(0, PROMPT).shape == (engine.vocab_size,)
