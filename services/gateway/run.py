"""`run_gateway(settings)`: the gateway process's entry point."""
from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from npuflow.config import Settings
from npuflow.gateway.app import create_app
from npuflow.logs import get_logger
from npuflow.process import start_process

log = get_logger("gateway")
DRAIN_S = 30.0


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop`), then drain: stop accepting, let in-flight requests
    finish for up to DRAIN_S seconds, stop the clients."""
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=DRAIN_S, access_log=None)
    await runner.setup()
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
        await stop.wait()
        log.info("draining", seconds=DRAIN_S)
    finally:
        await runner.cleanup()
        log.info("stopped")


def run_gateway(settings: Settings) -> None:
    start_process("gateway", settings.server.log_level, detail=f"{settings.server.host}:{settings.server.port}")
    asyncio.run(serve(settings))
