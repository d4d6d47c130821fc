"""GET /v1/models, GET /v1/models/{id}, GET /health, GET /metrics."""
from __future__ import annotations

from aiohttp import web

from npuflow.gateway.client import ModelInfo
from npuflow.gateway.errors import model_not_found
from npuflow.gateway.state import STATE


def _model(m: ModelInfo) -> dict:
    return {"id": m.id, "object": "model", "created": m.created, "owned_by": "npuflow"}


async def list_models(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return web.json_response({"object": "list", "data": [_model(m) for m in st.models.models()]})


async def get_model(request: web.Request) -> web.Response:
    st = request.app[STATE]
    model_id = request.match_info["model"]
    for m in st.models.models():
        if m.id == model_id:
            return web.json_response(_model(m))
    raise model_not_found(model_id)


async def health(request: web.Request) -> web.Response:
    """200 when the tokenizer and every worker are ready, else 503 naming what is missing."""
    st = request.app[STATE]
    models = st.models.health()
    tokenizer = bool(st.tokenizer.ready)
    missing = ([] if tokenizer else ["tokenizer"]) + [f"worker:{m}" for m, ok in models.items() if not ok]
    body = {"status": "ok" if not missing else "unavailable", "tokenizer": tokenizer, "models": models,
            "workers": {m: {"running": s.get("running", 0), "waiting": s.get("queued", 0)}
                        for m, s in st.models.stats().items()}}
    if missing:
        body["missing"] = missing
    return web.json_response(body, status=200 if not missing else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
