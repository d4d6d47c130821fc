"""The embedding engine: an embedding package's graph on onnxruntime (CPU), batches of inputs
computed together.

`embed(inputs)` takes token-id lists and returns one float32 vector per input, in order. The
inputs are sorted by length and cut into batches of at most `batch_tokens` padded tokens (so a
batch of similar lengths wastes little on padding); each batch is one graph run, right-padded,
with its attention mask. `dimensions` keeps the first d components and L2-normalises them again
(Matryoshka truncation), for packages that say they support it.

Embedding models run on the CPU only: the vendor ships no embedding-mode axmodel packages for
the NPU (docs/design-notes.md, "Embeddings").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnxruntime as ort

from ..logs import get_logger
from ..models.package import ModelPackage, PackageError
from .base import EngineError, check_token_ids
from .ort_options import session_options

log = get_logger("engine.embed")

BATCH_TOKENS = 8192     # padded tokens of one graph run at most (bounds attention scratch memory)


def embedding_section(package: ModelPackage) -> dict:
    """The manifest's "embedding" section; PackageError for a package that is not an embedding model."""
    sec = package.extra.get("embedding")
    if not isinstance(sec, dict):
        raise PackageError(f"{package.path}: not an embedding model package (no \"embedding\" section)")
    return sec


class EmbedError(EngineError):
    """A request the embedding engine refuses; `param` names the request field at fault
    (`input[3]`, `dimensions`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def check_dimensions(dimensions: int, full: int, matryoshka: bool) -> int:
    """The vector length to return for a request's `dimensions` (0 = the model's own)."""
    if not dimensions or dimensions == full:
        return full
    if not matryoshka:
        raise EmbedError(f"This model gives {full}-dimensional embeddings and does not support shortening "
                         f"them ('dimensions' must be {full} or left out).", "dimensions")
    if not 1 <= dimensions <= full:
        raise EmbedError(f"'dimensions' must be between 1 and {full} for this model.", "dimensions")
    return dimensions


class EmbedJob:
    """One request's inputs in batches and the vectors computed so far."""

    def __init__(self, ids: list[np.ndarray], groups: list[list[int]], full: int, dimensions: int, normalize: bool):
        self.ids, self.groups = ids, groups
        self.dimensions, self.normalize = dimensions, normalize
        self.out = np.empty((len(ids), full), np.float32)
        self.done = 0                      # groups computed

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.ids)

    def put(self, group: list[int], vectors: np.ndarray) -> None:
        self.out[group] = vectors
        self.done += 1

    def result(self) -> np.ndarray:
        if self.dimensions == self.out.shape[1]:
            return self.out
        return truncate(self.out, self.dimensions, self.normalize)


def truncate(vectors: np.ndarray, dimensions: int, normalize: bool) -> np.ndarray:
    """The first `dimensions` components of each row, L2-normalised again when the model's vectors are."""
    out = vectors[:, :dimensions]
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Input indices grouped into runs: sorted by length, each run's rows x longest <= batch_tokens
    (a single input longer than that runs alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > batch_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


class EmbedEngine:
    def __init__(self, package: ModelPackage, *, threads: int = 2, context_length: int | None = None,
                 batch_tokens: int = BATCH_TOKENS):
        sec = embedding_section(package)
        self.package = package
        self.vocab_size = package.dims.vocab
        self.context_length = min(context_length or package.context_length, package.context_length)
        self.dimensions = int(sec.get("dimensions") or package.dims.hidden)
        self.matryoshka = bool(sec.get("matryoshka"))
        self.normalize = bool(sec.get("normalize"))
        self.pooling = str(sec.get("pooling", ""))
        self.query_format = str(sec.get("query_format") or "")
        self.batch_tokens = max(1, batch_tokens)
        opts = session_options(threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        opts.enable_cpu_mem_arena = True
        self._sess = ort.InferenceSession(str(package.file("model")), opts, providers=["CPUExecutionProvider"])
        self._closed = False
        log.info("embedding engine ready", model=package.id, context=self.context_length, dimensions=self.dimensions,
                 pooling=self.pooling, normalize=self.normalize, threads=threads)

    def embed(self, inputs: Sequence[Sequence[int]], dimensions: int = 0) -> np.ndarray:
        """[len(inputs), dimensions or the model's] float32; EmbedError for an empty input, one
        over the context, an id outside the vocabulary or a `dimensions` the model cannot give."""
        job = self.plan(inputs, dimensions)
        for group in job.groups:
            job.put(group, self.run_batch([job.ids[i] for i in group]))
        return job.result()

    def plan(self, inputs: Sequence[Sequence[int]], dimensions: int = 0) -> "EmbedJob":
        """Check the inputs and cut them into batches (the caller runs them one by one, so it can
        stop between batches)."""
        if self._closed:
            raise EngineError("engine is closed")
        dims = self.check_dimensions(dimensions)
        ids = []
        for k, x in enumerate(inputs):
            try:
                a = check_token_ids(x, self.vocab_size)
            except EngineError as e:
                raise EmbedError(f"input {k}: {e}", f"input[{k}]") from None
            if a.size == 0:
                raise EmbedError(f"input {k} is empty", f"input[{k}]")
            if a.size > self.context_length:
                raise EmbedError(f"input {k} has {a.size} tokens, over the model's context of {self.context_length}",
                                 f"input[{k}]")
            ids.append(a)
        if not ids:
            raise EmbedError("no inputs", "input")
        return EmbedJob(ids, batches([len(x) for x in ids], self.batch_tokens), self.dimensions, dims,
                        self.normalize)

    def run_batch(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """One graph run over right-padded rows."""
        T = max(len(r) for r in rows)
        input_ids = np.zeros((len(rows), T), np.int64)
        mask = np.zeros((len(rows), T), np.int64)
        for k, r in enumerate(rows):
            input_ids[k, :len(r)] = r
            mask[k, :len(r)] = 1
        return self._sess.run(["embeddings"], {"input_ids": input_ids, "attention_mask": mask})[0]

    def check_dimensions(self, dimensions: int) -> int:
        return check_dimensions(dimensions, self.dimensions, self.matryoshka)

    def close(self) -> None:
        self._closed = True
        self._sess = None
