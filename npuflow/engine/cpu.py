"""The CPU engine: the package's decoder graph on onnxruntime, KV kept in per-layer buffers that
GroupQueryAttention updates in place.

KV layout: one buffer per layer and kind, [max_slots, kv_heads, context + 1, head_dim], of the
graph's KV type (int8 with the graph's per-channel scales, or float32; convert/kv_int8.py),
allocated zeroed (pages are only touched as positions fill). Row r is slot r. A step over a set
of slots runs the graph on the contiguous row range that covers them (a view of the buffers, no
copy); rows in that range that are not part of the step carry a zero embedding and write one
scratch position at their current length, which is never read before a real token overwrites it
(hence the +1 position). Attention of a row only reads positions 0..seqlens_k of that row, so
slots never see each other's tokens.
"""
from __future__ import annotations

import mmap
from typing import Sequence

import numpy as np
import onnxruntime as ort

from ..logs import get_logger
from ..models.package import ModelPackage
from .base import EngineError, check_embeds, check_slot, check_token_ids, check_truncate
from .embedding import EmbeddingTable
from .ort_options import session_options

log = get_logger("engine.cpu")

PREFILL_CHUNK = 512    # longer prompts run in pieces to bound attention scratch memory


def rotary_tables(positions: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    ang = np.arange(positions, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


KV_TYPES = {"tensor(float)": np.float32, "tensor(int8)": np.int8}
KV_GRAPHS = {"float32": "model", "int8": "model_kv_int8"}     # the package file of each KV cache type


def int8_kv_supported() -> bool:
    """Whether this onnxruntime's GroupQueryAttention takes an int8 cache with k_scale / v_scale
    (1.30 does; 1.23, the last with Python 3.10 wheels, does not)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C
    return any(s.name == "GroupQueryAttention" and s.domain == "com.microsoft"
               and any(i.name == "k_scale" for i in s.inputs) for s in C.get_all_operator_schema())


def _lazy_zeros(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A zeroed array on its own anonymous mapping: pages cost memory only once written."""
    dtype = np.dtype(dtype)
    buf = mmap.mmap(-1, int(np.prod(shape)) * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buf, dtype).reshape(shape)


class CpuEngine:
    def __init__(self, package: ModelPackage, *, max_slots: int = 4, context_length: int | None = None,
                 threads: int = 2, kv_cache: str = "float32"):
        if max_slots < 1:
            raise ValueError("max_slots must be at least 1")
        graph = KV_GRAPHS.get(kv_cache)
        if graph is None:
            raise ValueError(f"kv_cache must be one of {', '.join(KV_GRAPHS)}, not {kv_cache!r}")
        if kv_cache == "int8" and not int8_kv_supported():
            raise EngineError(f"kv_cache int8 needs an onnxruntime whose GroupQueryAttention takes an int8 cache "
                              f"(1.30 or later); this one is {ort.__version__}: use kv_cache float32")
        if graph not in package.files:
            raise EngineError(f"kv_cache {kv_cache} needs a package with that graph ({graph}); this one "
                              f"({package.path}) has none: convert it again with this version of npuflow, "
                              "without --float-activations or --bf16-boundaries")
        self.package = package
        d = package.dims
        self.vocab_size = d.vocab
        self.context_length = min(context_length or package.context_length, package.context_length)
        self.max_slots = max_slots
        self.prefill_align = 1
        self._hidden = d.hidden
        gi = package.extra.get("graph", {})
        opts = session_options(threads, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        opts.enable_cpu_mem_arena = True
        self._sess = ort.InferenceSession(str(package.file(graph)), opts, providers=["CPUExecutionProvider"])
        emb = gi.get("embedding", {})
        files = {k.removeprefix("embedding."): package.file(k) for k in package.files if k.startswith("embedding.")}
        self._embed = EmbeddingTable(files, int(emb.get("bits", 0)))
        positions = self.context_length + 1
        cos, sin = rotary_tables(positions, d.head_dim, float(gi.get("rope_theta", 10000.0)))
        self._cos = ort.OrtValue.ortvalue_from_numpy(cos)
        self._sin = ort.OrtValue.ortvalue_from_numpy(sin)
        shape = (max_slots, d.kv_heads, positions, d.head_dim)
        kv_type = {i.name: i.type for i in self._sess.get_inputs()}.get("past_key.0", "tensor(float)")
        if kv_type not in KV_TYPES:
            raise EngineError(f"{package.id}: the graph's KV cache type {kv_type} is not one this engine allocates")
        self.kv_dtype = np.dtype(KV_TYPES[kv_type])
        self._kv = [(_lazy_zeros(shape, self.kv_dtype), _lazy_zeros(shape, self.kv_dtype)) for _ in range(d.layers)]
        self._lengths = [0] * max_slots
        self._bindings: dict[tuple[int, int], ort.IOBinding] = {}
        self._closed = False
        log.info("cpu engine ready", model=package.id, slots=max_slots, context=self.context_length,
                 threads=threads, kv=str(self.kv_dtype),
                 kv_mib=round(2 * d.layers * np.prod(shape) * self.kv_dtype.itemsize / 2**20))

    # -- Engine interface -------------------------------------------------------------------
    def prefill(self, slot: int, token_ids: Sequence[int], all_logits: bool = False,
                embeds: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        self._check_slot(slot)
        ids = self._check_ids(token_ids)
        if len(ids) == 0:
            raise EngineError("empty prompt: prefill needs at least one token")
        given = check_embeds(embeds, len(ids), self._hidden)
        start = self._lengths[slot]
        room = self.context_length - start
        if len(ids) > room:
            raise EngineError(f"prompt of {len(ids)} tokens does not fit: slot {slot} has room for {room} "
                              f"of {self.context_length}")
        outs = []
        for lo in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[lo:lo + PREFILL_CHUNK]
            n = len(chunk)
            last = lo + n == len(ids)
            index = np.arange(n, dtype=np.int64) if all_logits else np.array([n - 1] if last else [], np.int64)
            L = self._lengths[slot]
            x = self._embed.lookup(chunk)
            if given is not None:
                rows, values = given
                a, b = np.searchsorted(rows, [lo, lo + n])
                if b > a:
                    if not x.flags.writeable:
                        x = x.copy()
                    x[rows[a:b] - lo] = values[a:b]
            logits = self._run(slot, slot + 1, x[None],
                               np.array([L + n - 1], np.int32), index)
            self._lengths[slot] = L + n
            if all_logits or last:
                outs.append(logits)
        return np.concatenate(outs) if all_logits else outs[-1][0]

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        slots = [int(s) for s in slots]
        if len(slots) != len(token_ids):
            raise EngineError(f"decode got {len(slots)} slots and {len(token_ids)} tokens")
        if not slots:
            return np.zeros((0, self.vocab_size), np.float32)
        if len(set(slots)) != len(slots):
            raise EngineError("decode names a slot twice")
        for s in slots:
            self._check_slot(s)
            if self._lengths[s] >= self.context_length:
                raise EngineError(f"slot {s} is full ({self.context_length} tokens)")
        ids = self._check_ids(token_ids)
        lo, hi = min(slots), max(slots) + 1
        embeds = np.zeros((hi - lo, 1, self._hidden), np.float32)
        embeds[[s - lo for s in slots], 0] = self._embed.lookup(ids)
        seqlens = np.array(self._lengths[lo:hi], np.int32)     # rows not in the step: scratch write
        for s in slots:
            seqlens[s - lo] = self._lengths[s]
        logits = self._run(lo, hi, embeds, seqlens, np.array([s - lo for s in slots], np.int64))
        for s in slots:
            self._lengths[s] += 1
        return logits

    def release(self, slot: int) -> None:
        self._check_slot(slot)
        self._lengths[slot] = 0

    def truncate(self, slot: int, length: int) -> None:
        self._check_slot(slot)
        check_truncate(length, self._lengths[slot])
        self._lengths[slot] = length

    def length(self, slot: int) -> int:
        self._check_slot(slot)
        return self._lengths[slot]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bindings.clear()
        self._sess = None
        self._kv = []

    # -- internals ---------------------------------------------------------------------------
    def _check_slot(self, slot: int) -> None:
        check_slot(slot, self.max_slots, self._closed)

    def _check_ids(self, token_ids: Sequence[int]) -> np.ndarray:
        return check_token_ids(token_ids, self.vocab_size)

    def _binding(self, lo: int, hi: int) -> ort.IOBinding:
        b = self._bindings.get((lo, hi))
        if b is None:
            b = self._sess.io_binding()
            for i, (k, v) in enumerate(self._kv):
                kv_k = ort.OrtValue.ortvalue_from_numpy(k[lo:hi])
                kv_v = ort.OrtValue.ortvalue_from_numpy(v[lo:hi])
                b.bind_ortvalue_input(f"past_key.{i}", kv_k)
                b.bind_ortvalue_input(f"past_value.{i}", kv_v)
                b.bind_ortvalue_output(f"present_key.{i}", kv_k)
                b.bind_ortvalue_output(f"present_value.{i}", kv_v)
            b.bind_ortvalue_input("cos_cache", self._cos)
            b.bind_ortvalue_input("sin_cache", self._sin)
            self._bindings[(lo, hi)] = b
        return b

    def _run(self, lo: int, hi: int, embeds: np.ndarray, seqlens: np.ndarray, index: np.ndarray) -> np.ndarray:
        b = self._binding(lo, hi)
        b.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, np.float32))
        b.bind_cpu_input("seqlens_k", seqlens)
        b.bind_cpu_input("total_seq_len", np.array(int(seqlens.max()) + 1, np.int32))
        b.bind_cpu_input("logit_index", index)
        logits = np.empty((len(index), self.vocab_size), np.float32)
        b.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        self._sess.run_with_iobinding(b)
        return logits
