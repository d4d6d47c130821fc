"""What the handlers of one app share, stored under a typed AppKey (no globals)."""
from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from npuflow.config import Settings
from npuflow.gateway.admission import Admission
from npuflow.gateway.client import Clients, ModelClient, TokenizerClient
from npuflow.gateway.conversations import ConversationStore
from npuflow.gateway.image_fetch import ImageFetcher
from npuflow.gateway.metrics import Metrics
from npuflow.gateway.responses_background import BackgroundRuns
from npuflow.gateway.responses_store import ResponseStore


@dataclass
class GatewayState:
    settings: Settings
    clients: Clients
    metrics: Metrics
    admission: Admission = field(default_factory=Admission)   # queue room per model
    image_fetcher: ImageFetcher | None = None                  # http(s) image URLs (one client session)
    responses: ResponseStore | None = None                     # the Responses API's stored responses
    background: BackgroundRuns = field(default_factory=BackgroundRuns)   # background responses still running
    conversations: ConversationStore | None = None             # the Conversations API's conversations

    def __post_init__(self) -> None:
        if self.responses is None:
            s = self.settings.server
            self.responses = ResponseStore(s.responses_store_max, s.responses_store_ttl_s, s.responses_store_max_bytes)
        if self.conversations is None:
            s = self.settings.server
            self.conversations = ConversationStore(s.conversations_max, s.conversations_ttl_s,
                                                   s.conversations_max_bytes)

    @property
    def models(self) -> ModelClient:
        return self.clients.models

    @property
    def tokenizer(self) -> TokenizerClient:
        return self.clients.tokenizer


STATE = web.AppKey("npuflow_gateway_state", GatewayState)
