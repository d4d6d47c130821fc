"""The gRPC front door on a test Stack's event loop (next to its aiohttp app), and a blocking
grpc client for it."""
from __future__ import annotations

import grpc

from npuflow.gateway.grpc_server import GrpcServer
from npuflow.gateway.state import STATE
from npuflow.v1 import generation_service_pb2 as gs
from npuflow.v1 import generation_service_pb2_grpc as gs_grpc


class GrpcFront:
    def __init__(self, stack):
        self.stack = stack
        self.server = GrpcServer(stack.app[STATE], host="127.0.0.1", port=0)
        self.port = stack.call(self.server.start())
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = gs_grpc.GenerationServiceStub(self.channel)
        self.md = (("authorization", f"Bearer {stack.key}"),) if stack.key else ()

    def close(self) -> None:
        self.channel.close()
        self.stack.call(self.server.stop(0))

    def generate(self, timeout: float = 10.0, **fields) -> list[gs.GenerateResponse]:
        return list(self.stub.Generate(gs.GenerateTextRequest(**fields), metadata=self.md, timeout=timeout))

    def chat(self, timeout: float = 10.0, **fields) -> list[gs.GenerateResponse]:
        return list(self.stub.Chat(gs.ChatRequest(**fields), metadata=self.md, timeout=timeout))


def texts(msgs: list[gs.GenerateResponse], n: int = 1) -> list[str]:
    out = [""] * n
    for m in msgs:
        for c in m.choices:
            out[c.index] += c.text
    return out


def finishes(msgs: list[gs.GenerateResponse]) -> dict[int, int]:
    return {c.index: c.finish_reason for m in msgs for c in m.choices if c.finish_reason}
