"""Token choice for a batch of sequences: penalties, logit bias, temperature, min_p, top_k,
top_p, seeded draws, log-probabilities.

Order per row: repetition penalty (prompt and output, CTRL-style), frequency and presence
penalties (output tokens, OpenAI semantics), logit bias, the grammar's token mask (-inf for the
tokens a constrained choice may not take), temperature, then for sampled rows
min_p, top_k, top_p and one uniform draw from the row's own Generator. Temperature 0 is greedy
(argmax, no draw). Each sequence has its own numpy Generator seeded from (seed, choice index), so
a seed gives the same text whatever else is in the batch. Log-probabilities come from the
log-softmax of the logits after penalties, bias and temperature (before truncation), and are
computed only for rows that ask for them; a masked token's log-probability is reported as
-9999.0 (OpenAI's "very unlikely"), never -inf, which JSON cannot carry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from npuflow.v1 import common_pb2

from .errors import invalid

_OPTIONAL = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
             "repetition_penalty", "seed")
MAX_TOP_LOGPROBS = 20
LOGPROB_FLOOR = -9999.0
_FLOOR = 1e-4  # weight (relative to the best token) under which tokens are searched last
_BLOCK = 256   # block size of the two-level draw over long rows


class _Scratch:
    """Float32 work rows reused from step to step. A fresh vocabulary-sized array is past
    malloc's mmap threshold, so each one would cost a mapping, page faults and an unmapping:
    several of those per token were most of a sampled step's time."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, rows: int, cols: int) -> np.ndarray:
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols:
            buf = self._bufs[name] = np.empty((max(rows, 1), cols), np.float32)
        return buf[:rows]


_scratch = _Scratch()   # sampling runs on the scheduler's thread only


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5


def resolve_sampling(p: common_pb2.SamplingParams, defaults: Mapping[str, Any], vocab_size: int) -> SamplingConfig:
    """Request values where set (proto3 optional), else the model's defaults, else neutral.
    Raises RequestError(INVALID_ARGUMENT) naming the field at fault."""
    vals: dict[str, Any] = {}
    for name in _OPTIONAL:
        if p.HasField(name):
            vals[name] = getattr(p, name)
        elif defaults.get(name) is not None:
            vals[name] = defaults[name]
    try:
        cfg = SamplingConfig(
            temperature=float(vals.get("temperature", 1.0)), top_p=float(vals.get("top_p", 1.0)),
            top_k=int(vals.get("top_k", 0)), min_p=float(vals.get("min_p", 0.0)),
            presence_penalty=float(vals.get("presence_penalty", 0.0)),
            frequency_penalty=float(vals.get("frequency_penalty", 0.0)),
            repetition_penalty=float(vals.get("repetition_penalty", 1.0)),
            seed=None if vals.get("seed") is None else int(vals["seed"]),
            logit_bias={int(k): float(v) for k, v in p.logit_bias.items()},
            logprobs=bool(p.logprobs or p.top_logprobs), top_logprobs=int(p.top_logprobs))
    except (TypeError, ValueError) as e:
        raise invalid(f"bad sampling default: {e}", "sampling") from None
    checks = [
        (0 <= cfg.temperature <= 2, "temperature", "must be between 0 and 2"),
        (0 < cfg.top_p <= 1, "top_p", "must be in (0, 1]"),
        (cfg.top_k >= 0, "top_k", "must not be negative"),
        (0 <= cfg.min_p <= 1, "min_p", "must be in [0, 1]"),
        (-2 <= cfg.presence_penalty <= 2, "presence_penalty", "must be between -2 and 2"),
        (-2 <= cfg.frequency_penalty <= 2, "frequency_penalty", "must be between -2 and 2"),
        (0 < cfg.repetition_penalty <= 10, "repetition_penalty", "must be in (0, 10]"),
        (cfg.top_logprobs <= MAX_TOP_LOGPROBS, "top_logprobs", f"must be at most {MAX_TOP_LOGPROBS}"),
    ]
    for ok, name, why in checks:
        if not ok:
            raise invalid(f"{name} {why}", name)
    for tok, bias in cfg.logit_bias.items():
        if tok >= vocab_size:
            raise invalid(f"logit_bias token {tok} is outside the vocabulary (size {vocab_size})", "logit_bias")
        if not -100 <= bias <= 100:
            raise invalid("logit_bias values must be between -100 and 100", "logit_bias")
    return cfg


