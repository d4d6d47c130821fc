"""What both front doors share for embeddings (HTTP /v1/embeddings, gRPC Embed).

Order of one request: model known and an embedding model (404; 400 model_not_embedding naming
`model`; an unloaded model starts loading now) -> texts tokenized in one batch by the tokenizer
service (the model's special tokens; token-id inputs skip it) -> all inputs together within
server.max_embedding_tokens_per_request (400 naming `input`) -> queue room (429, one job per
request: admission.py) -> worker ready (bounded wait for its load, 503) -> `dimensions` allowed by
the model and every input within its context (400 naming `dimensions` / `input[3]`) -> one
EmbedRequest with every input to the worker, which computes them in batches. A client that goes
away (the handler is cancelled) or the deadline passing aborts the request in the worker.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from npuflow.gateway.client import EmbedParams
from npuflow.gateway.errors import ApiError
from npuflow.gateway.generation import READY_WAIT_MAX_S, check_kind, check_model, deadline_unix_ms
from npuflow.gateway.state import GatewayState

MAX_INPUTS = 2048          # inputs of one request, as OpenAI's limit


@dataclass(frozen=True)
class EmbedInput:
    """A parsed request: `texts` or `token_ids` (exactly one set); `param` names the input field."""
    model: str
    texts: Sequence[str] | None = None
    token_ids: Sequence[Sequence[int]] | None = None
    dimensions: int | None = None
    instruction: str = ""
    param: str = "input"


@dataclass(frozen=True)
class EmbedOutput:
    vectors: np.ndarray        # float32 [inputs, dimensions]
    prompt_tokens: int


async def embed(st: GatewayState, req: EmbedInput, now: float, remaining_s: float | None = None) -> EmbedOutput:
    """`now` is time.time() at the request's arrival; `remaining_s` the caller's own deadline."""
    arrived = time.perf_counter()
    check_model(st, req.model, kind="embed")
    if req.instruction and req.texts is None:
        raise ApiError(400, "'instruction' applies to text inputs only; token-id inputs are used as they are.",
                       param="instruction", code="invalid_value")
    deadline_ms = deadline_unix_ms(st, now, remaining_s)
    if req.texts is not None:
        ids = await st.tokenizer.encode_embed(req.model, req.texts, req.instruction)
    else:
        ids = [list(x) for x in req.token_ids]
    for k, x in enumerate(ids):
        if not x:
            raise ApiError(400, f"Invalid '{req.param}[{k}]': the input is empty.", param=f"{req.param}[{k}]",
                           code="empty_input")
    tokens, cap = sum(len(x) for x in ids), st.settings.server.max_embedding_tokens_per_request
    if tokens > cap:
        raise ApiError(400, f"The inputs have {tokens} tokens together; one request may have at most {cap} "
                            f"(server.max_embedding_tokens_per_request). Send them in several requests.",
                       param=req.param, code="max_tokens_per_request")
    ms = getattr(st.models, "model_settings", st.settings.model)(req.model)
    info = next((m for m in st.models.models() if m.id == req.model), None)
    with st.admission.take(req.model, 1, info.max_batch if info and info.max_batch else ms.max_batch, ms.max_queue):
        wait = min(READY_WAIT_MAX_S, deadline_ms / 1000.0 - time.time())
        if info is not None and (info.status == "unloaded" or (info.status == "loading" and not info.required)):
            wait = deadline_ms / 1000.0 - time.time()   # a load on demand may take its whole deadline
        info = await st.models.wait_ready(req.model, wait, 1)
        check_kind(info, "embed")
        dims = _dimensions(req.dimensions, info.embedding_dimensions, info.matryoshka)
        for k, x in enumerate(ids):
            if len(x) > info.context_length:
                raise ApiError(400, f"This model's maximum context length is {info.context_length} tokens, however "
                                    f"'{req.param}[{k}]' has {len(x)} tokens. Please reduce the length of the input.",
                               param=f"{req.param}[{k}]", code="context_length_exceeded")
        st.metrics.prompt_tokens.labels(req.model).inc(tokens)
        out = await st.models.embed(EmbedParams(request_id="emb-" + uuid.uuid4().hex, model=req.model, inputs=ids,
                                                dimensions=dims, deadline_unix_ms=deadline_ms))
    if len(out.vectors) != 4 * out.dimensions * len(ids) or (dims and out.dimensions != dims):
        raise ApiError(500, f"The worker returned {len(out.vectors)} bytes for {len(ids)} vectors of "
                            f"{dims or out.dimensions}.", code="internal_error")
    st.metrics.embedding_inputs.labels(req.model).inc(len(ids))
    st.metrics.embedding_seconds.labels(req.model).observe(time.perf_counter() - arrived)
    vectors = np.frombuffer(out.vectors, dtype="<f4").reshape(len(ids), out.dimensions)
    return EmbedOutput(vectors, out.prompt_tokens or tokens)


def _dimensions(asked: int | None, full: int, matryoshka: bool) -> int:
    """The `dimensions` to send the worker (0 = the model's own); 400 naming it when the model
    cannot give it."""
    if asked is None or (full and asked == full):
        return 0
    if not matryoshka:
        raise ApiError(400, f"This model gives {full}-dimensional embeddings and does not support shortening them "
                            f"('dimensions' must be {full} or left out).", param="dimensions", code="invalid_value")
    if full and asked > full:
        raise ApiError(400, f"Invalid 'dimensions': this model's embeddings have {full} dimensions, but {asked} were "
                            f"asked for.", param="dimensions", code="invalid_value")
    return asked
