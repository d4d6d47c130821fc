"""The tokenizer's ROUTER socket loop: `serve(service, endpoint, stop)`.

The I/O loop of the `recv_from_gateway` socket runs in the calling thread: it answers
`list_models` (the gateway's liveness probe, every 0.5 s) at once, and hands encode and decode
requests to ENCODE_THREADS threads, whose answers come back over inproc PUSH/PULL sockets (a ZMQ
socket is used by one thread only). So a long encode (a few MB of text takes seconds) never looks
like a hung tokenizer; the encoder releases the GIL for long texts (encoder.py), so the probe is
answered within milliseconds meanwhile. A request over BIG_BYTES waits for any other big one
(a 3 MB chat peaks at about 600 MB in the encoder; max_body_bytes bounds one), and the freed heap
is handed back to the system after it. Every frame is answered to the peer that sent it.

Models not loaded at start are loaded on first use (loading.py). A load can take long (resolving
a GGUF source hashes it, and may wait for the worker converting it), so it runs neither in the
I/O loop nor in an encode thread, where it would hold up the loaded models' requests:
LOAD_THREADS threads do loads, one per model at a time. The I/O loop parks the requests for a
model being loaded (`parked`) and, when its load thread says it is done, hands the encodes and
decodes to the encode threads and answers the load_model requests itself (and every request
when the load failed or found no such model, so that it is not loaded again for each).
"""
from __future__ import annotations

import queue
import threading
import uuid
from typing import TYPE_CHECKING

import zmq

from npuflow.logs import get_logger
from npuflow.memory import trim_heap
from npuflow.transport import make_socket, recv_waiting, remove_ipc_file, waiting
from npuflow.v1 import tokenizer_pb2

if TYPE_CHECKING:
    from .service import TokenizerService

log = get_logger("tokenizer")

POLL_MS = 100       # how often the I/O loop looks at the stop flag when idle
ENCODE_THREADS = 2  # requests encoded at once (the encoder runs without the GIL on long texts)
LOAD_THREADS = 2    # models loaded at once (a slow one, such as a GGUF being hashed, holds one)
# A request this big (about 200 bytes of the encoder's memory per token: 3 MB of text peaks near
# 600 MB) is encoded only while no other big one is, and then the freed heap is given back.
BIG_BYTES = 1 << 20

Parked = dict[str, list]   # model being loaded -> the (peer, request)s waiting for its load


def serve(service: "TokenizerService", endpoint: str, stop: threading.Event, ctx: zmq.Context | None = None,
          threads: int = ENCODE_THREADS, load_threads: int = LOAD_THREADS) -> None:
    """Bind a ROUTER at endpoint and answer requests until `stop` is set."""
    ctx = ctx or zmq.Context.instance()
    tag = uuid.uuid4().hex
    pipe, done_pipe = f"inproc://tokenizer-out-{tag}", f"inproc://tokenizer-loaded-{tag}"
    recv_from_gateway = make_socket(ctx, zmq.ROUTER, endpoint, bind=True)
    answers = make_socket(ctx, zmq.PULL, pipe, bind=True)
    loaded = make_socket(ctx, zmq.PULL, done_pipe, bind=True)
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    loads: queue.SimpleQueue = queue.SimpleQueue()
    big = threading.Lock()
    encoders = [threading.Thread(target=_encode_work, args=(service, ctx, pipe, jobs, big),
                                 name=f"tokenizer-encode-{i}", daemon=True) for i in range(max(1, threads))]
    loaders = [threading.Thread(target=_load_work, args=(service, ctx, done_pipe, loads),
                                name=f"tokenizer-load-{i}", daemon=True) for i in range(max(1, load_threads))]
    for t in encoders + loaders:
        t.start()
    parked: Parked = {}
    poller = zmq.Poller()
    for sock in (recv_from_gateway, answers, loaded):
        poller.register(sock, zmq.POLLIN)

    def answer(peer: bytes, req: tokenizer_pb2.TokenizerRequest) -> None:
        recv_from_gateway.send_multipart([peer, service.handle(req, load=False).SerializeToString()])

    models, failed = service.tokenizers.snapshot()
    log.info("serving", endpoint=endpoint, models=",".join(models), failed=",".join(failed),
             on_demand=service.tokenizers.loader is not None)
    try:
        while not stop.is_set():
            ready = dict(poller.poll(POLL_MS))
            if answers in ready:
                for peer, data in waiting(answers, multipart=True):
                    recv_from_gateway.send_multipart([peer, data])
            if loaded in ready:
                for model in waiting(loaded):
                    model_id = model.decode()
                    is_loaded = service.tokenizers.loaded(model_id) is not None
                    for peer, req in parked.pop(model_id, []):
                        if is_loaded and req.WhichOneof("kind") != "load_model":
                            jobs.put((peer, req))
                        else:   # the state the load left (or its error): cheap, no second load
                            answer(peer, req)
            if recv_from_gateway in ready:
                for peer, req in recv_waiting(recv_from_gateway, tokenizer_pb2.TokenizerRequest):
                    if not _route(service, peer, req, jobs, loads, parked):
                        answer(peer, req)
    finally:
        for q, ts in ((jobs, encoders), (loads, loaders)):
            for _ in ts:
                q.put(None)
        for t in encoders + loaders:
            t.join(1.0)   # an encode or a load still running is dropped with the process
        for sock in (answers, loaded, recv_from_gateway):
            sock.close(linger=0)
        remove_ipc_file(endpoint)


