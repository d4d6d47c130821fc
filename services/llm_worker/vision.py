"""The images of a request: checked spans, their reuse keys, and the encode thread.

A GenerateRequest carries each image's bytes once with the token span the tokenizer gave it.
`parse_images` checks the spans against the prompt when the request arrives; the pixels are
decoded, preprocessed and encoded later on `EncodeThread`, off the scheduler thread, so running
streams keep decoding while an image is encoded (a big image's decode alone can take longer
than a decode step). The thread encodes one tile per encoder call and looks between tiles
whether the request was aborted, passed its deadline or the worker stops. A request whose
embeddings are ready goes back to the scheduler, which then queues its choices for prefill; the
choices of an n>1 request share the one encode (`RequestImages.values`).

Each image's embeddings replace the prompt positions inside its span that hold the image token,
in order (idefics3's tile markers and internvl's <img>/</img> inside a span stay text).
`RequestImages.chunk(lo, hi)` hands the engine the rows of one prefill piece, wherever the
piece boundaries cut a span.

The thread keeps the embeddings of the last images it encoded (`CACHE_BYTES` at most, least
recently used out first), keyed as prefix reuse keys them: the next turn of a conversation
sends its image again, and its KV is mostly reused, so encoding it again would be most of that
turn's time to first token.

Prefix reuse compares keys, not token ids: `reuse_key` is the prompt with every image-token
position of a span replaced by a negative number derived from a hash of the image's bytes and
detail, so two prompts with the same text and different images part at their first image
token, and the same image again is reused as far as the text allows.
"""
from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from npuflow.logs import get_logger
from npuflow.v1 import common_pb2, worker_pb2

from .errors import RequestError, invalid

log = get_logger("worker")

DETAILS = ("auto", "low", "high")
MAX_IMAGE_PIXELS = 1 << 26   # a safety net: the gateway enforces the configured limit first
CACHE_BYTES = 64 << 20       # embeddings of recent images kept by the encode thread


@dataclass
class PromptImage:
    data: bytes
    detail: str
    param: str
    start: int
    end: int
    rows: np.ndarray          # prompt positions of the image tokens inside [start, end), ascending
    key: int                  # < 0: what those positions are compared by for prefix reuse


