"""The gRPC front door: a grpc.aio server on the gateway's event loop, next to aiohttp.

It serves npuflow.v1.GenerationService over the same GatewayState (clients, metrics, settings)
as the HTTP app, plus the standard health service (grpc_readiness) and server reflection, so
grpcurl and grpc_health_probe work without our .proto files. TLS when server.grpc_tls_cert and
grpc_tls_key are set.
"""
from __future__ import annotations

import pathlib

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from npuflow.gateway.grpc_interceptors import AuthInterceptor, ErrorInterceptor
from npuflow.gateway.grpc_readiness import Readiness
from npuflow.gateway.grpc_service import GenerationServicer
from npuflow.gateway.state import GatewayState
from npuflow.v1 import generation_service_pb2 as gs
from npuflow.v1 import generation_service_pb2_grpc as gs_grpc

SERVICE_NAME = gs.DESCRIPTOR.services_by_name["GenerationService"].full_name


class GrpcServer:
    """start() binds and serves (on the running loop); stop(grace) refuses new calls and lets
    running ones finish."""

    def __init__(self, st: GatewayState, host: str | None = None, port: int | None = None):
        s = st.settings.server
        self.st = st
        self.host = s.grpc_host if host is None else host
        self.port = s.grpc_port if port is None else port     # 0 here = any free port
        self.readiness = Readiness(st, (SERVICE_NAME,))
        self.server: grpc.aio.Server | None = None

    def _make_server(self) -> grpc.aio.Server:
        s = self.st.settings.server
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(s.api_keys), ErrorInterceptor()],
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", s.max_body_bytes)])
        gs_grpc.add_GenerationServiceServicer_to_server(GenerationServicer(self.st), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.readiness.health, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        return server

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _bind(self) -> int:
        s = self.st.settings.server
        try:
            if s.grpc_tls_cert:
                creds = grpc.ssl_server_credentials([(pathlib.Path(s.grpc_tls_key).expanduser().read_bytes(),
                                                      pathlib.Path(s.grpc_tls_cert).expanduser().read_bytes())])
                port = self.server.add_secure_port(self.address, creds)
            else:
                port = self.server.add_insecure_port(self.address)
        except RuntimeError as e:
            raise OSError(f"gRPC cannot listen on {self.address}: {e}") from None
        if not port:
            raise OSError(f"gRPC cannot listen on {self.address}")
        return port

    async def start(self) -> int:
        """Bind, serve, and return the port."""
        self.server = self._make_server()
        self.port = self._bind()
        await self.readiness.start()
        await self.server.start()
        return self.port

    async def stop(self, grace: float) -> None:
        await self.readiness.stop()
        if self.server is not None:
            await self.server.stop(grace)
