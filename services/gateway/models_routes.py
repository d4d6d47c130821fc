"""GET /v1/models, GET /v1/models/{id}, GET /health, GET /metrics."""
from __future__ import annotations

from aiohttp import web

from npuflow.gateway.client import ModelInfo
from npuflow.gateway.errors import model_not_found
from npuflow.gateway.model_state import health as stack_health
from npuflow.gateway.model_state import model_states, status_object
from npuflow.gateway.state import STATE


def _model(m: ModelInfo) -> dict:
    """OpenAI's model object plus extensions: `status` ({"state": loaded | loading | unloaded |
    failed, "reason"}), `input_modalities` (["text", "image"] for a model that takes images, else
    ["text"]), `memory` (its footprint when loaded: bytes, the budget pool it counts against,
    whether it is an estimate), `keep_alive` (idle seconds before it is unloaded; null = never) and,
    once it was loaded on demand, `last_load` (seconds from the request to its worker's Hello, and
    of them the worker's process start and model load, as its Hello reports them), and for an embedding
    model `embedding` ({"dimensions", "matryoshka": whether `dimensions` may shorten its vectors})."""
    out = {"id": m.id, "object": "model", "created": m.created, "owned_by": "npuflow", "status": status_object(m),
           "input_modalities": ["text", "image"] if m.vision else ["text"]}
    if m.embedding:      # an embedding model: /v1/embeddings only (its vectors' length once its worker said it)
        out["embedding"] = {"dimensions": m.embedding_dimensions or None, "matryoshka": m.matryoshka}
    if m.memory_pool:
        out["memory"] = {"bytes": m.footprint_bytes, "pool": m.memory_pool, "estimated": m.footprint_estimated}
        out["keep_alive"] = m.keep_alive_s
    if m.last_load:
        total, start, load = m.last_load
        out["last_load"] = {"seconds": round(total, 3), "process_start_seconds": round(start, 3),
                            "model_load_seconds": round(load, 3)}
    return out


def model_object(st, info: ModelInfo) -> dict:
    """The model object of `info` as GET /v1/models shows it (tokenizer state merged)."""
    return next((_model(m) for m in model_states(st) if m.id == info.id), _model(info))


def _rescan(st) -> None:
    rescan = getattr(st.models, "rescan", None)
    if rescan is not None:        # models_dir: new package folders appear without a restart
        rescan(force=True)


async def list_models(request: web.Request) -> web.Response:
    st = request.app[STATE]
    _rescan(st)
    return web.json_response({"object": "list", "data": [_model(m) for m in model_states(st)]})


async def get_model(request: web.Request) -> web.Response:
    st = request.app[STATE]
    model_id = request.match_info["model"]
    _rescan(st)
    for m in model_states(st):
        if m.id == model_id:
            return web.json_response(_model(m))
    raise model_not_found(model_id)


async def health(request: web.Request) -> web.Response:
    """200 when the tokenizer answers, no model is (re)starting and at least one is loaded
    ("degraded" when some model failed to start for good: `failed` names it and why); else 503
    naming what is missing (see model_state)."""
    st = request.app[STATE]
    h = stack_health(st)
    stats = st.models.stats()
    body = {"status": h.status, "tokenizer": h.tokenizer, "models": {m.id: m.status == "loaded" for m in h.models},
            "states": {m.id: status_object(m) for m in h.models},
            "workers": {m.id: {"running": stats.get(m.id, {}).get("running", 0),
                               "waiting": stats.get(m.id, {}).get("queued", 0)} for m in h.models}}
    if h.missing:
        body["missing"] = h.missing
    if h.failed:
        body["failed"] = h.failed
    return web.json_response(body, status=200 if h.serving else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
