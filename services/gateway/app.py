"""The gateway's aiohttp application: routes, middlewares, and the clients' start/stop."""
from __future__ import annotations

import os
from typing import AsyncIterator

import zmq
from aiohttp import web

from npuflow.config import Settings
from npuflow.gateway.auth import auth_middleware
from npuflow.gateway.client import Clients
from npuflow.gateway.errors import error_middleware
from npuflow.gateway.image_fetch import ImageFetcher
from npuflow.gateway.lifecycle import ModelManager, supervised
from npuflow.gateway.lifecycle_routes import load_model, unload_model
from npuflow.gateway.metrics import Metrics
from npuflow.gateway.models_routes import get_model, health, list_models, metrics
from npuflow.gateway.openai_chat import chat_completions
from npuflow.gateway.openai_completions import completions
from npuflow.gateway import openai_conversations as conversations
from npuflow.gateway.openai_embeddings import embeddings
from npuflow.gateway.openai_responses import (cancel_response, count_input_tokens, create_response, delete_response,
                                              get_response, list_input_items)
from npuflow.gateway.openai_responses_compact import compact_response
from npuflow.gateway.state import STATE, GatewayState
from npuflow.gateway.tokenize_routes import detokenize, tokenize
from npuflow.gateway.tokenizer_link import TokenizerLink
from npuflow.gateway.web_ui import ASSET_PREFIX, PAGE_PATHS, WebUi, load_assets
from npuflow.gateway.worker_link import WorkerPool


class ZmqClients:
    """The real clients: a DEALER per worker and one to the tokenizer, on one ZMQ context, and
    under `npuflow serve` one to the supervisor, which starts and stops the workers the model
    manager asks for (lifecycle.py)."""

    def __init__(self, settings: Settings):
        self._ctx = zmq.Context()
        self.tokenizer = TokenizerLink(settings, self._ctx)
        supervisor = None
        if supervised():
            from npuflow.gateway.supervisor_link import SupervisorLink
            supervisor = SupervisorLink(os.environ["NPUFLOW_CONTROL_ENDPOINT"], self._ctx,
                                        on_exit=lambda model, code: self.models.on_exit(model, code))
        pool = WorkerPool(settings, self._ctx, all_models=supervisor is None)
        self.models = ModelManager(settings, pool, supervisor=supervisor, tokenizer=self.tokenizer)

    async def start(self) -> None:
        await self.tokenizer.start()
        await self.models.start()

    async def stop(self) -> None:
        await self.models.stop()
        await self.tokenizer.stop()
        self._ctx.term()


def _metrics_middleware(m: Metrics):
    @web.middleware
    async def count(request: web.Request, handler):
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        status = 499
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        finally:
            m.requests.labels(route, str(status)).inc()

    return count


def create_app(settings: Settings, clients: Clients | None = None) -> web.Application:
    """The gateway app. `clients` defaults to the ZMQ links of `settings`; tests pass fakes."""
    clients = clients if clients is not None else ZmqClients(settings)
    lifecycle_metrics = getattr(clients.models, "metrics", None)
    metrics_ = Metrics(lambda: clients.models.stats(), collectors=(lifecycle_metrics,) if lifecycle_metrics else ())
    web_ui = settings.server.web_ui
    public = dict(page_paths=PAGE_PATHS, page_prefix=ASSET_PREFIX) if web_ui else {}
    app = web.Application(client_max_size=settings.server.max_body_bytes,
                          middlewares=[_metrics_middleware(metrics_), error_middleware,
                                       auth_middleware(settings.server.api_keys, **public)])
    app[STATE] = GatewayState(settings=settings, clients=clients, metrics=metrics_,
                              image_fetcher=ImageFetcher(settings.server))
    if hasattr(clients.models, "attach"):   # busy = admitted sequences: never evicted, drained first
        clients.models.attach(app[STATE].admission.held)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await clients.start()
        yield
        await app[STATE].background.close()   # background responses still running end cancelled
        await clients.stop()
        await app[STATE].image_fetcher.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/responses", create_response)
    app.router.add_post("/v1/responses/input_tokens", count_input_tokens)
    app.router.add_post("/v1/responses/compact", compact_response)
    app.router.add_post("/v1/responses/{response_id}/cancel", cancel_response)
    app.router.add_get("/v1/responses/{response_id}", get_response)
    app.router.add_delete("/v1/responses/{response_id}", delete_response)
    app.router.add_get("/v1/responses/{response_id}/input_items", list_input_items)
    app.router.add_post("/v1/conversations", conversations.create_conversation)
    app.router.add_get("/v1/conversations/{conversation_id}", conversations.get_conversation)
    app.router.add_post("/v1/conversations/{conversation_id}", conversations.update_conversation)
    app.router.add_delete("/v1/conversations/{conversation_id}", conversations.delete_conversation)
    app.router.add_post("/v1/conversations/{conversation_id}/items", conversations.add_items)
    app.router.add_get("/v1/conversations/{conversation_id}/items", conversations.list_items)
    app.router.add_get("/v1/conversations/{conversation_id}/items/{item_id}", conversations.get_item)
    app.router.add_delete("/v1/conversations/{conversation_id}/items/{item_id}", conversations.delete_item)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/models/load", load_model)
    app.router.add_post("/models/unload", unload_model)
    if web_ui:
        WebUi(load_assets()).add_routes(app.router)
    return app