@dataclass
class RequestImages:
    items: list[PromptImage]
    deadline_ms: int = 0
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    values: np.ndarray | None = None      # [len(positions), hidden] float32 once encoded
    error: common_pb2.Error | None = None

    def __post_init__(self) -> None:
        if self.items:
            self.positions = np.concatenate([im.rows for im in self.items]).astype(np.int64)

    @property
    def ready(self) -> bool:
        return self.values is not None

    def chunk(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The (rows, values) of prompt positions [lo, hi) for Engine.prefill(embeds=...): rows
        relative to lo; None when the piece holds no image token."""
        a, b = np.searchsorted(self.positions, [lo, hi])
        if a == b:
            return None
        return self.positions[a:b] - lo, self.values[a:b]


def image_key(data: bytes, detail: str) -> int:
    """A negative int (never a token id) naming an image's content for prefix reuse."""
    h = hashlib.blake2b(detail.encode() + b"\0" + data, digest_size=7).digest()
    return -1 - int.from_bytes(h, "little")


def parse_images(msg: worker_pb2.GenerateRequest, prompt: Sequence[int], spec: Any | None) -> RequestImages | None:
    """Check the request's images against the prompt; None without images. RequestError names
    the image's part (ImageInput.param) when something is wrong."""
    if not msg.images:
        return None
    first = msg.images[0].param or "images"
    if spec is None:
        raise invalid("this model does not take images (its package has no vision encoder)", first)
    ids = np.asarray(prompt, dtype=np.int64)
    token_id = int(spec.image_token_id)
    items, prev_end = [], 0
    for i, im in enumerate(msg.images):
        param = im.param or f"images[{i}]"
        detail = im.detail or "auto"
        if detail not in DETAILS:
            raise invalid(f"detail must be one of {', '.join(DETAILS)}, not '{im.detail}'", param)
        if not im.data:
            raise invalid("the image is empty", param)
        if not (im.start < im.end <= len(ids)):
            raise invalid(f"the image's token span [{im.start}, {im.end}) is not inside the prompt "
                          f"of {len(ids)} tokens", param)
        if im.start < prev_end:
            raise invalid(f"the image's token span [{im.start}, {im.end}) overlaps or precedes the "
                          f"previous image's, which ends at {prev_end}", param)
        rows = im.start + np.flatnonzero(ids[im.start:im.end] == token_id)
        if not rows.size:
            raise invalid(f"the image's token span [{im.start}, {im.end}) holds no image token", param)
        items.append(PromptImage(data=im.data, detail=detail, param=param, start=im.start, end=im.end,
                                 rows=rows, key=image_key(im.data, detail)))
        prev_end = im.end
    return RequestImages(items, deadline_ms=msg.deadline_unix_ms)


def reuse_key(prompt: list[int], images: RequestImages | None) -> list[int]:
    """The prompt as prefix reuse compares it: image-token positions carry their image's key."""
    if images is None:
        return prompt
    key = list(prompt)
    for im in images.items:
        for r in im.rows.tolist():
            key[r] = im.key
    return key


class _Stopped(Exception):
    pass


class EncodeThread(threading.Thread):
    """Decodes, preprocesses and encodes the images of one request after another.

    `submit(job)` queues a job (anything with `.images: RequestImages` and `.cancelled`); a
    finished job (encoded, failed with `images.error` set, or given up because it was cancelled,
    its deadline passed or the thread stops) lands in `done` and `wake()` is called."""

    def __init__(self, encoder: Any, *, max_pixels: int = MAX_IMAGE_PIXELS,
                 wake: Callable[[], None] = lambda: None, cache_bytes: int = CACHE_BYTES):
        super().__init__(name="worker-vision", daemon=True)
        # imported here, not at the first image: an import holds the GIL and the import lock
        from npuflow.vision import ImageError, image_tokens, preprocess
        from npuflow.vision.images import decode_image
        self._image_error, self._image_tokens, self._preprocess = ImageError, image_tokens, preprocess
        self._decode_image = decode_image
        self.encoder = encoder
        self.spec = encoder.spec
        self.max_pixels = max_pixels
        self.wake = wake
        self.done: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self.busy_s = 0.0            # seconds spent encoding (tests, logs)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()   # (key, rows) -> embeddings
        self._cached = 0
        self._jobs: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._halt = threading.Event()

    def submit(self, job: Any) -> None:
        if self.ident is None and not self._halt.is_set():
            self.start()
        self._jobs.put(job)

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        self._jobs.put(None)
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while not self._halt.is_set():
            job = self._jobs.get()
            if job is None:
                break
            t0 = time.perf_counter()
            try:
                self._encode(job)
            except _Stopped:
                pass
            except RequestError as e:
                job.images.error = e.to_proto()
            except Exception as e:
                log.error("image encode failed", exc_info=True, error=str(e))
                job.images.error = common_pb2.Error(code=common_pb2.ERROR_CODE_INTERNAL,
                                                    message=f"vision encoder failed: {e}")
            self.busy_s += time.perf_counter() - t0
            self.done.put(job)
            self.wake()
        # jobs still queued when the worker stops come back unencoded
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self.done.put(job)
        self.wake()

    def _check(self, job: Any) -> None:
        imgs = job.images
        if self._halt.is_set() or job.cancelled or (imgs.deadline_ms and time.time() * 1000 >= imgs.deadline_ms):
            raise _Stopped

    def _encode(self, job: Any) -> None:
        out = []
        for im in job.images.items:
            self._check(job)
            hit = self._cache.get((im.key, len(im.rows)))
            if hit is not None:
                self._cache.move_to_end((im.key, len(im.rows)))
                out.append(hit)
                continue
            try:
                image = self._decode_image(im.data, max_pixels=self.max_pixels)
            except self._image_error as e:
                raise invalid(f"the image cannot be used: {e}", im.param) from None
            want = self._image_tokens(self.spec, image.width, image.height, im.detail)
            if want != len(im.rows):
                raise invalid(f"the image ({image.width}x{image.height}, detail {im.detail}) takes {want} "
                              f"image tokens, its span in the prompt holds {len(im.rows)}", im.param)
            pixels = np.ascontiguousarray(self._preprocess(self.spec, image, im.detail), dtype=np.float32)
            del image
            tiles = []
            for t in range(len(pixels)):   # one tile per call: an abort need not wait for the rest
                self._check(job)
                tiles.append(np.asarray(self.encoder.encode(pixels[t:t + 1]), dtype=np.float32))
            embeds = np.concatenate(tiles)
            if len(embeds) != len(im.rows):
                raise RuntimeError(f"the encoder gave {len(embeds)} rows for the image's {len(im.rows)} tokens")
            self._remember((im.key, len(im.rows)), embeds)
            out.append(embeds)
        job.images.values = np.concatenate(out)

    def _remember(self, key: tuple[int, int], embeds: np.ndarray) -> None:
        if embeds.nbytes > self.cache_bytes:
            return
        embeds.setflags(write=False)   # shared by later requests: nobody may change it in place
        self._cache[key] = embeds
        self._cached += embeds.nbytes
        while self._cached > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes
