"""The tokenizer service: TokenizerRequest -> TokenizerResponse, and its ROUTER socket loop.

`TokenizerService.handle` is pure (no sockets) so it is tested directly; `serve` owns the one
receive loop of the `recv_from_gateway` socket and answers every frame to the peer that sent it.
"""
from __future__ import annotations

import threading
from typing import Mapping

import zmq

from npuflow.logs import get_logger
from npuflow.transport import make_socket, recv_waiting, remove_ipc_file
from npuflow.v1 import common_pb2, tokenizer_pb2

from .chat_template import MessageIn, ToolCallIn
from .encoder import ModelTokenizer, TokenizeError

log = get_logger("tokenizer")

POLL_MS = 100  # how often the loop looks at the stop flag when idle


def _messages(chat: tokenizer_pb2.ChatInput) -> list[MessageIn]:
    return [MessageIn(role=m.role, content=m.content, name=m.name, tool_call_id=m.tool_call_id,
                      tool_calls=tuple(ToolCallIn(id=c.id, type=c.type, name=c.function_name,
                                                  arguments=c.arguments) for c in m.tool_calls))
            for m in chat.messages]


class TokenizerService:
    def __init__(self, models: Mapping[str, ModelTokenizer]):
        self.models = dict(models)

    def _model(self, model_id: str) -> ModelTokenizer:
        tok = self.models.get(model_id)
        if tok is None:
            raise TokenizeError(common_pb2.ERROR_CODE_NOT_FOUND, f"model '{model_id}' does not exist", "model")
        return tok

    def _encode(self, req: tokenizer_pb2.EncodeRequest) -> tokenizer_pb2.EncodeResult:
        tok = self._model(req.model)
        kind = req.WhichOneof("input")
        if kind == "chat":
            ids, rendered = tok.encode_chat(_messages(req.chat), add_generation_prompt=req.chat.add_generation_prompt,
                                            tools_json=req.chat.tools_json)
            return tokenizer_pb2.EncodeResult(token_ids=ids, rendered=rendered)
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
                resp.models.models.extend(tokenizer_pb2.TokenizerModel(model=m, vocab_size=t.vocab_size)
                                          for m, t in self.models.items())
            else:
                raise TokenizeError(common_pb2.ERROR_CODE_INVALID_ARGUMENT, "empty tokenizer request")
        except TokenizeError as e:
            resp.error.CopyFrom(common_pb2.Error(code=e.code, message=e.message, param=e.param))
        except Exception as e:  # a bug: answer it, keep serving
            log.error("request failed", exc_info=True, request_id=req.request_id)
            resp.error.CopyFrom(common_pb2.Error(code=common_pb2.ERROR_CODE_INTERNAL,
                                                 message=f"tokenizer failed: {type(e).__name__}: {e}"))
        return resp

    def serve(self, endpoint: str, stop: threading.Event, ctx: zmq.Context | None = None) -> None:
        """Bind a ROUTER at endpoint and answer requests until `stop` is set."""
        ctx = ctx or zmq.Context.instance()
        recv_from_gateway = make_socket(ctx, zmq.ROUTER, endpoint, bind=True)
        log.info("serving", endpoint=endpoint, models=",".join(self.models))
        try:
            while not stop.is_set():
                if not recv_from_gateway.poll(POLL_MS):
                    continue
                for peer, req in recv_waiting(recv_from_gateway, tokenizer_pb2.TokenizerRequest):
                    recv_from_gateway.send_multipart([peer, self.handle(req).SerializeToString()])
        finally:
            recv_from_gateway.close(linger=0)
            remove_ipc_file(endpoint)
