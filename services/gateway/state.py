"""What the handlers of one app share, stored under a typed AppKey (no globals)."""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from npuflow.config import Settings
from npuflow.gateway.client import Clients, ModelClient, TokenizerClient
from npuflow.gateway.metrics import Metrics


@dataclass
class GatewayState:
    settings: Settings
    clients: Clients
    metrics: Metrics

    @property
    def models(self) -> ModelClient:
        return self.clients.models

    @property
    def tokenizer(self) -> TokenizerClient:
        return self.clients.tokenizer


STATE = web.AppKey("npuflow_gateway_state", GatewayState)
