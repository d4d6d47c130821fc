"""The tokenizer service: TokenizerRequest -> TokenizerResponse, and its ROUTER socket loop.

`TokenizerService.handle` is pure (no sockets) so it is tested directly. `serve` runs the I/O
loop of the `recv_from_gateway` socket in the calling thread: it answers `list_models` (the
gateway's liveness probe, every 0.5 s) at once, and hands encode and decode requests to
ENCODE_THREADS threads, whose answers come back over inproc PUSH/PULL sockets (a ZMQ socket is
used by one thread only). So a long encode (a few MB of text takes seconds) never looks like a
hung tokenizer; the encoder releases the GIL for long texts (encoder.py), so the probe is
answered within milliseconds meanwhile. A request over BIG_BYTES waits for any other big one
(a 3 MB chat peaks at about 600 MB in the encoder; max_body_bytes bounds one), and the freed heap
is handed back to the system after it. Every frame is answered to the peer that sent it.

A model whose tokenizer could not be loaded is listed with its `failed_reason`, and its
requests are answered with MODEL_NOT_AVAILABLE; the other models are served.
"""
from __future__ import annotations

import queue
import threading
import uuid
from typing import Mapping

import zmq

from npuflow.logs import get_logger
from npuflow.memory import trim_heap
from npuflow.transport import make_socket, recv_waiting, remove_ipc_file, waiting
from npuflow.v1 import common_pb2, tokenizer_pb2

from .chat_template import ImageIn, MessageIn, ToolCallIn
from .encoder import ModelTokenizer, TokenizeError

log = get_logger("tokenizer")

POLL_MS = 100       # how often the I/O loop looks at the stop flag when idle
ENCODE_THREADS = 2  # requests encoded at once (the encoder runs without the GIL on long texts)
# A request this big (about 200 bytes of the encoder's memory per token: 3 MB of text peaks near
# 600 MB) is encoded only while no other big one is, and then the freed heap is given back.
BIG_BYTES = 1 << 20


def _part(p: tokenizer_pb2.ContentPart) -> "str | ImageIn":
    if p.WhichOneof("part") == "image":
        return ImageIn(width=p.image.width, height=p.image.height, detail=p.image.detail or "auto")
    return p.text


def _messages(chat: tokenizer_pb2.ChatInput) -> list[MessageIn]:
    return [MessageIn(role=m.role, content=m.content, name=m.name, tool_call_id=m.tool_call_id,
                      tool_calls=tuple(ToolCallIn(id=c.id, type=c.type, name=c.function_name,
                                                  arguments=c.arguments) for c in m.tool_calls),
                      parts=tuple(_part(p) for p in m.parts))
            for m in chat.messages]


