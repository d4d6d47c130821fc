"""The tokenizer service: TokenizerRequest -> TokenizerResponse.

`TokenizerService.handle` is pure (no sockets) so it is tested directly; `serve` runs the ROUTER
socket loop (serving.py) around it.

A model whose tokenizer could not be loaded is listed with its `failed_reason`, and its
requests are answered with MODEL_NOT_AVAILABLE; the other models are served. With a loader, a
model not loaded at start is loaded on first use, once (loading.py).
"""
from __future__ import annotations

import threading
from typing import Mapping

import zmq

from npuflow.logs import get_logger
from npuflow.v1 import common_pb2, tokenizer_pb2

from .chat_template import ImageIn, MessageIn, ToolCallIn
from .encoder import ModelTokenizer, TokenizeError
from .loading import Loader, Tokenizers, not_found
from .serving import ENCODE_THREADS, LOAD_THREADS, serve

log = get_logger("tokenizer")


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
    """Answers TokenizerRequests for the models in `models`, and (with a `loader`) for any model
    the loader can load, loaded on first use (loading.py)."""

    def __init__(self, models: Mapping[str, ModelTokenizer], failed: Mapping[str, str] | None = None,
                 loader: Loader | None = None):
        self.tokenizers = Tokenizers(models, failed, loader)

    @property
    def models(self) -> dict[str, ModelTokenizer]:
        """The loaded tokenizers, by model id (a copy)."""
        return self.tokenizers.snapshot()[0]

    @property
    def failed(self) -> dict[str, str]:
        """Model id -> why its tokenizer could not be loaded (a copy)."""
        return self.tokenizers.snapshot()[1]

    def _encode(self, req: tokenizer_pb2.EncodeRequest, load: bool) -> tokenizer_pb2.EncodeResult:
        tok = self.tokenizers.get(req.model, load)
        kind = req.WhichOneof("input")
        if kind == "chat":
            enc = tok.encode_conversation(_messages(req.chat), add_generation_prompt=req.chat.add_generation_prompt,
                                          tools_json=req.chat.tools_json,
                                          template_kwargs_json=req.chat.template_kwargs_json)
            out = tokenizer_pb2.EncodeResult(rendered=enc.rendered, template_thinks=tok.template_thinks)
            out.token_ids.extend(enc.ids)
            for sp in enc.images:
                out.images.add(start=sp.start, end=sp.end, placeholders=sp.placeholders)
            return out
        if kind == "text":
            return tokenizer_pb2.EncodeResult(token_ids=tok.encode_text(req.text, add_special_tokens=req.add_special_tokens))
        if kind == "embed":
            out = tokenizer_pb2.EncodeResult()
            for ids in tok.encode_embed(req.embed.texts, req.embed.instruction):
                out.inputs.add().ids.extend(ids)
            return out
        raise TokenizeError(common_pb2.ERROR_CODE_INVALID_ARGUMENT, "encode needs chat or text input", "prompt")

    def _state(self, model_id: str) -> tokenizer_pb2.TokenizerModel:
        """The model as load_model answers it: loaded (vocab_size, vision) or failed (the reason)."""
        tok = self.tokenizers.loaded(model_id)
        if tok is not None:
            return tokenizer_pb2.TokenizerModel(model=model_id, vocab_size=tok.vocab_size, vision=tok.vision is not None)
        reason = self.tokenizers.failure(model_id)
        if reason is None:
            raise not_found(model_id)
        return tokenizer_pb2.TokenizerModel(model=model_id, failed_reason=reason)

    def _list(self) -> tokenizer_pb2.TokenizerModels:
        models, failed = self.tokenizers.snapshot()
        out = tokenizer_pb2.TokenizerModels()
        out.models.extend(tokenizer_pb2.TokenizerModel(model=m, vocab_size=t.vocab_size, vision=t.vision is not None)
                          for m, t in models.items())
        out.models.extend(tokenizer_pb2.TokenizerModel(model=m, failed_reason=why) for m, why in failed.items())
        return out

    def handle(self, req: tokenizer_pb2.TokenizerRequest, load: bool = True) -> tokenizer_pb2.TokenizerResponse:
        """The answer to one request; a request for a model not loaded yet loads it first (blocking
        this thread). `load=False`: answered from the state now, without loading (serve has run
        the model's load already, or the request needs none)."""
        resp = tokenizer_pb2.TokenizerResponse(request_id=req.request_id)
        kind = req.WhichOneof("kind")
        try:
            if kind == "encode":
                resp.encoded.CopyFrom(self._encode(req.encode, load))
            elif kind == "decode":
                tok = self.tokenizers.get(req.decode.model, load)
                resp.decoded.text = tok.decode(req.decode.token_ids, skip_special_tokens=req.decode.skip_special_tokens)
            elif kind == "list_models":
                resp.models.CopyFrom(self._list())
            elif kind == "load_model":
                if load:
                    try:
                        self.tokenizers.load(req.load_model.model, retry=True)
                    except TokenizeError as e:
                        if e.code != common_pb2.ERROR_CODE_MODEL_NOT_AVAILABLE:
                            raise
                resp.loaded.CopyFrom(self._state(req.load_model.model))
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
              threads: int = ENCODE_THREADS, load_threads: int = LOAD_THREADS) -> None:
        """Bind a ROUTER at endpoint and answer requests until `stop` is set (serving.py)."""
        serve(self, endpoint, stop, ctx, threads, load_threads)
