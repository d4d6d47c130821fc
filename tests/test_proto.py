"""The generated protobuf code must match proto/ (regenerate with python -m npuflow.protogen)."""
from npuflow import protogen


def test_generated_code_matches_proto_files():
    assert protogen.proto_files(), "no .proto files found"
    assert protogen.differences() == []


def test_messages_round_trip():
    from npuflow.v1 import common_pb2, worker_pb2
    msg = worker_pb2.ToWorker(generate=worker_pb2.GenerateRequest(
        request_id="r1", model="m", prompt_token_ids=[1, 2, 3],
        sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=5, stop=["\n"])))
    back = worker_pb2.ToWorker.FromString(msg.SerializeToString())
    assert back.WhichOneof("kind") == "generate"
    assert list(back.generate.prompt_token_ids) == [1, 2, 3]
    assert back.generate.sampling.HasField("temperature") and back.generate.sampling.temperature == 0.0
    assert not back.generate.sampling.HasField("top_p")
