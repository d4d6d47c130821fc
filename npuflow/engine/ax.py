"""The AX engine: a pulsar2 LLM package on pyaxengine (or its onnxruntime mirror on a PC).

One session per decoder layer plus the post graph; embeddings are looked up on the CPU from the
bf16 table. Each slot owns its KV cache, bf16 [1, C, D] per layer and kind. Prefill runs in chunks
of the package's prefill length P through the shape groups: a chunk always starts at a multiple of
P (group g reads exactly (g-1)*P past rows), so appending to a slot whose length is not a multiple
of P re-runs the tokens of the partial chunk (the slot keeps its token history for that); tokens
past the last prefill group go through the decode group one by one. Decode runs group 0 for each
slot in turn. Every input is built with the dtype and shape the graph declares, input names are
looked up per group (some builds suffix them), and outputs are taken in declared order
(output_names=None).

Image embeddings (prefill's `embeds`) replace the table rows of their positions, rounded to bf16 as
the table's rows are; the slot keeps them by position (like its token history), so a chunk that
is re-run for an unaligned append feeds them again, and truncate/release forget them.
"""
from __future__ import annotations

import pathlib
import re
from typing import Any, Sequence

import ml_dtypes
import numpy as np

from ..logs import get_logger
from ..models.package import ModelPackage
from .ax_cmm import AXCL_SMI, CMM_INFO, check_fits
from .ax_runtime import SessionFactory, factory_for, release_session
from .ax_timing import DeviceClock, TimedSession, profile
from .base import EngineError, check_slot, check_token_ids, check_truncate

log = get_logger("engine.ax")

BF16 = np.dtype(ml_dtypes.bfloat16)
MASKED = -65536.0
LAYER_IN = ("K_cache", "V_cache", "indices", "input", "mask")
LAYER_OUT = ("K_cache_out", "V_cache_out", "output")


def _lookup(args: list, canon: Sequence[str], where: str) -> list[int]:
    """Positions of the canonical names among args (exact name, or name + '_<n>')."""
    names = [a.name for a in args]
    out = []
    for c in canon:
        pat = re.compile(rf"^{re.escape(c)}(_\d+)?$")
        hits = [i for i, n in enumerate(names) if pat.match(n)]
        if len(hits) != 1:
            raise EngineError(f"{where}: cannot find input/output '{c}' among {names}")
        out.append(hits[0])
    return out


def _shape_groups(sess: Any) -> int:
    """How many shape groups sess has, through the public API only: pyaxengine keeps the count on
    its provider session (InferenceSession._sess._shape_count), and get_inputs(g) raises IndexError
    for g == count and ValueError beyond."""
    n = 0
    while n < 4096:
        try:
            if not sess.get_inputs(shape_group=n):
                break
        except (ValueError, IndexError):
            break
        n += 1
    return n


