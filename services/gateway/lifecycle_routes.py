"""POST /models/load and POST /models/unload ({"model": ID}): load a model now, or drain and
unload it; both answer with the model object (as GET /v1/models/{id}) once done. Behind the API
key like every route but /health and /metrics. Only under `npuflow serve` (its supervisor starts
and stops the workers): otherwise 400 lifecycle_not_managed."""
from __future__ import annotations

import asyncio
import time

from aiohttp import web

from npuflow.gateway.errors import ApiError
from npuflow.gateway.models_routes import model_object
from npuflow.gateway.state import STATE
from npuflow.gateway.validation import Fields, read_json


async def _model_id(request: web.Request) -> str:
    return Fields(await read_json(request)).str("model", required=True)


async def load_model(request: web.Request) -> web.Response:
    st = request.app[STATE]
    model = await _model_id(request)
    info = await st.models.load(model, st.settings.server.request_timeout_s)
    return web.json_response(model_object(st, info))


async def unload_model(request: web.Request) -> web.Response:
    st = request.app[STATE]
    model = await _model_id(request)
    started = time.monotonic()
    try:
        info = await st.models.unload(model, st.settings.server.request_timeout_s)
    except (asyncio.TimeoutError, TimeoutError):
        raise ApiError(504, f"The model '{model}' is still draining after {time.monotonic() - started:.0f} s; "
                            f"it unloads once its running requests finish.", code="timeout") from None
    return web.json_response(model_object(st, info))
