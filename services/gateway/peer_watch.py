"""Notice at once when the process behind a DEALER goes away.

ZMQ reports a dropped connection (the peer's process died or closed its socket) as a monitor
event; heartbeats still catch a peer that hangs or a board that vanishes from the network.
"""
from __future__ import annotations

from typing import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message


async def watch_disconnects(sock: zmq.asyncio.Socket, on_disconnect: Callable[[], None]) -> None:
    """Call `on_disconnect` every time the socket's connection to its peer drops; runs until
    cancelled."""
    mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        while True:
            event = parse_monitor_message(await mon.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                on_disconnect()
    finally:
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        mon.close(linger=0)
