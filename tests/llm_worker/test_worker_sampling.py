import numpy as np
import pytest

from npuflow.llm_worker.errors import RequestError
from npuflow.llm_worker.sampling import SamplerState, SamplingConfig, resolve_sampling, sample_batch
from npuflow.v1 import common_pb2

V = 50


def logits(seed=0):
    return np.random.default_rng(seed).normal(0, 2, V).astype(np.float32)


def draw(cfg, x, n=1, prompt=(), index=0):
    s = SamplerState(cfg, V, prompt, index)
    return [sample_batch(x[None], [s])[0].token for _ in range(n)]


def test_greedy_is_argmax_and_batched():
    xs = np.stack([logits(i) for i in range(4)])
    states = [SamplerState(SamplingConfig(temperature=0), V) for _ in range(4)]
    assert [p.token for p in sample_batch(xs, states)] == list(np.argmax(xs, axis=1))


def test_seed_determinism_independent_of_batch():
    x = logits()
    cfg = SamplingConfig(temperature=1.0, seed=42)
    alone = draw(cfg, x, 30)
    assert alone == draw(cfg, x, 30)
    a = SamplerState(cfg, V)
    others = [SamplerState(SamplingConfig(temperature=1.5, seed=s), V) for s in (1, 2)]
    mixed = [sample_batch(np.stack([logits(5), x, logits(6)]), [others[0], a, others[1]])[1].token for _ in range(30)]
    assert mixed == alone
    assert draw(SamplingConfig(temperature=1.0, seed=43), x, 30) != alone
    assert draw(cfg, x, 30, index=1) != alone  # choice index changes the stream


def test_top_k_top_p_min_p_restrict_choices():
    x = logits()
    order = list(np.argsort(-x))
    assert set(draw(SamplingConfig(temperature=1.0, top_k=1, seed=1), x, 50)) == {order[0]}
    assert set(draw(SamplingConfig(temperature=2.0, top_k=3, seed=1), x, 300)) <= set(order[:3])
    assert set(draw(SamplingConfig(temperature=1.0, top_p=1e-6, seed=1), x, 50)) == {order[0]}
    p = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    nucleus = int(np.searchsorted(np.cumsum(p[order]), 0.5)) + 1
    got = set(draw(SamplingConfig(temperature=1.0, top_p=0.5, seed=2), x, 500))
    assert got <= set(order[:nucleus]) and len(got) > 1
    keep = {i for i in range(V) if p[i] >= 0.3 * p.max()}
    assert set(draw(SamplingConfig(temperature=1.0, min_p=0.3, seed=3), x, 300)) <= keep


def test_top_p_wider_than_candidates():
    x = np.zeros(1000, np.float32)  # flat: the nucleus needs ~900 tokens, more than the 256 candidates
    s = SamplerState(SamplingConfig(temperature=1.0, top_p=0.9, seed=0), 1000)
    got = {sample_batch(x[None], [s])[0].token for _ in range(2000)}
    assert len(got) > 300


def test_penalties():
    x = np.zeros(V, np.float32)
    x[7], x[8] = 1.0, 0.9
    s = SamplerState(SamplingConfig(temperature=0, frequency_penalty=0.5), V)
    assert [sample_batch(x[None], [s])[0].token for _ in range(3)] == [7, 8, 7]  # 7 drops by 0.5 per use
    s = SamplerState(SamplingConfig(temperature=0, presence_penalty=2.0), V)
    assert [sample_batch(x[None], [s])[0].token for _ in range(3)][:2] == [7, 8]
    s = SamplerState(SamplingConfig(temperature=0, repetition_penalty=1.5), V, prompt_ids=[7])
    assert sample_batch(x[None], [s])[0].token == 8  # 7 seen in the prompt: 1.0/1.5 < 0.9
    s = SamplerState(SamplingConfig(temperature=0, presence_penalty=-2.0), V)
    assert [sample_batch(x[None], [s])[0].token for _ in range(3)] == [7, 7, 7]


