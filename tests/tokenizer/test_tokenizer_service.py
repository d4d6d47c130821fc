import threading
import uuid

import pytest
import zmq

from npuflow.tokenizer import ModelTokenizer, TokenizerService
from npuflow.v1 import common_pb2, tokenizer_pb2


@pytest.fixture
def service(package):
    return TokenizerService({"tiny": ModelTokenizer.from_package(package)})


def test_handle_encode_decode_list(service):
    chat = tokenizer_pb2.ChatInput(add_generation_prompt=True, messages=[
        tokenizer_pb2.ChatMessage(role="developer", content="Be brief."),
        tokenizer_pb2.ChatMessage(role="user", content="Hi")])
    r = service.handle(tokenizer_pb2.TokenizerRequest(request_id="a", encode=tokenizer_pb2.EncodeRequest(model="tiny", chat=chat)))
    assert r.request_id == "a" and r.WhichOneof("kind") == "encoded"
    assert r.encoded.rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    d = service.handle(tokenizer_pb2.TokenizerRequest(request_id="b", decode=tokenizer_pb2.DecodeRequest(
        model="tiny", token_ids=r.encoded.token_ids, skip_special_tokens=True)))
    assert d.decoded.text == "system\nBe brief.\nuser\nHi\nassistant\n"
    m = service.handle(tokenizer_pb2.TokenizerRequest(request_id="c", list_models=tokenizer_pb2.ListTokenizerModels()))
    assert [x.model for x in m.models.models] == ["tiny"] and m.models.models[0].vocab_size > 256


def test_handle_errors(service):
    r = service.handle(tokenizer_pb2.TokenizerRequest(request_id="x", encode=tokenizer_pb2.EncodeRequest(model="nope", text="a")))
    assert r.error.code == common_pb2.ERROR_CODE_NOT_FOUND and r.error.param == "model"
    r = service.handle(tokenizer_pb2.TokenizerRequest(request_id="y"))
    assert r.error.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT


def test_socket_roundtrip(service, tmp_path):
    endpoint = f"ipc://{tmp_path}/tok.sock"
    stop = threading.Event()
    t = threading.Thread(target=service.serve, args=(endpoint, stop), daemon=True)
    t.start()
    ctx = zmq.Context()
    send_to_tokenizer = ctx.socket(zmq.DEALER)
    send_to_tokenizer.connect(endpoint)
    try:
        for i in range(3):
            rid = uuid.uuid4().hex
            req = tokenizer_pb2.TokenizerRequest(request_id=rid, encode=tokenizer_pb2.EncodeRequest(model="tiny", text="Hello"))
            send_to_tokenizer.send(req.SerializeToString())
            assert send_to_tokenizer.poll(5000)
            resp = tokenizer_pb2.TokenizerResponse.FromString(send_to_tokenizer.recv())
            assert resp.request_id == rid and resp.encoded.token_ids
        send_to_tokenizer.send(b"\xff\xff garbage")  # dropped, the service keeps going
        send_to_tokenizer.send(tokenizer_pb2.TokenizerRequest(request_id="z", list_models={}).SerializeToString())
        assert send_to_tokenizer.poll(5000)
        assert tokenizer_pb2.TokenizerResponse.FromString(send_to_tokenizer.recv()).request_id == "z"
    finally:
        stop.set()
        t.join(5)
        send_to_tokenizer.close(0)
        ctx.term()
    assert not t.is_alive()
    assert not (tmp_path / "tok.sock").exists()
