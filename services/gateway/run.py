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


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve HTTP (and gRPC when server.grpc_port is set, on this loop) until SIGTERM/SIGINT (or
    `stop`), then drain: stop accepting on both, let in-flight gRPC calls and HTTP requests finish
    together within server.drain_timeout_s (one budget for both: what is still running then is
    cancelled), and only then stop the clients."""
    drain_s = settings.server.drain_timeout_s
    app = create_app(settings)
    in_flight = _InFlight()
    app.middlewares.insert(0, in_flight.middleware)
    runner = GatewayRunner(app, handler_cancellation=True, shutdown_timeout=drain_s, access_log=None,
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
        log.info("draining", seconds=drain_s)
    finally:
        await _drain(runner, grpc_server, in_flight, drain_s)
        await runner.cleanup()   # on_shutdown hooks, then the clients stop (nothing is in flight)
        log.info("stopped")


class _InFlight:
    """The HTTP requests being handled, so that the drain can wait for them and then end them
    itself (aiohttp's own shutdown waits its timeout once for the handlers and once more after
    asking them to stop, which a streaming handler does not notice: twice the budget)."""

    def __init__(self):
        self.tasks: set[asyncio.Task] = set()

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            return await handler(request)
        finally:
            self.tasks.discard(task)

    async def drain(self, timeout: float) -> None:
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)


async def _drain(runner: web.AppRunner, grpc_server: GrpcServer | None, in_flight: _InFlight,
                 drain_s: float) -> None:
    """Stop accepting HTTP and gRPC, then wait for both kinds of in-flight requests at once, up
    to drain_s, and cancel what is left (grpc.aio does for its calls)."""
    for s in list(runner.sites):
        await s.stop()
    if runner.server is not None:
        runner.server.pre_shutdown()   # idle keep-alive connections close now
    waits = [in_flight.drain(drain_s)]
    if grpc_server is not None:
        waits.append(grpc_server.stop(drain_s))
    await asyncio.gather(*waits)


def run_gateway(settings: Settings) -> None:
    start_process("gateway", settings.server.log_level, detail=f"{settings.server.host}:{settings.server.port}")
    try:
        asyncio.run(serve(settings))
    except OSError as e:  # a port taken by another program: one clear line, not a traceback
        log.error("cannot listen", error=str(e), http=f"{settings.server.host}:{settings.server.port}",
                  grpc_port=settings.server.grpc_port)
        raise SystemExit(1) from None
