"""OpenAI-shaped errors: one exception type and one middleware that turns anything into JSON.

Every failure a client sees is `{"error": {"message", "type", "param", "code"}}` with the
status that goes with it; nothing else in the gateway writes an error body.
"""
from __future__ import annotations

import json

from aiohttp import web

from npuflow.logs import get_logger
from npuflow.v1 import common_pb2

log = get_logger("gateway")

E = common_pb2.ErrorCode


class ApiError(Exception):
    """A failure to report to the client, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=json.dumps(self.body()), content_type="application/json")

    @classmethod
    def from_code(cls, code: int, message: str, param: str = "") -> "ApiError":
        """Map a protobuf ErrorCode (from the worker or tokenizer) to an HTTP error; the message is
        cut to its first line (a library's error text may carry a dump of its internal state)."""
        param = param or None
        message = one_line(message)
        if code == E.ERROR_CODE_INVALID_ARGUMENT:
            return cls(400, message, param=param, code="invalid_value")
        if code == E.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED:
            return cls(400, message, param=param or "messages", code="context_length_exceeded")
        if code == E.ERROR_CODE_NOT_FOUND:
            return cls(404, message, param=param, code="model_not_found")
        if code == E.ERROR_CODE_OVERLOADED:
            return cls(429, message, type="requests", code="rate_limit_exceeded")
        if code == E.ERROR_CODE_WORKER_LOST:
            return cls(503, message, code="worker_lost")
        if code == E.ERROR_CODE_MODEL_NOT_AVAILABLE:
            return cls(503, message, param="model", code="model_not_available")
        if code == E.ERROR_CODE_CANCELLED:
            return cls(499, message, code="cancelled")
        if code == E.ERROR_CODE_DEADLINE_EXCEEDED:
            return cls(504, message, code="timeout")
        return cls(500, message or "internal error", code="internal_error")


def one_line(text: str, limit: int = 300) -> str:
    """The first line of `text`, at most `limit` characters: what a client is shown of an error."""
    line = (text or "").strip().split("\n", 1)[0].strip()
    return line if len(line) <= limit else line[:limit - 3] + "..."


def bad_param(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def model_not_available(model: str, reason: str) -> ApiError:
    """A configured model that failed to start and will not serve until fixed (503 at once)."""
    return ApiError(503, f"The model '{model}' is not available: {reason}", param="model",
                    code="model_not_available")


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Turn ApiError, aiohttp's HTTP exceptions and unexpected exceptions into OpenAI JSON."""
    try:
        return await handler(request)
    except ApiError as e:
        return e.response()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _http_exception(request, e).response()
    except (ConnectionResetError, OSError) as e:  # client went away mid-response
        log.debug("connection lost", path=request.path, error=str(e))
        raise
    except Exception:
        log.error("unhandled error", exc_info=True, path=request.path)
        return ApiError(500, "The server had an error while processing your request.",
                        code="internal_error").response()


def _http_exception(request: web.Request, e: web.HTTPException) -> ApiError:
    where = f"({request.method} {request.path})"
    if e.status == 404:
        return ApiError(404, f"Invalid URL {where}", code="unknown_url")
    if e.status == 405:
        return ApiError(405, f"Method not allowed {where}", code="method_not_allowed")
    if e.status == 413:
        return ApiError(413, "Request body too large.", code="request_too_large")
    return ApiError(e.status, e.reason or "HTTP error", code=None)
