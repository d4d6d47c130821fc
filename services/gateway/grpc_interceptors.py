"""Server interceptors of the gRPC front door: API keys, and errors -> status codes.

Auth: when settings.server.api_keys is non-empty, every call of the npuflow service needs the
metadata `authorization: Bearer KEY`; otherwise UNAUTHENTICATED. The standard health and
reflection services stay open (like GET /health and /metrics over HTTP): probes and generic
tools (grpc_health_probe, grpcurl list/describe) need no key, and neither reveals more than model
names and the schema.

Errors: every ApiError (and any unexpected exception, as INTERNAL) that leaves a handler of the
npuflow service becomes a status through `grpc_errors.grpc_status`, the one mapping.
"""
from __future__ import annotations

import hmac
from typing import Awaitable, Callable

import grpc
import grpc.aio

from npuflow.gateway.errors import ApiError
from npuflow.gateway.grpc_errors import grpc_status, internal_error, unauthenticated
from npuflow.logs import get_logger

log = get_logger("gateway")

SERVICE_PREFIX = "/npuflow.v1."
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Behavior = Callable[[object, grpc.aio.ServicerContext], Awaitable[object]]


async def abort_with(context: grpc.aio.ServicerContext, e: ApiError) -> None:
    code, message, trailers = grpc_status(e)
    await context.abort(code, message, trailing_metadata=trailers)


def _rewrap(handler: grpc.RpcMethodHandler, wrap: Callable[[Behavior], Behavior]) -> grpc.RpcMethodHandler:
    """The same handler with its (unary request) behavior wrapped; others are left as they are."""
    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **kw)
    return handler


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: tuple[str, ...]):
        self._keys = [k.encode() for k in keys]

    def _check(self, metadata) -> ApiError | None:
        header = next((v for k, v in (metadata or ()) if k == "authorization"), "")
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return unauthenticated("You didn't provide an API key. Send it as the metadata "
                                   "'authorization: Bearer YOUR_KEY'.")
        given = key.strip().encode()
        if not any(hmac.compare_digest(given, k) for k in self._keys):
            return unauthenticated("Incorrect API key provided.")
        return None

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not self._keys or details.method.startswith(OPEN_PREFIXES):
            return handler
        error = self._check(details.invocation_metadata)
        if error is None:
            return handler

        def reject(_behavior: Behavior) -> Behavior:
            async def behavior(request, context):
                await abort_with(context, error)
            return behavior

        return _rewrap(handler, reject)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        method = details.method

        def mapped(inner: Behavior) -> Behavior:
            async def behavior(request, context):
                try:
                    return await inner(request, context)
                except ApiError as e:
                    await abort_with(context, e)
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    log.error("unhandled error", exc_info=True, method=method)
                    await abort_with(context, internal_error())
            return behavior

        return _rewrap(handler, mapped)