def _route(service: "TokenizerService", peer: bytes, req: tokenizer_pb2.TokenizerRequest,
           jobs: queue.SimpleQueue, loads: queue.SimpleQueue, parked: Parked) -> bool:
    """Queue a request for the encode threads, or park it for its model's load (starting that load
    unless one runs); False: the I/O loop answers it at once (list_models, the liveness probe; a
    load_model of a loaded model; malformed frames). A load_model of a failed model is a retry; an
    encode of one is answered MODEL_NOT_AVAILABLE without loading again."""
    kind = req.WhichOneof("kind")
    if kind not in ("encode", "decode", "load_model"):
        return False
    model = getattr(req, kind).model
    tokenizers = service.tokenizers
    if model in parked:
        parked[model].append((peer, req))
    elif kind == "load_model" and tokenizers.loaded(model) is not None:
        return False
    elif kind != "load_model" and tokenizers.settled(model):
        jobs.put((peer, req))
    else:
        parked[model] = [(peer, req)]
        loads.put((model, kind == "load_model"))
    return True


def _load_work(service: "TokenizerService", ctx: zmq.Context, done_pipe: str, loads: queue.SimpleQueue) -> None:
    """A load thread: (model, retry) from `loads`; the model id back to the I/O loop when done."""
    from .encoder import TokenizeError
    out = make_socket(ctx, zmq.PUSH, done_pipe, bind=False)
    try:
        while True:
            job = loads.get()
            if job is None:
                return
            model, retry = job
            try:
                service.tokenizers.load(model, retry=retry)
            except TokenizeError:
                pass    # failed (remembered) or unknown: the parked requests are answered so
            except Exception:
                log.error("load failed", exc_info=True, model=model)
            out.send(model.encode())
    finally:
        out.close(linger=0)


def _encode_work(service: "TokenizerService", ctx: zmq.Context, pipe: str, jobs: queue.SimpleQueue,
                 big: threading.Lock) -> None:
    """An encode thread: requests from `jobs`, answers to the I/O loop through its own PUSH."""
    out = make_socket(ctx, zmq.PUSH, pipe, bind=False)
    try:
        while True:
            job = jobs.get()
            if job is None:
                return
            peer, req = job
            if req.ByteSize() < BIG_BYTES:
                out.send_multipart([peer, service.handle(req).SerializeToString()])
                continue
            with big:   # one big text at a time: a few hundred MB each
                out.send_multipart([peer, service.handle(req).SerializeToString()])
                del req, job
                trim_heap()   # a few hundred MB glibc would otherwise keep
    finally:
        out.close(linger=0)
