"""The one mapping from the gateway's errors to gRPC status codes.

The shared request path raises `ApiError` (HTTP status + OpenAI code + param), built from the
protobuf ErrorCode of workers and the tokenizer in `ApiError.from_code`; the gRPC front door
turns it into a status here, and nowhere else. The OpenAI code and param travel along as the
trailing metadata `npuflow-error-code` / `npuflow-error-param`; a full queue's
RESOURCE_EXHAUSTED also carries `retry-after` (seconds, as the HTTP 429's Retry-After header).

A prompt over the model's context is INVALID_ARGUMENT (as the HTTP API's 400): the caller must
change the request; the `npuflow-error-code: context_length_exceeded` trailer tells it apart.
A model that failed to start (HTTP 503 `model_not_available`) is FAILED_PRECONDITION: retrying
does not help until an operator fixes it.
"""
from __future__ import annotations

import grpc

from npuflow.gateway.errors import ApiError

CODE_KEY = "npuflow-error-code"
PARAM_KEY = "npuflow-error-param"
RETRY_AFTER_KEY = "retry-after"   # RESOURCE_EXHAUSTED of a full queue: seconds, as HTTP's Retry-After

_BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# A model that failed to start stays failed until its configuration or host is fixed: not
# UNAVAILABLE, which gRPC clients' retry policies take as "try again shortly".
_BY_ERROR_CODE = {"model_not_available": grpc.StatusCode.FAILED_PRECONDITION,
                  "model_too_large_for_budget": grpc.StatusCode.RESOURCE_EXHAUSTED,
                  "lifecycle_not_managed": grpc.StatusCode.FAILED_PRECONDITION}


def grpc_status(e: ApiError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """(status code, message, trailing metadata) for an ApiError. The message names the field at
    fault when the error has one."""
    code = _BY_ERROR_CODE.get(e.code or "") or _BY_HTTP_STATUS.get(e.status, grpc.StatusCode.UNKNOWN)
    message = e.message
    if e.param and f"'{e.param}'" not in message and f"`{e.param}`" not in message:
        message = f"{message} (field '{e.param}')"
    retry = getattr(e, "retry_after", None)   # a full queue: seconds until a retry has room
    trailers = tuple((k, v) for k, v in ((CODE_KEY, e.code or ""), (PARAM_KEY, e.param or ""),
                                         (RETRY_AFTER_KEY, str(retry) if retry else "")) if v)
    return code, message, trailers


def internal_error() -> ApiError:
    return ApiError(500, "The server had an error while processing your request.", code="internal_error")


def unauthenticated(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key")