class TokenizerService:
    def __init__(self, models: Mapping[str, ModelTokenizer], failed: Mapping[str, str] | None = None):
        self.models = dict(models)
        self.failed = dict(failed or {})   # model id -> why its tokenizer could not be loaded
        self._big = threading.Lock()

    def _model(self, model_id: str) -> ModelTokenizer:
        tok = self.models.get(model_id)
        if tok is None and model_id in self.failed:
            raise TokenizeError(common_pb2.ERROR_CODE_MODEL_NOT_AVAILABLE,
                                f"The model '{model_id}' is not available: its tokenizer could not be loaded "
                                f"({self.failed[model_id]})", "model")
        if tok is None:
            raise TokenizeError(common_pb2.ERROR_CODE_NOT_FOUND, f"model '{model_id}' does not exist", "model")
        return tok

    def _encode(self, req: tokenizer_pb2.EncodeRequest) -> tokenizer_pb2.EncodeResult:
        tok = self._model(req.model)
        kind = req.WhichOneof("input")
        if kind == "chat":
            enc = tok.encode_conversation(_messages(req.chat), add_generation_prompt=req.chat.add_generation_prompt,
                                          tools_json=req.chat.tools_json)
            out = tokenizer_pb2.EncodeResult(rendered=enc.rendered)
            out.token_ids.extend(enc.ids)
            for sp in enc.images:
                out.images.add(start=sp.start, end=sp.end, placeholders=sp.placeholders)
            return out
        if kind == "text":
            return tokenizer_pb2.EncodeResult(token_ids=tok.encode_text(req.text, add_special_tokens=req.add_special_tokens))
        raise TokenizeError(common_pb2.ERROR_CODE_INVALID_ARGUMENT, "encode needs chat or text input", "prompt")

    def handle(self, req: tokenizer_pb2.TokenizerRequest) -> tokenizer_pb2.TokenizerResponse:
        resp = tokenizer_pb2.TokenizerResponse(request_id=req.request_id)
        kind = req.WhichOneof("kind")
        try:
            if kind == "encode":
                resp.encoded.CopyFrom(self._encode(req.encode))
            elif kind == "decode":
                tok = self._model(req.decode.model)
                resp.decoded.text = tok.decode(req.decode.token_ids, skip_special_tokens=req.decode.skip_special_tokens)
            elif kind == "list_models":
                resp.models.models.extend(tokenizer_pb2.TokenizerModel(model=m, vocab_size=t.vocab_size,
                                                                       vision=t.vision is not None)
                                          for m, t in self.models.items())
                resp.models.models.extend(tokenizer_pb2.TokenizerModel(model=m, failed_reason=why)
                                          for m, why in self.failed.items())
            else:
                raise TokenizeError(common_pb2.ERROR_CODE_INVALID_ARGUMENT, "empty tokenizer request")
        except TokenizeError as e:
            resp.error.CopyFrom(common_pb2.Error(code=e.code, message=e.message, param=e.param))
        except Exception as e:  # a bug: answer it, keep serving
            log.error("request failed", exc_info=True, request_id=req.request_id)
            resp.error.CopyFrom(common_pb2.Error(code=common_pb2.ERROR_CODE_INTERNAL,
                                                 message=f"tokenizer failed: {type(e).__name__}: {e}"))
        return resp

    def serve(self, endpoint: str, stop: threading.Event, ctx: zmq.Context | None = None,
              threads: int = ENCODE_THREADS) -> None:
        """Bind a ROUTER at endpoint and answer requests until `stop` is set."""
        ctx = ctx or zmq.Context.instance()
        pipe = f"inproc://tokenizer-out-{uuid.uuid4().hex}"
        recv_from_gateway = make_socket(ctx, zmq.ROUTER, endpoint, bind=True)
        answers = make_socket(ctx, zmq.PULL, pipe, bind=True)
        jobs: queue.SimpleQueue = queue.SimpleQueue()
        workers = [threading.Thread(target=self._work, args=(ctx, pipe, jobs), name=f"tokenizer-encode-{i}",
                                    daemon=True) for i in range(max(1, threads))]
        for w in workers:
            w.start()
        poller = zmq.Poller()
        poller.register(recv_from_gateway, zmq.POLLIN)
        poller.register(answers, zmq.POLLIN)
        log.info("serving", endpoint=endpoint, models=",".join(self.models), failed=",".join(self.failed))
        try:
            while not stop.is_set():
                ready = dict(poller.poll(POLL_MS))
                if answers in ready:
                    for peer, data in waiting(answers, multipart=True):
                        recv_from_gateway.send_multipart([peer, data])
                if recv_from_gateway in ready:
                    for peer, req in recv_waiting(recv_from_gateway, tokenizer_pb2.TokenizerRequest):
                        if req.WhichOneof("kind") in ("encode", "decode"):
                            jobs.put((peer, req))
                        else:   # list_models (the liveness probe) and malformed frames: at once
                            recv_from_gateway.send_multipart([peer, self.handle(req).SerializeToString()])
        finally:
            for _ in workers:
                jobs.put(None)
            for w in workers:
                w.join(1.0)   # an encode still running is dropped with the process
            answers.close(linger=0)
            recv_from_gateway.close(linger=0)
            remove_ipc_file(endpoint)

    def _work(self, ctx: zmq.Context, pipe: str, jobs: queue.SimpleQueue) -> None:
        """An encode thread: requests from `jobs`, answers to the I/O loop through its own PUSH."""
        out = make_socket(ctx, zmq.PUSH, pipe, bind=False)
        try:
            while True:
                job = jobs.get()
                if job is None:
                    return
                peer, req = job
                if req.ByteSize() < BIG_BYTES:
                    out.send_multipart([peer, self.handle(req).SerializeToString()])
                    continue
                with self._big:   # one big text at a time: a few hundred MB each
                    out.send_multipart([peer, self.handle(req).SerializeToString()])
                    del req, job
                    trim_heap()   # a few hundred MB glibc would otherwise keep
        finally:
            out.close(linger=0)
