"""`run_gateway(settings)`: the gateway process's entry point."""
from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from npuflow.config import Settings
from npuflow.gateway.app import create_app
from npuflow.gateway.grpc_server import GrpcServer
from npuflow.gateway.http_protocol import GatewayRunner
from npuflow.gateway.state import STATE
from npuflow.logs import get_logger
from npuflow.process import start_process

log = get_logger("gateway")
KEEPALIVE_S = 75.0   # an idle keep-alive connection is closed after this long
DRAIN_S = 30.0


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve HTTP (and gRPC when server.grpc_port is set, on this loop) until SIGTERM/SIGINT (or
    `stop`), then drain: stop accepting on both, let in-flight gRPC calls and HTTP requests finish
    for up to DRAIN_S seconds each, stop the clients."""
    app = create_app(settings)
    runner = GatewayRunner(app, handler_cancellation=True, shutdown_timeout=DRAIN_S, access_log=None,
                           header_timeout_s=settings.server.header_timeout_s, keepalive_timeout=KEEPALIVE_S)
    await runner.setup()
    grpc_server = GrpcServer(app[STATE]) if settings.server.grpc_port else None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
        log.info("listening", host=settings.server.host, port=settings.server.port,
                 models=",".join(m.id for m in settings.models))
        if grpc_server is not None:
            await grpc_server.start()
            log.info("grpc listening", address=grpc_server.address,
                     tls=bool(settings.server.grpc_tls_cert))
        await stop.wait()
        log.info("draining", seconds=DRAIN_S)
    finally:
        if grpc_server is not None:   # HTTP stops accepting too; its requests go on meanwhile
            for s in list(runner.sites):
                await s.stop()
            await grpc_server.stop(DRAIN_S)
        await runner.cleanup()
        log.info("stopped")


def run_gateway(settings: Settings) -> None:
    start_process("gateway", settings.server.log_level, detail=f"{settings.server.host}:{settings.server.port}")
    try:
        asyncio.run(serve(settings))
    except OSError as e:  # a port taken by another program: one clear line, not a traceback
        log.error("cannot listen", error=str(e), http=f"{settings.server.host}:{settings.server.port}",
                  grpc_port=settings.server.grpc_port)
        raise SystemExit(1) from None
