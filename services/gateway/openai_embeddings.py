"""POST /v1/embeddings: OpenAI's CreateEmbeddingRequest -> CreateEmbeddingResponse.

`input` is a string, an array of strings, an array of token ids or an array of arrays of token
ids (at most 2048 inputs, none empty); `encoding_format` "float" (default) or "base64" (each
vector's float32 little-endian bytes, as OpenAI sends them and its SDK asks for by default);
`dimensions` for models that allow shortening their vectors; `user` is accepted and ignored.
Extension: `instruction`, a task instruction for query texts, written in the model's query
format (Qwen3-Embedding: "Instruct: {instruction}\\nQuery:{text}"); documents are sent without it.
"""
from __future__ import annotations

import base64
import time
from typing import Any

from aiohttp import web

from npuflow.gateway.embeddings import MAX_INPUTS, EmbedInput, embed
from npuflow.gateway.errors import bad_param
from npuflow.gateway.state import STATE
from npuflow.gateway.validation import Fields, _is_ids, proto_range, read_json, token_ids, type_error
from npuflow.v1 import worker_pb2

ENCODINGS = ("float", "base64")
DIMENSIONS_MAX = proto_range(worker_pb2.EmbedRequest, "dimensions")[1]
_INPUT_TYPES = "a string, an array of strings, an array of token ids or an array of arrays of token ids"


def parse_embeddings(body: dict) -> tuple[EmbedInput, str]:
    """(the request, its encoding_format)."""
    f = Fields(body)
    model = f.str("model", required=True)
    fmt = f.str("encoding_format") or "float"
    if fmt not in ENCODINGS:
        raise bad_param("encoding_format", f"Invalid value for 'encoding_format': expected one of "
                                           f"{', '.join(ENCODINGS)}, but got '{fmt}' instead.")
    dimensions = f.int("dimensions", lo=1, hi=DIMENSIONS_MAX)
    f.str("user")
    instruction = f.str("instruction") or ""
    texts, ids = _inputs(f.required("input"))
    return EmbedInput(model=model, texts=texts, token_ids=ids, dimensions=dimensions, instruction=instruction), fmt


def _inputs(v: Any) -> tuple[list[str] | None, list[list[int]] | None]:
    if isinstance(v, str):
        v = [v]
        single = True
    else:
        single = False
    if not isinstance(v, list):
        raise type_error("input", _INPUT_TYPES, v)
    if not v:
        raise bad_param("input", "Invalid 'input': empty array. Expected an array with at least one element.",
                        code="empty_array")
    if all(isinstance(s, str) for s in v):
        texts = list(v)
        if len(texts) > MAX_INPUTS:
            raise bad_param("input", f"Invalid 'input': array too long. Expected an array with maximum length "
                                     f"{MAX_INPUTS}, but got an array with length {len(texts)} instead.",
                            code="array_above_max_length")
        for i, s in enumerate(texts):
            if not s:
                name = "input" if single else f"input[{i}]"
                raise bad_param(name, f"'{name}' cannot be an empty string.", code="empty_string")
        return texts, None
    if _is_ids(v):
        return None, [token_ids(v, "input")]
    if all(isinstance(s, list) for s in v):
        if len(v) > MAX_INPUTS:
            raise bad_param("input", f"Invalid 'input': array too long. Expected an array with maximum length "
                                     f"{MAX_INPUTS}, but got an array with length {len(v)} instead.",
                            code="array_above_max_length")
        out = []
        for i, s in enumerate(v):
            if not s:
                raise bad_param(f"input[{i}]", f"Invalid 'input[{i}]': empty array.", code="empty_array")
            out.append(token_ids(s, f"input[{i}]"))
        return None, out
    for i, s in enumerate(v):
        if not isinstance(s, (str, int, list)) or isinstance(s, bool):
            raise type_error(f"input[{i}]", "a string, a token id or an array of token ids", s)
    raise type_error("input", _INPUT_TYPES + " (not a mix of them)", v)


async def embeddings(request: web.Request) -> web.Response:
    st = request.app[STATE]
    now = time.time()
    req, fmt = parse_embeddings(await read_json(request))
    out = await embed(st, req, now)
    if fmt == "base64":
        data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()}
                for i, v in enumerate(out.vectors)]
    else:
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(out.vectors)]
    return web.json_response({"object": "list", "data": data, "model": req.model,
                              "usage": {"prompt_tokens": out.prompt_tokens, "total_tokens": out.prompt_tokens}})
