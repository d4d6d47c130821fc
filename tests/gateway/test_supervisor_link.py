"""SupervisorLink against a real Supervisor loop (test_supervisor_control.supervised: stand-in
workers, real ipc socket): commands and their answers, the exited event, and errors."""
import asyncio
import os
import signal
import tempfile

import pytest
import zmq

from npuflow.gateway.supervisor_link import SupervisorError, SupervisorLink
from npuflow.transport import make_socket
from npuflow.v1 import control_pb2

from test_supervisor_control import supervised, wait_up

PS = control_pb2.ProcessState


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


async def _link(endpoint, ctx, exits=None):
    link = SupervisorLink(endpoint, ctx, lambda model, code: exits.put_nowait((model, code)) if exits is not None else None)
    await link.start()
    return link


async def test_start_list_stop_and_the_exited_event(ctx):
    exits = asyncio.Queue()
    with supervised(stop_timeout=0.5) as sup:
        link = await _link(sup.control.endpoint, ctx, exits)
        try:
            w = await link.start_worker("a")
            assert w.state == PS.PROCESS_STATE_RUNNING and w.pid > 0
            assert (await link.start_worker("a")).pid == w.pid
            assert (await link.list_workers())["a"].pid == w.pid
            b = await link.start_worker("b")
            stopped, listed = await asyncio.gather(link.stop_worker("a"), link.list_workers())
            assert stopped.state == PS.PROCESS_STATE_STOPPED and stopped.requested
            assert set(listed) == {"a", "b"}
            wait_up(sup, "b")
            os.kill(b.pid, signal.SIGKILL)
            assert await asyncio.wait_for(exits.get(), 5) == ("b", -signal.SIGKILL)
            assert (await link.list_workers())["b"].state == PS.PROCESS_STATE_STOPPED
        finally:
            await link.stop()


async def test_an_unknown_model_is_an_error(ctx):
    with supervised() as sup:
        link = await _link(sup.control.endpoint, ctx)
        try:
            with pytest.raises(SupervisorError, match="nope"):
                await link.start_worker("nope")
        finally:
            await link.stop()


async def test_no_supervisor_or_no_answer_is_an_error_in_time(ctx):
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        link = await _link(f"ipc://{d}/supervisor.sock", ctx)
        try:
            with pytest.raises(SupervisorError, match="not reachable"):
                await link.list_workers(timeout=0.2)
            mute = make_socket(ctx, zmq.ROUTER, f"ipc://{d}/supervisor.sock", bind=True)   # never answers
            try:
                with pytest.raises(SupervisorError, match="did not answer"):
                    await link.start_worker("a", timeout=1.5)
            finally:
                mute.close()
        finally:
            await link.stop()
