"""The gateway's side of its ZMQ sockets on the asyncio loop.

The gateway's DEALERs are plain ZMQ sockets read from the event loop through their file
descriptor: one wake-up drains every frame waiting, with no future per frame (zmq.asyncio's
per-frame machinery was a large part of the gateway's cost per streamed token). Sends never
wait. A dropped connection (the peer's process died or closed its socket) is reported at once
by a ZMQ monitor; heartbeats still catch a peer that hangs or a board that leaves the network.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from npuflow.transport import waiting


class Dealer:
    """A connecting socket driven from the event loop: `send` never waits, `batches` yields every
    message that arrived, all that were waiting at each wake-up."""

    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self._wake = asyncio.Event()

    def send(self, data: bytes) -> bool:
        """Send without waiting; False when no peer can take the frame right now."""
        try:
            self.sock.send(data, zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        # a send lets the socket take in pending input, which uses up the descriptor's signal
        if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._wake.set()
        return True

    def batches(self) -> AsyncIterator[list]:
        return frames(self.sock, wake=self._wake)


async def frames(sock: zmq.Socket, multipart: bool = False, wake: asyncio.Event | None = None
                 ) -> AsyncIterator[list]:
    """Every message that arrives on `sock`, in batches (all that were waiting): frames as bytes,
    or lists of parts with `multipart`; runs until cancelled. The socket's descriptor only
    signals changes, so the socket is asked for its events after each drain before the loop
    sleeps on the descriptor again (and whoever else uses the socket sets `wake` likewise)."""
    loop = asyncio.get_running_loop()
    fd = sock.getsockopt(zmq.FD)
    wake = wake or asyncio.Event()
    loop.add_reader(fd, wake.set)
    try:
        while True:
            wake.clear()
            batch = list(waiting(sock, multipart))
            if batch:
                yield batch
                continue
            await wake.wait()
    finally:
        loop.remove_reader(fd)


async def watch_disconnects(sock: zmq.Socket, on_disconnect: Callable[[], None]) -> None:
    """Call `on_disconnect` every time the socket's connection to its peer drops; runs until
    cancelled."""
    mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        async for batch in frames(mon, multipart=True):
            for msg in batch:
                if parse_monitor_message(msg)["event"] == zmq.EVENT_DISCONNECTED:
                    on_disconnect()
    finally:
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        mon.close(linger=0)