class SamplerState:
    """What one sequence's sampling remembers between steps."""

    def __init__(self, cfg: SamplingConfig, vocab_size: int, prompt_ids: Sequence[int] = (), index: int = 0,
                 matcher: Any = None):
        self.cfg = cfg
        self.matcher = matcher  # grammar.GrammarMatcher or None
        seed = cfg.seed & 0xFFFFFFFFFFFFFFFF if cfg.seed is not None else None
        self.rng = np.random.default_rng([seed, index] if seed is not None else None)
        self.counts = (np.zeros(vocab_size, np.float32)
                       if cfg.presence_penalty or cfg.frequency_penalty else None)
        self.seen = None
        if cfg.repetition_penalty != 1.0:
            self.seen = np.zeros(vocab_size, bool)
            self.seen[np.asarray(prompt_ids, dtype=np.int64)] = True
        self.bias_ids = np.fromiter(cfg.logit_bias.keys(), np.int64) if cfg.logit_bias else None
        self.bias_vals = np.fromiter(cfg.logit_bias.values(), np.float32) if cfg.logit_bias else None

    def observe(self, token: int) -> None:
        if self.counts is not None:
            self.counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True


@dataclass(frozen=True)
class Pick:
    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


def _adjust(x: np.ndarray, states: Sequence[SamplerState]) -> None:
    """Penalties and logit bias, in place on the [B, V] logits."""
    rows = [i for i, s in enumerate(states) if s.seen is not None]
    if rows:
        sub = x[rows]
        r = np.array([states[i].cfg.repetition_penalty for i in rows], np.float32)[:, None]
        seen = np.stack([states[i].seen for i in rows])
        x[rows] = np.where(seen, np.where(sub > 0, sub / r, sub * r), sub)
    rows = [i for i, s in enumerate(states) if s.counts is not None]
    if rows:
        c = np.stack([states[i].counts for i in rows])
        fp = np.array([states[i].cfg.frequency_penalty for i in rows], np.float32)[:, None]
        pp = np.array([states[i].cfg.presence_penalty for i in rows], np.float32)[:, None]
        x[rows] -= fp * c + pp * (c > 0)
    for i, s in enumerate(states):
        if s.bias_ids is not None:
            x[i, s.bias_ids] += s.bias_vals
        if s.matcher is not None:
            s.matcher.apply(x[i])


