"""The standard health service follows worker readiness live; reflection lists the services so
generic tools work without our .proto files. Both stay open when API keys are configured."""
import time

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from gw_fakes import MODEL
from grpc_front import GrpcFront

SERVICE = "npuflow.v1.GenerationService"
H = health_pb2.HealthCheckResponse


@pytest.fixture
def front(make_stack):
    f = GrpcFront(make_stack())
    yield f
    f.close()


def _check(f: GrpcFront, service: str) -> int:
    return health_pb2_grpc.HealthStub(f.channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                       timeout=5).status


def _becomes(f: GrpcFront, service: str, status: int, timeout: float = 1.0) -> None:
    """Statuses follow readiness within a poll interval (0.1 s)."""
    end = time.monotonic() + timeout
    while _check(f, service) != status:
        assert time.monotonic() < end, f"{service!r} did not become {H.ServingStatus.Name(status)}"
        time.sleep(0.02)


def test_check_without_a_key(front):
    assert front.stack.key
    for name in ("", SERVICE, MODEL):
        assert _check(front, name) == H.SERVING
    with pytest.raises(grpc.RpcError) as e:
        _check(front, "no-such-model")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_follows_the_worker(front):
    watch = health_pb2_grpc.HealthStub(front.channel).Watch(health_pb2.HealthCheckRequest(service=MODEL),
                                                            timeout=10)
    assert next(watch).status == H.SERVING
    front.stack.worker.silent = True           # lost after 1 s without answers
    assert next(watch).status == H.NOT_SERVING
    _becomes(front, "", H.NOT_SERVING)
    _becomes(front, SERVICE, H.NOT_SERVING)
    front.stack.worker.silent = False
    assert next(watch).status == H.SERVING
    _becomes(front, "", H.SERVING)
    watch.cancel()


def test_tokenizer_down_is_not_serving(front):
    front.stack.tokenizer.silent = True
    front.stack.wait_health(503)
    _becomes(front, MODEL, H.NOT_SERVING)
    _becomes(front, "", H.NOT_SERVING)
    front.stack.tokenizer.silent = False
    _becomes(front, MODEL, H.SERVING, 3.0)


def test_reflection_lists_and_describes_the_services(front):
    db = ProtoReflectionDescriptorDatabase(front.channel)
    assert set(db.get_services()) >= {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    pool = DescriptorPool(db)
    svc = pool.FindServiceByName(SERVICE)
    assert [m.name for m in svc.methods] == ["Generate", "Chat", "Embed", "Tokenize", "ListModels", "LoadModel",
                                             "UnloadModel"]
    embed = svc.methods_by_name["Embed"]
    assert not embed.server_streaming and embed.output_type.full_name == "npuflow.v1.EmbedResponse"
    gen = svc.methods_by_name["Generate"]
    assert gen.server_streaming and gen.output_type.full_name == "npuflow.v1.GenerateResponse"
    sampling = gen.input_type.fields_by_name["sampling"].message_type
    assert sampling.full_name == "npuflow.v1.SamplingParams" and "temperature" in sampling.fields_by_name
