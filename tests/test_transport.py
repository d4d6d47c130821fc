"""The socket helpers: endpoint checks, stale ipc files, and the ROUTER receive helper."""
import time

import pytest
import zmq

from npuflow.transport import check_endpoint, make_socket, recv_waiting
from npuflow.v1 import worker_pb2


@pytest.mark.parametrize("ep", ["ipc:///tmp/x.sock", "tcp://10.0.0.2:5601", "inproc://pipe"])
def test_good_endpoints(ep):
    assert check_endpoint(ep) == ep


@pytest.mark.parametrize("ep", ["", "http://a:1", "tcp://host", "ipc://", "udp://a:1"])
def test_bad_endpoints_are_refused(ep):
    with pytest.raises(ValueError, match="neither"):
        check_endpoint(ep)


def test_bind_replaces_a_stale_ipc_file_and_bad_frames_are_dropped(tmp_path):
    path = tmp_path / "w.sock"
    path.write_text("left behind by a dead process")
    ctx = zmq.Context()
    router = make_socket(ctx, zmq.ROUTER, f"ipc://{path}", bind=True)
    dealer = make_socket(ctx, zmq.DEALER, f"ipc://{path}", bind=False)
    try:
        time.sleep(0.1)
        dealer.send(b"\xff\xff not protobuf")
        dealer.send_multipart([b"two", b"frames"])
        dealer.send(worker_pb2.ToWorker(ping=worker_pb2.Ping(sent_unix_ms=7)).SerializeToString())
        got = []
        end = time.monotonic() + 2
        while len(got) < 1 and time.monotonic() < end:
            router.poll(100)
            got += list(recv_waiting(router, worker_pb2.ToWorker))
        assert [m.ping.sent_unix_ms for _, m in got] == [7]
    finally:
        dealer.close(0)
        router.close(0)
        ctx.term()


def test_a_live_ipc_endpoint_is_not_taken_over(tmp_path):
    from npuflow.transport import EndpointInUse, endpoint_in_use
    ep = f"ipc://{tmp_path}/busy.sock"
    ctx = zmq.Context()
    first = make_socket(ctx, zmq.ROUTER, ep, bind=True)
    try:
        assert endpoint_in_use(ep)
        with pytest.raises(EndpointInUse, match="in use"):
            make_socket(ctx, zmq.ROUTER, ep, bind=True)
    finally:
        first.close(0)
        ctx.term()
    assert not endpoint_in_use(ep)