def _top_k(p: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest weights, in no order. The search starts among the weights above
    _FLOOR (a few hundred of a vocabulary's tens of thousands, which is what makes it cheap) and
    widens to the whole row when fewer than k are there, so the answer is always exact."""
    cand = np.flatnonzero(p >= _FLOOR)
    if len(cand) < k:
        cand = np.arange(p.shape[0])
    if len(cand) > k:
        cand = cand[np.argpartition(p[cand], len(cand) - k)[len(cand) - k:]]
    return cand


def _nucleus(p: np.ndarray, cand: np.ndarray | None, top_p: float) -> np.ndarray:
    """The smallest set of best tokens holding top_p of the mass, best first. Without `cand`
    the tokens above _FLOOR are tried first: when they hold enough mass the nucleus is among
    them (they are exactly the best ones); otherwise the whole row is sorted."""
    total = float(p[cand].sum()) if cand is not None else float(p.sum())
    order = cand if cand is not None else np.flatnonzero(p >= _FLOOR)
    order = order[np.argsort(-p[order], kind="stable")]
    c = np.cumsum(p[order], dtype=np.float64)
    if cand is None and c[-1] < top_p * total:
        order = np.argsort(-p, kind="stable")
        c = np.cumsum(p[order], dtype=np.float64)
    keep = int(np.searchsorted(c, top_p * total, side="left")) + 1
    return order[:keep]


def _draw(w: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to the weights w (inverse CDF). Long rows are
    searched block by block: a cumulative sum over a whole vocabulary costs far more than
    summing blocks and then searching inside one."""
    n = w.shape[0]
    if n <= _BLOCK * 4:
        c = np.cumsum(w, dtype=np.float64)
        if not c[-1] > 0:
            return int(np.argmax(w))
        return min(int(np.searchsorted(c, rng.random() * c[-1], side="right")), n - 1)
    pad = (-n) % _BLOCK
    wb = np.concatenate([w, np.zeros(pad, w.dtype)]) if pad else w
    cb = np.cumsum(wb.reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64))
    if not cb[-1] > 0:
        return int(np.argmax(w))
    u = rng.random() * cb[-1]
    b = min(int(np.searchsorted(cb, u, side="right")), len(cb) - 1)
    inner = np.cumsum(wb[b * _BLOCK:(b + 1) * _BLOCK], dtype=np.float64)
    u -= cb[b - 1] if b else 0.0
    j = min(int(np.searchsorted(inner, u, side="right")), int(np.flatnonzero(inner < inner[-1]).size))
    return min(b * _BLOCK + j, n - 1)


def _choose(p: np.ndarray, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    """Draw one id from the (unnormalised, best token = 1) probabilities p after top_k and top_p."""
    v = p.shape[0]
    order = _top_k(p, top_k) if top_k and top_k < v else None
    if top_p < 1.0:
        order = _nucleus(p, order, top_p)
    if order is None:
        return _draw(p, rng)
    return int(order[_draw(p[order], rng)])


def _adjusts(s: SamplerState) -> bool:
    """Whether the row's logits change before the choice (penalties, bias, grammar)."""
    return s.seen is not None or s.counts is not None or s.bias_ids is not None or s.matcher is not None


def _plain_greedy(s: SamplerState) -> bool:
    """Nothing to do but argmax: no penalties, bias, grammar or log-probabilities."""
    return s.cfg.greedy and not s.cfg.logprobs and not _adjusts(s)


def sample_batch(logits: np.ndarray, states: Sequence[SamplerState]) -> list[Pick]:
    """One token per row of logits [B, V] (row i belongs to states[i])."""
    if all(_plain_greedy(s) for s in states):  # the common case, without copying the logits
        return [Pick(int(t)) for t in np.argmax(np.asarray(logits).reshape(len(states), -1), axis=1)]
    src = np.asarray(logits, dtype=np.float32).reshape(len(states), -1)
    if any(_adjusts(s) or s.cfg.logprobs for s in states):
        x = _scratch.get("logits", *src.shape)
        np.copyto(x, src)
        _adjust(x, states)
        temps = np.array([1.0 if s.cfg.greedy else s.cfg.temperature for s in states], np.float32)
        if np.any(temps != 1.0):
            x /= temps[:, None]
        scaled = True
    else:                                   # nothing changes the logits: read them where they are
        x, scaled = src, False
    tokens = np.zeros(len(states), np.int64)
    greedy = [i for i, s in enumerate(states) if s.cfg.greedy]
    if greedy:
        tokens[greedy] = np.argmax(x[greedy], axis=1)
    sampled = [i for i, s in enumerate(states) if not s.cfg.greedy]
    if sampled:
        w = _scratch.get("weights", len(sampled), x.shape[1])
        for row, i in enumerate(sampled):
            p, s = w[row], states[i]
            np.subtract(x[i], x[i].max(), out=p)
            if not scaled and s.cfg.temperature != 1.0:
                p *= np.float32(1.0 / s.cfg.temperature)
            np.exp(p, out=p)                          # the best token has weight 1
            if s.cfg.min_p > 0:
                p[p < np.float32(s.cfg.min_p)] = 0.0
            tokens[i] = _choose(p, s.cfg.top_k, s.cfg.top_p, s.rng)
    picks = []
    for i, s in enumerate(states):
        tok = int(tokens[i])
        s.observe(tok)
        if not s.cfg.logprobs:
            picks.append(Pick(tok))
            continue
        row = x[i].astype(np.float64)
        m = row.max()
        lp = row - (m + np.log(np.exp(row - m).sum()))
        top: tuple[tuple[int, float], ...] = ()
        n = s.cfg.top_logprobs
        if n:
            idx = np.argpartition(lp, len(lp) - n)[len(lp) - n:]
            idx = idx[np.argsort(-lp[idx], kind="stable")]
            top = tuple((int(j), float(lp[j])) for j in idx)
        picks.append(Pick(tok, max(float(lp[tok]), LOGPROB_FLOOR),
                          tuple((t, max(v, LOGPROB_FLOOR)) for t, v in top)))
    return picks
