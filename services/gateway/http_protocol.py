"""The gateway's HTTP connections: aiohttp's protocol, with OpenAI-shaped errors and a header timeout.

aiohttp answers a request it cannot parse (an unknown method, a request line or header over
8,190 bytes, a NUL in a header, bad chunked encoding) from its protocol's `handle_error`, in
text/plain and with a logged traceback, before any middleware runs. `GatewayRunner` makes
connections whose `handle_error` answers the same `{"error": {...}}` JSON as the rest of the API
(400, or 414 / 431 for a request line / header over the limit) and logs one line.

It also bounds the time a request's line and headers may take (server.header_timeout_s), which
aiohttp leaves open: the clock starts when a connection opens or when the first byte of a new
request arrives, and when it runs out the client gets a 408 (or, if it never sent a byte, the
connection is just closed). The body's own timeout is validation.read_json's.
"""
from __future__ import annotations

import asyncio
import json
import re

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler

from npuflow.gateway.errors import ApiError, one_line
from npuflow.logs import get_logger

log = get_logger("gateway")
_URL_START = re.compile(r"reading: (?:bytearray\()?b['\"](?:/|\*|[a-zA-Z][a-zA-Z0-9+.-]*://)")


def _status(status: int, exc: BaseException | None, message: str) -> tuple[int, str, str]:
    """(status, code, message) for a request aiohttp's parser refused."""
    if isinstance(exc, LineTooLong):   # the parser quotes the line's start: a URL, or a header
        if _URL_START.search(message):
            return 414, "request_line_too_long", "The request line (method, URL and version) is too long."
        return 431, "request_header_fields_too_large", "A request header is too large."
    if "too many headers" in message.lower():
        return 431, "request_header_fields_too_large", "The request has too many headers."
    if isinstance(exc, BadHttpMethod):
        return 400, "invalid_http_request", "The request is not HTTP/1.1 (unknown method or garbled request line)."
    return status, "invalid_http_request", f"The HTTP request is malformed: {one_line(message, 200)}"


class _Connection(RequestHandler):
    """aiohttp's protocol with JSON error answers and a deadline for each request's head."""

    def __init__(self, manager, **kwargs):
        super().__init__(manager, **kwargs)
        self._header_timeout = float(getattr(manager, "header_timeout_s", 0) or 0)
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_count = 0          # requests whose head had arrived when the timer was armed
        self._head_bytes = False      # bytes of a new request arrived while the timer runs
        self._last_payload = None     # the body of the last request parsed

    # -- the header deadline
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:      # a request's head is complete
            self._disarm()
            if self._messages:
                self._last_payload = self._messages[-1][1]
            return
        if not data or not self._between_requests():
            return
        if self._header_timer is None:
            self._arm()
        self._head_bytes = True

    def _between_requests(self) -> bool:
        """No request queued or being answered, and the last one's body is complete: bytes that
        arrive now begin a new request."""
        body_done = self._last_payload is None or self._last_payload.is_eof()
        return not self._messages and not getattr(self, "_request_in_progress", False) and body_done

    def _arm(self) -> None:
        self._disarm()
        if self._header_timeout > 0 and self.transport is not None:
            self._head_count, self._head_bytes = self._request_count, False
            self._header_timer = asyncio.get_running_loop().call_later(self._header_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _head_late(self) -> None:
        self._header_timer = None
        if self.transport is None or self._request_count != self._head_count or not self._between_requests():
            return
        if self._head_bytes:
            peer = self.transport.get_extra_info("peername")
            log.warning("request headers timed out", seconds=self._header_timeout, peer=str(peer))
            err = ApiError(408, f"The request's headers did not arrive within {self._header_timeout:g} seconds.",
                           code="request_timeout")
            body = json.dumps(err.body()).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self.force_close()

    # -- errors aiohttp answers itself
    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            log.error("unhandled error", exc_info=exc, path=getattr(request, "path", ""))
            err = ApiError(500, "The server had an error while processing your request.", code="internal_error")
        else:
            status, code, text = _status(status, exc, str(message or exc or ""))
            log.warning("bad http request", status=status, error=one_line(str(message or exc or ""), 200),
                        peer=str(request.remote))
            err = ApiError(status, text, code=code)
        if request.writer.output_size > 0:   # a response is under way: the connection can only end
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        resp = err.response()
        resp.force_close()
        return resp


class _Server(web.Server):
    """aiohttp's connection factory, making `_Connection`s."""

    header_timeout_s = 0.0

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections are `_Connection`s with the given header timeout."""

    def __init__(self, app: web.Application, *, header_timeout_s: float = 0.0, **kwargs):
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        use_gateway_connections(server, self.header_timeout_s)
        return server


def use_gateway_connections(server: web.Server, header_timeout_s: float = 0.0) -> None:
    """Make the connections `server` accepts from now on `_Connection`s (0 = no header timeout)."""
    server.__class__ = _Server         # the same object, whose __call__ makes our protocol
    server.header_timeout_s = header_timeout_s
