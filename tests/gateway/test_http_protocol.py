"""What aiohttp's HTTP parser refuses, and slow clients, against run_gateway over raw sockets:
OpenAI-shaped JSON with a fitting status, one log line and no traceback, and the gateway
still answering afterwards."""
import json
import socket
import time
from typing import Callable

import pytest

from gw_process import free_port, gateway_process, wait_ready
from npuflow.config import DEFAULT_MODEL_ID

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


class Gateway:
    def __init__(self, proc, port):
        self.proc, self.port = proc, port

    def raw(self, data: bytes, pace: float = 0.0, read_timeout: float = 10.0) -> tuple[int, dict, object]:
        """Send `data` (one byte per `pace` seconds when pace > 0), then read until the server
        closes; (status, headers, parsed JSON body or text). Status 0: closed without an answer."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=read_timeout)
        try:
            try:
                if pace:
                    for i in range(len(data)):
                        s.sendall(data[i:i + 1])
                        time.sleep(pace)
                else:
                    s.sendall(data)
            except OSError:   # the server closed while we were still sending
                pass
            data = _recv_until_closed(s, _complete)
        finally:
            s.close()
        return _parse(data)

    def ok(self) -> bool:
        st, _, _ = self.raw(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return st == 200


def _recv_until_closed(s: socket.socket, complete: Callable[[bytes], bool] | None = None) -> bytes:
    """What the server sends until it closes, resets or the read times out (or, with `complete`,
    until what arrived so far is complete)."""
    chunks = []
    while True:
        try:
            b = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not b:
            break
        chunks.append(b)
        if complete is not None and complete(b"".join(chunks)):
            break
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v)
    return False


def _parse(data: bytes):
    if not data:
        return 0, {}, None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    try:
        return status, headers, json.loads(body)
    except ValueError:
        return status, headers, body.decode("latin-1")


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    port = free_port()
    with gateway_process(tmp_path_factory.mktemp("gwp"), NPUFLOW_PORT=str(port), NPUFLOW_GRPC_PORT="0",
                         NPUFLOW_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
                         NPUFLOW_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S)) as proc:
        g = Gateway(proc, port)
        wait_ready(proc, g.ok, (OSError,), "gateway did not become healthy")
        yield g
        assert g.ok()
        proc.terminate()
        proc.wait(20)
        log = proc.stderr.read().decode()
        assert "Traceback" not in log, log
        assert "bad http request" in log and "request headers timed out" in log, log


def _openai_error(status, headers, body, want_status):
    assert status == want_status, (status, body)
    assert headers["content-type"].startswith("application/json"), headers
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]


CHAT_HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")


@pytest.mark.parametrize("data, status", [
    (b"FOO\x01 / HTTP/1.1\r\nHost: x\r\n\r\n", 400),                                  # a method that is no token
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),                  # request line over 8,190
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),       # a header over 8,190
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n", 400),                     # NUL in a header
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", 400),                     # space in a name
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400),                                      # unknown version
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),           # a TLS hello
    (CHAT_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),  # bad chunk size
    (CHAT_HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n{}", 400),          # two lengths
    (CHAT_HEAD + b"Content-Length: -1\r\n\r\n{}", 400),
    (CHAT_HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}", 400),
])
def test_parser_errors_are_openai_json(gw, data, status):
    e = _openai_error(*gw.raw(data), status)
    assert e["code"] in ("invalid_http_request", "request_line_too_long", "request_header_fields_too_large"), e
    assert gw.ok()


def test_slow_headers_get_408(gw):
    t0 = time.monotonic()
    st, headers, body = gw.raw(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100, pace=0.2)
    assert time.monotonic() - t0 < HEADER_TIMEOUT_S + 3
    e = _openai_error(st, headers, body, 408)
    assert e["code"] == "request_timeout"
    assert gw.ok()


def test_silent_connection_is_closed(gw):
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=HEADER_TIMEOUT_S + 5)
    t0 = time.monotonic()
    assert s.recv(100) == b""          # closed without an answer: it never asked anything
    assert time.monotonic() - t0 < HEADER_TIMEOUT_S + 3
    s.close()


def test_slow_body_gets_408(gw):
    body = json.dumps({"model": DEFAULT_MODEL_ID, "messages": [{"role": "user", "content": "hi" * 50}]}).encode()
    head = CHAT_HEAD + b"Content-Length: %d\r\n\r\n" % len(body)
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(head)
    t0 = time.monotonic()
    sent = 0
    try:
        while sent < len(body) and time.monotonic() - t0 < BODY_TIMEOUT_S + 4:
            s.sendall(body[sent:sent + 1])
            sent += 1
            time.sleep(0.2)
    except OSError:
        pass
    data = _recv_until_closed(s)
    s.close()
    assert sent < len(body)
    e = _openai_error(*_parse(data), 408)
    assert e["code"] == "request_timeout"
    assert time.monotonic() - t0 < BODY_TIMEOUT_S + 4
    assert gw.ok()


def _read_response(s: socket.socket) -> bytes:
    data = b""
    while not _complete(data):
        b = s.recv(65536)
        if not b:
            break
        data += b
    return data


def test_idle_keep_alive_connection_outlives_the_header_timeout(gw):
    """Between requests a kept-alive connection idles under the keep-alive timeout, not the
    header one: a request sent on it later is answered."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    s.sendall(req)
    assert _read_response(s).startswith(b"HTTP/1.1 200")
    time.sleep(HEADER_TIMEOUT_S + 0.5)
    s.sendall(req)
    assert _read_response(s).startswith(b"HTTP/1.1 200")
    s.close()
