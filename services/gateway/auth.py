"""Bearer API keys (settings.server.api_keys; empty = no auth). /health and /metrics stay open,
and so do the chat page's paths when it is served (`page_paths`, `page_prefix`): the page holds no
secret, and every API call it makes carries the key its user gives it.

The key is compared as bytes, so a header that is not UTF-8 is a 401 like any wrong key."""
from __future__ import annotations

import hmac

from aiohttp import web

from npuflow.gateway.errors import ApiError

OPEN_PATHS = frozenset({"/health", "/metrics"})


def auth_middleware(keys: tuple[str, ...], page_paths: tuple[str, ...] = (), page_prefix: str = ""):
    encoded = [k.encode() for k in keys]
    open_paths = OPEN_PATHS | frozenset(page_paths)

    def is_open(path: str) -> bool:
        return path in open_paths or bool(page_prefix and path.startswith(page_prefix))

    @web.middleware
    async def check_key(request: web.Request, handler):
        if encoded and not is_open(request.path):
            header = request.headers.get("Authorization", "")
            scheme, _, key = header.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an "
                                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                               code="invalid_api_key")
            # the header's bytes as they came (aiohttp keeps bytes that are not UTF-8 as surrogates)
            given = key.strip().encode("utf-8", "surrogateescape")
            if not any(hmac.compare_digest(given, k) for k in encoded):
                raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        return await handler(request)

    return check_key