class AxEngine:
    def __init__(self, package: ModelPackage, *, max_slots: int = 1, context_length: int | None = None,
                 session_factory: SessionFactory | None = None, device_id: int | None = None, provider: str = "",
                 simulate_timing: str = "", cmm_info: str = CMM_INFO, axcl_smi: str | Sequence[str] = AXCL_SMI,
                 threads: int = 1):
        if max_slots < 1:
            raise ValueError("max_slots must be at least 1")
        ax = package.extra.get("ax")
        if not ax:
            raise EngineError(f"model '{package.id}' is not an AX package")
        root = package.path
        layer_files = [root / f for f in ax["layer_files"]]
        factory = session_factory or factory_for(layer_files[0], device_id=device_id, provider=provider,
                                                   threads=threads)
        need, estimated = int(ax.get("cmm_kb") or 0), bool(ax.get("cmm_estimated"))
        free = check_fits(need, "the model", cmm_info, estimated=estimated, provider=getattr(factory, "provider", ""),
                          device_id=getattr(factory, "device_id", device_id), smi=axcl_smi)
        self.package = package
        self.max_slots = max_slots
        self.clock = DeviceClock()
        self._layers: list[Any] = []
        self._post: Any = None
        self._closed = False
        try:
            for f in layer_files:
                self._layers.append(factory(f))
            self._post = factory(root / ax["post_file"])
            if simulate_timing:
                prof = profile(simulate_timing)
                self._layers = [TimedSession(s, prof, post=False, clock=self.clock) for s in self._layers]
                self._post = TimedSession(self._post, prof, post=True, clock=self.clock)
            self._read_signature(package)
            self._embed = self._open_embedding(root / ax["embed_file"])
        except BaseException:
            self.close()
            raise
        self.context_length = min(self._C, context_length or self._C)
        self.prefill_align = self._P or 1
        self._tokens: list[list[int]] = [[] for _ in range(max_slots)]
        self._rows: list[dict[int, np.ndarray]] = [{} for _ in range(max_slots)]   # position -> bf16 [H]
        self._kv: list[list[tuple[np.ndarray, np.ndarray]] | None] = [None] * max_slots
        self._feeds: list[list[dict[str, np.ndarray]] | None] = [None] * max_slots
        log.info("ax engine ready", model=package.id, layers=len(self._layers), kv_cache_len=self._C,
                 prefill_len=self._P, shape_groups=self._groups, slots=max_slots,
                 provider=getattr(factory, "provider", None), cmm_need_kb=need,
                 cmm_need="estimate from the graph files" if estimated else "cmm_size",
                 cmm_free_kb=free.free_kb if free else None, simulate_timing=simulate_timing or None)

    # -- signature -----------------------------------------------------------------------------
    def _read_signature(self, package: ModelPackage) -> None:
        s0 = self._layers[0]
        self._groups = _shape_groups(s0)
        self._in: list[list[tuple[str, np.dtype, tuple]]] = []   # per group, canonical order
        self._out: list[list[int]] = []
        for g in range(self._groups):
            ins = s0.get_inputs(shape_group=g)
            idx = _lookup(ins, LAYER_IN, f"layer graph group {g}")
            self._in.append([(ins[i].name, np.dtype(ins[i].dtype), tuple(ins[i].shape)) for i in idx])
            self._out.append(_lookup(s0.get_outputs(shape_group=g), LAYER_OUT, f"layer graph group {g}"))
        k0 = self._in[0][0][2]
        self._C, self._D = int(k0[1]), int(k0[2])
        self._H = int(self._in[0][3][2][2])
        self._P = int(self._in[1][3][2][1]) if self._groups > 1 else 0
        self._prefill_group: dict[int, int] = {}      # past rows -> group
        for g in range(1, self._groups):
            seq, width = self._in[g][4][2][1], self._in[g][4][2][2]
            if seq != self._P:
                raise EngineError(f"layer graph group {g}: chunk of {seq} tokens, group 1 has {self._P}")
            self._prefill_group[int(width) - seq] = g
        pin = self._post.get_inputs(shape_group=0)
        self._post_in = (pin[_lookup(pin, ("input",), "post graph")[0]].name,
                         np.dtype(pin[0].dtype), tuple(pin[0].shape))
        self.vocab_size = int(self._post.get_outputs(shape_group=0)[0].shape[-1])
        if package.dims.vocab and package.dims.vocab != self.vocab_size:
            log.warning("post graph vocabulary differs from the package's", graph=self.vocab_size,
                        package=package.dims.vocab)

    def _open_embedding(self, path: pathlib.Path) -> np.ndarray:
        rows = path.stat().st_size // (2 * self._H)
        if rows < self.vocab_size:
            raise EngineError(f"{path}: {rows} rows of {self._H} bf16, the post graph has {self.vocab_size} logits")
        return np.memmap(path, dtype=BF16, mode="r", shape=(rows, self._H))

    # -- Engine interface ----------------------------------------------------------------------
    def prefill(self, slot: int, token_ids: Sequence[int], all_logits: bool = False,
                embeds: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """embeds: None or (rows int [k], values float32 [k, hidden]): positions rows of this chunk
        of token_ids take values (rounded to bf16) instead of their token's table row."""
        self._check_slot(slot)
        ids = self._check_ids(token_ids)
        if len(ids) == 0:
            raise EngineError("empty prompt: prefill needs at least one token")
        hist = self._tokens[slot]
        start = len(hist)
        room = self.context_length - start
        if len(ids) > room:
            raise EngineError(f"prompt of {len(ids)} tokens does not fit: slot {slot} has room for {room} "
                              f"of {self.context_length}")
        override = self._check_embeds(embeds, len(ids))
        kv = self._slot_kv(slot)
        hist.extend(int(t) for t in ids)
        rows_of = self._rows[slot]
        for r, v in override:
            rows_of[start + r] = v
        T, pos, rows = len(hist), start, []
        try:
            while pos < T:
                base = (pos // self._P) * self._P if self._P else pos
                g = self._prefill_group.get(base) if self._P else None
                if g is None:                       # no prefill group here: one token through group 0
                    x = self._step(slot, hist[pos], pos)
                    if all_logits or pos == T - 1:
                        rows.append(self._logits(x))
                    pos += 1
                    continue
                n = min(T, base + self._P) - base
                x = self._chunk(slot, kv, hist[base:base + n], base, g)
                want = range(pos - base, n) if all_logits else ([n - 1] if base + n == T else [])
                rows.extend(self._logits(x[:, r:r + 1]) for r in want)
                pos = base + n
        except BaseException:
            del hist[start:]                        # the slot keeps what it held before
            for r, _ in override:
                rows_of.pop(start + r, None)
            raise
        return np.stack(rows) if all_logits else rows[-1]

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        slots = [int(s) for s in slots]
        if len(slots) != len(token_ids):
            raise EngineError(f"decode got {len(slots)} slots and {len(token_ids)} tokens")
        if len(set(slots)) != len(slots):
            raise EngineError("decode names a slot twice")
        for s in slots:
            self._check_slot(s)
            if len(self._tokens[s]) >= self.context_length:
                raise EngineError(f"slot {s} is full ({self.context_length} tokens)")
        ids = self._check_ids(token_ids)
        out = np.empty((len(slots), self.vocab_size), np.float32)   # a copy: a session may reuse its output buffers
        for i, (s, t) in enumerate(zip(slots, ids)):
            out[i] = self._logits(self._step(s, int(t), len(self._tokens[s])))
            self._tokens[s].append(int(t))
        return out

    def release(self, slot: int) -> None:
        self._check_slot(slot)
        self._tokens[slot] = []
        self._rows[slot] = {}

    def truncate(self, slot: int, length: int) -> None:
        """Later tokens are forgotten; a prefill after a length that is not a multiple of the
        chunk re-runs the kept tokens of its chunk, as any unaligned append does."""
        self._check_slot(slot)
        check_truncate(length, len(self._tokens[slot]))
        del self._tokens[slot][length:]
        rows = self._rows[slot]
        for p in [p for p in rows if p >= length]:
            del rows[p]

    def length(self, slot: int) -> int:
        self._check_slot(slot)
        return len(self._tokens[slot])

    def close(self) -> None:
        """Free the sessions: pyaxengine has no close(), so every reference to them is dropped
        here (release_session unloads what the runtime itself keeps alive)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        for s in [*self._layers, self._post]:
            if s is not None:
                release_session(s)
        self._layers, self._post = [], None
        self._kv, self._feeds = [], []

    # -- graph runs ----------------------------------------------------------------------------
    def _feed(self, g: int, values: tuple) -> dict[str, np.ndarray]:
        return {name: v for (name, _, _), v in zip(self._in[g], values)}

    def _step(self, slot: int, token: int, pos: int) -> np.ndarray:
        """One token at position pos through every layer's decode group; returns the hidden row."""
        spec = self._in[0]
        row = self._rows[slot].get(pos)
        x = np.asarray(self._embed[token] if row is None else row).reshape(spec[3][2]).astype(spec[3][1], copy=False)
        idx = np.full(spec[2][2], pos, spec[2][1])
        mask = np.zeros(spec[4][2], np.float32)
        mask[..., pos:self._C] = MASKED
        mask = mask.astype(spec[4][1])
        (k_name, _, _), (v_name, _, _), (i_name, _, _), (x_name, _, _), (m_name, _, _) = spec
        ko_i, vo_i, x_i = self._out[0]
        for layer, feed in zip(self._layers, self._decode_feeds(slot)):
            feed[i_name], feed[x_name], feed[m_name] = idx, x, mask
            outs = layer.run(None, feed, shape_group=0)
            feed[k_name][0, pos] = outs[ko_i][0, 0]
            feed[v_name][0, pos] = outs[vo_i][0, 0]
            x = outs[x_i]
        return x

    def _chunk(self, slot: int, kv, tokens: list[int], base: int, g: int) -> np.ndarray:
        """Tokens at positions base.. through prefill group g (base = (g-1)*P); returns [1,P,H]."""
        spec, P, n = self._in[g], self._P, len(tokens)
        x = np.zeros(spec[3][2], spec[3][1])
        x[0, :n] = self._embed[np.asarray(tokens)]
        for p, row in self._rows[slot].items():
            if base <= p < base + n:
                x[0, p - base] = row
        idx = np.arange(base, base + P).reshape(spec[2][2]).astype(spec[2][1])
        mask = np.full(spec[4][2], MASKED, np.float32)
        for i in range(n):
            mask[0, i, :base + i + 1] = 0.0
        mask = mask.astype(spec[4][1])
        dummy = None if base else (np.zeros(spec[0][2], spec[0][1]), np.zeros(spec[1][2], spec[1][1]))
        ko_i, vo_i, x_i = self._out[g]
        for layer, (k, v) in zip(self._layers, kv):
            kin, vin = dummy or (k[:, :base], v[:, :base])
            outs = layer.run(None, self._feed(g, (kin, vin, idx, x, mask)), shape_group=g)
            k[:, base:base + n] = outs[ko_i][:, :n]
            v[:, base:base + n] = outs[vo_i][:, :n]
            x = outs[x_i]
        return x

    def _logits(self, x: np.ndarray) -> np.ndarray:
        name, dtype, shape = self._post_in
        out = self._post.run(None, {name: np.ascontiguousarray(x).reshape(shape).astype(dtype, copy=False)})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    # -- state ---------------------------------------------------------------------------------
    def _slot_kv(self, slot: int) -> list[tuple[np.ndarray, np.ndarray]]:
        kv = self._kv[slot]
        if kv is None:
            dt = self._in[0][0][1]
            kv = [(np.zeros((1, self._C, self._D), dt), np.zeros((1, self._C, self._D), dt)) for _ in self._layers]
            self._kv[slot] = kv
        return kv

    def _decode_feeds(self, slot: int) -> list[dict[str, np.ndarray]]:
        """Per layer, the decode group's input dict of the slot, its K/V buffers already in place."""
        feeds = self._feeds[slot]
        if feeds is None:
            k_name, v_name = self._in[0][0][0], self._in[0][1][0]
            feeds = self._feeds[slot] = [{k_name: k, v_name: v} for k, v in self._slot_kv(slot)]
        return feeds

    def _check_slot(self, slot: int) -> None:
        check_slot(slot, self.max_slots, self._closed)

    def _check_ids(self, token_ids: Sequence[int]) -> np.ndarray:
        return check_token_ids(token_ids, self.vocab_size)

    def _check_embeds(self, embeds, n: int) -> list[tuple[int, np.ndarray]]:
        """(row, bf16 values [H]) pairs of a prefill's embeds, checked against the chunk of n tokens."""
        if embeds is None:
            return []
        rows, values = np.asarray(embeds[0]), np.asarray(embeds[1])
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise EngineError(f"embeds rows must be a 1-D integer array, got {rows.dtype} {list(rows.shape)}")
        if values.shape != (len(rows), self._H):
            raise EngineError(f"embeds values must be [{len(rows)}, {self._H}], got {list(values.shape)}")
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise EngineError(f"embeds rows must lie in [0, {n}) (the chunk's positions)")
        if len(np.unique(rows)) != len(rows):
            raise EngineError("embeds name a row twice")
        vals = values.astype(np.float32, copy=False).astype(BF16)     # rounded as the table rows are
        return [(int(r), vals[i]) for i, r in enumerate(rows)]