def test_logit_bias_and_logprobs():
    x = logits()
    s = SamplerState(SamplingConfig(temperature=0, logit_bias={3: 100.0}, logprobs=True, top_logprobs=5), V)
    pick = sample_batch(x[None], [s])[0]
    assert pick.token == 3 and pick.logprob == pytest.approx(0.0, abs=1e-3)
    assert [t for t, _ in pick.top][0] == 3 and len(pick.top) == 5
    lps = [lp for _, lp in pick.top]
    assert lps == sorted(lps, reverse=True)
    s = SamplerState(SamplingConfig(temperature=0, logprobs=True), V)
    pick = sample_batch(x[None], [s])[0]
    ref = x - np.log(np.exp(x.astype(np.float64)).sum())
    assert pick.logprob == pytest.approx(ref[pick.token], abs=1e-5) and pick.top == ()
    assert sample_batch(x[None], [SamplerState(SamplingConfig(temperature=0), V)])[0].logprob is None


def test_resolve_defaults_and_validation():
    p = common_pb2.SamplingParams(top_p=0.5)
    cfg = resolve_sampling(p, {"temperature": 0.0, "top_p": 0.9, "top_k": 20}, V)
    assert (cfg.temperature, cfg.top_p, cfg.top_k) == (0.0, 0.5, 20)
    cfg = resolve_sampling(common_pb2.SamplingParams(temperature=0.0), {"temperature": 0.7}, V)
    assert cfg.greedy  # an explicit 0 is not "unset"
    assert resolve_sampling(common_pb2.SamplingParams(), {}, V).temperature == 1.0
    for bad, param in [(dict(temperature=3.0), "temperature"), (dict(top_p=0.0), "top_p"),
                       (dict(min_p=1.5), "min_p"), (dict(presence_penalty=-3.0), "presence_penalty"),
                       (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(top_logprobs=21), "top_logprobs"),
                       (dict(logit_bias={V: 1.0}), "logit_bias"), (dict(logit_bias={1: 101.0}), "logit_bias")]:
        with pytest.raises(RequestError) as e:
            resolve_sampling(common_pb2.SamplingParams(**bad), {}, V)
        assert e.value.param == param and e.value.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT


def test_fast_paths_pick_exactly_the_brute_force_sets():
    """top_k / top_p search the heavy tokens first; the sets must equal a full sort's, for peaked
    and for flat rows (where the first search is not enough and the whole row is sorted)."""
    from npuflow.llm_worker.sampling import _nucleus, _top_k
    rng = np.random.default_rng(1)
    for scale in (0.1, 1.0, 4.0):
        z = rng.standard_normal(5000) * scale
        p = np.exp(z - z.max()).astype(np.float32)
        full = np.argsort(-p, kind="stable")
        for k in (1, 7, 300, 4999):
            assert set(_top_k(p, k).tolist()) == set(full[:k].tolist())
        for top_p in (0.05, 0.5, 0.95):
            c = np.cumsum(p[full], dtype=np.float64)
            keep = int(np.searchsorted(c, top_p * float(p.sum()), side="left")) + 1
            assert set(_nucleus(p, None, top_p).tolist()) == set(full[:keep].tolist())


def test_block_draw_follows_the_weights():
    from npuflow.llm_worker.sampling import _draw
    rng = np.random.default_rng(2)
    w = np.zeros(49152, np.float32)
    w[[3, 1000, 30000, 49151]] = [1.0, 2.0, 3.0, 4.0]
    counts = np.bincount([_draw(w, rng) for _ in range(20000)], minlength=len(w))
    assert set(np.flatnonzero(counts)) == {3, 1000, 30000, 49151}
    np.testing.assert_allclose(counts[[3, 1000, 30000, 49151]] / 20000, [0.1, 0.2, 0.3, 0.4], atol=0.015)
