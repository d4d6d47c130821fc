"""The one place ZMQ sockets are made. Endpoints are ipc:// on one host, tcp:// across boards.

Every frame on a socket is one serialized protobuf message (ROUTER sockets add the peer's
identity frame in front). Names say the direction: a gateway's `send_to_worker`, a worker's
`recv_from_gateway`.
"""
from __future__ import annotations

import os
import pathlib
import socket
import time
import urllib.parse
from typing import Iterator

import zmq
import zmq.asyncio
from google.protobuf.message import DecodeError, Message

from npuflow.logs import get_logger

log = get_logger("transport")


def ipc_path(endpoint: str) -> pathlib.Path | None:
    """The filesystem path of an ipc:// endpoint, None for other transports."""
    if endpoint.startswith("ipc://"):
        return pathlib.Path(endpoint[len("ipc://"):])
    return None


def check_endpoint(endpoint: str) -> str:
    """Raise ValueError unless endpoint is a usable ipc:// or tcp:// address (or inproc:// for
    threads of one process)."""
    u = urllib.parse.urlparse(endpoint)
    if u.scheme == "ipc" and endpoint[len("ipc://"):]:
        return endpoint
    if u.scheme == "inproc" and endpoint[len("inproc://"):]:
        return endpoint
    if u.scheme == "tcp" and u.hostname and u.port:
        return endpoint
    raise ValueError(f"endpoint {endpoint!r} is neither ipc://PATH nor tcp://HOST:PORT")


BIND_WAIT_S = 1.0


class EndpointInUse(OSError):
    """Another live process is bound to this ipc:// path."""


def endpoint_in_use(endpoint: str) -> bool:
    """True when a live process listens on this ipc:// path (a file nobody listens on is not)."""
    path = ipc_path(endpoint)
    if path is None or not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _prepare_bind(endpoint: str) -> None:
    path = ipc_path(endpoint)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + BIND_WAIT_S  # a closing socket or exiting process lets go soon
    while endpoint_in_use(endpoint):
        if time.monotonic() > deadline:
            raise EndpointInUse(f"{endpoint} is in use by another running process "
                                f"(another npuflow with the same run_dir?)")
        time.sleep(0.05)
    path.unlink(missing_ok=True)  # left behind by a process that died; binding would fail or misroute


def make_socket(ctx: zmq.Context | zmq.asyncio.Context, kind: int, endpoint: str, *, bind: bool,
                identity: bytes | None = None, reconnect_max_ms: int = 500) -> zmq.Socket:
    """Create, configure and bind/connect a socket.

    linger 0 (never block shutdown on unsent frames); IMMEDIATE on connecting sockets so frames
    are not queued for a peer that is not there (a restarted worker must not receive the
    previous one's requests); reconnect quickly (`reconnect_max_ms` 0: every RECONNECT_IVL, no
    back-off, for a peer that is about to appear, such as a worker being started).
    """
    check_endpoint(endpoint)
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if bind:
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        _prepare_bind(endpoint)
        sock.bind(endpoint)
    else:
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, reconnect_max_ms)
        sock.connect(endpoint)
    return sock


def remove_ipc_file(endpoint: str) -> None:
    """Delete the socket file of an ipc:// endpoint this process bound."""
    path = ipc_path(endpoint)
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def waiting(sock: zmq.Socket, multipart: bool = False) -> Iterator:
    """Every message waiting on `sock`, without blocking (frames as bytes, or lists of parts with
    `multipart`). The socket is asked for POLLIN before each receive: ending on a failed receive
    would cost a zmq.Again exception per drain, which on a per-token path adds up."""
    recv = sock.recv_multipart if multipart else sock.recv
    while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        try:
            yield recv(zmq.NOBLOCK)
        except zmq.Again:
            return


def recv_waiting(sock: zmq.Socket, message_type: type[Message]) -> Iterator[tuple[bytes, Message]]:
    """Every frame waiting on a ROUTER socket, without blocking, as (peer identity, message).
    A frame that is not [identity, payload] or does not parse is logged and dropped."""
    for frames in waiting(sock, multipart=True):
        if len(frames) != 2:
            log.warning("dropped malformed frame", parts=len(frames))
            continue
        try:
            yield frames[0], message_type.FromString(frames[1])
        except DecodeError:
            log.warning("dropped undecodable frame", bytes=len(frames[1]), type=message_type.__name__)
