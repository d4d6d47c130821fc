"""Tokenizers loaded on first use (TokenizerService with a loader): once per model however many
requests ask at once, a failure remembered and retried only by load_model, an unknown id
NOT_FOUND; over the socket, probes and the loaded models' requests go on while a load runs."""
import threading
import time

import pytest
import zmq

from npuflow.tokenizer import ModelTokenizer, TokenizerService
from npuflow.tokenizer.loading import UnknownModel
from npuflow.v1 import common_pb2, tokenizer_pb2


class Loader:
    """Loads "late" (and "broken" once `fixed`) from the tiny package; counts its calls; a load
    waits for `gate` when one is given."""

    def __init__(self, package, gate: threading.Event | None = None):
        self.package, self.gate = package, gate
        self.calls: list[str] = []
        self.fixed = False

    def __call__(self, model_id: str) -> ModelTokenizer:
        self.calls.append(model_id)
        if self.gate is not None:
            assert self.gate.wait(10)
        if model_id == "broken" and not self.fixed:
            raise OSError("no tokenizer.json in\n/nowhere")
        if model_id not in ("late", "broken"):
            raise UnknownModel(model_id)
        return ModelTokenizer.from_package(self.package.with_overrides(id=model_id))


def encode(model: str, rid: str = "e") -> tokenizer_pb2.TokenizerRequest:
    return tokenizer_pb2.TokenizerRequest(request_id=rid, encode=tokenizer_pb2.EncodeRequest(model=model, text="Hello"))


def load(model: str, rid: str = "l") -> tokenizer_pb2.TokenizerRequest:
    return tokenizer_pb2.TokenizerRequest(request_id=rid, load_model=tokenizer_pb2.LoadTokenizerModel(model=model))


def listed(service) -> dict[str, tokenizer_pb2.TokenizerModel]:
    resp = service.handle(tokenizer_pb2.TokenizerRequest(request_id="m", list_models={}))
    return {m.model: m for m in resp.models.models}


@pytest.fixture
def tiny(package):
    return ModelTokenizer.from_package(package)


def test_a_model_not_loaded_is_loaded_on_its_first_encode_and_listed(package, tiny):
    loader = Loader(package)
    service = TokenizerService({"tiny": tiny}, loader=loader)
    assert set(listed(service)) == {"tiny"}
    r = service.handle(encode("late"))
    assert r.encoded.token_ids == service.handle(encode("tiny")).encoded.token_ids
    d = service.handle(tokenizer_pb2.TokenizerRequest(request_id="d", decode=tokenizer_pb2.DecodeRequest(
        model="late", token_ids=r.encoded.token_ids)))
    assert d.decoded.text == "Hello"
    assert loader.calls == ["late"] and listed(service)["late"].vocab_size == tiny.vocab_size
    a = service.handle(load("late"))   # loaded already: its state, no new load
    assert a.WhichOneof("kind") == "loaded" and a.loaded.vocab_size == tiny.vocab_size and not a.loaded.failed_reason
    assert loader.calls == ["late"]


def test_concurrent_requests_for_an_unloaded_model_share_one_load(package, tiny):
    gate = threading.Event()
    loader = Loader(package, gate)
    service = TokenizerService({"tiny": tiny}, loader=loader)
    answers = []
    threads = [threading.Thread(target=lambda r=r: answers.append(service.handle(r)))
               for r in (encode("late", "1"), encode("late", "2"), load("late", "3"))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while not loader.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert loader.calls == ["late"]
    assert set(listed(service)) == {"tiny"}   # listing does not wait for the load
    gate.set()
    for t in threads:
        t.join(10)
    assert loader.calls == ["late"]
    by_id = {a.request_id: a for a in answers}
    assert by_id["1"].encoded.token_ids and by_id["1"].encoded.token_ids == by_id["2"].encoded.token_ids
    assert by_id["3"].loaded.vocab_size == tiny.vocab_size


def test_a_failed_load_is_remembered_and_retried_only_by_load_model(package):
    loader = Loader(package)
    service = TokenizerService({}, loader=loader)
    for rid in ("1", "2"):
        r = service.handle(encode("broken", rid))
        assert r.error.code == common_pb2.ERROR_CODE_MODEL_NOT_AVAILABLE and r.error.param == "model"
        assert "/nowhere" in r.error.message and "\n" not in r.error.message
    assert loader.calls == ["broken"]   # not loaded again on every request
    assert "/nowhere" in listed(service)["broken"].failed_reason
    a = service.handle(load("broken"))   # an explicit load tries again, and fails again
    assert a.WhichOneof("kind") == "loaded" and "/nowhere" in a.loaded.failed_reason and not a.loaded.vocab_size
    assert loader.calls == ["broken", "broken"]
    loader.fixed = True
    assert service.handle(encode("broken")).error.code == common_pb2.ERROR_CODE_MODEL_NOT_AVAILABLE
    a = service.handle(load("broken"))
    assert a.loaded.vocab_size > 0 and not a.loaded.failed_reason and loader.calls == ["broken"] * 3
    assert service.handle(encode("broken")).encoded.token_ids
    assert not listed(service)["broken"].failed_reason


def test_an_unknown_model_is_not_found_and_not_remembered(package):
    loader = Loader(package)
    service = TokenizerService({}, loader=loader)
    for req in (encode("nope"), load("nope")):
        r = service.handle(req)
        assert r.error.code == common_pb2.ERROR_CODE_NOT_FOUND and r.error.param == "model"
    assert loader.calls == ["nope", "nope"]   # asked again each time: it may appear in models_dir
    assert listed(service) == {}


def test_without_a_loader_an_unknown_model_is_not_found(tiny):
    service = TokenizerService({"tiny": tiny})
    assert service.handle(load("late")).error.code == common_pb2.ERROR_CODE_NOT_FOUND
    assert service.handle(load("tiny")).loaded.vocab_size == tiny.vocab_size


class Peer:
    """A DEALER to a served TokenizerService: send requests, collect answers by request id."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.connect(endpoint)
        self.got: dict[str, tuple[float, tokenizer_pb2.TokenizerResponse]] = {}

    def send(self, req: tokenizer_pb2.TokenizerRequest) -> None:
        self.sock.send(req.SerializeToString())

    def wait(self, rid: str, timeout: float = 5.0) -> tokenizer_pb2.TokenizerResponse:
        end = time.monotonic() + timeout
        while rid not in self.got:
            left = end - time.monotonic()
            assert left > 0 and self.sock.poll(int(left * 1000) + 1), f"no answer to {rid}"
            resp = tokenizer_pb2.TokenizerResponse.FromString(self.sock.recv())
            self.got[resp.request_id] = (time.monotonic(), resp)
        return self.got[rid][1]

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def test_served_probes_and_loaded_models_go_on_while_a_model_loads(package, tiny, tmp_path):
    gate = threading.Event()
    loader = Loader(package, gate)
    service = TokenizerService({"tiny": tiny}, loader=loader)
    endpoint = f"ipc://{tmp_path}/tok.sock"
    stop = threading.Event()
    t = threading.Thread(target=service.serve, args=(endpoint, stop), daemon=True)
    t.start()
    peer = Peer(endpoint)
    try:
        for rid in ("a", "b"):
            peer.send(encode("late", rid))
        peer.send(load("late", "l"))
        deadline = time.monotonic() + 5
        while not loader.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in range(3):   # the load holds one load thread; both encode threads are free
            peer.send(tokenizer_pb2.TokenizerRequest(request_id=f"p{i}", list_models={}))
            assert "late" not in {m.model for m in peer.wait(f"p{i}", 1.0).models.models}
            peer.send(encode("tiny", f"t{i}"))
            assert peer.wait(f"t{i}", 1.0).encoded.token_ids
        assert not {"a", "b", "l"} & set(peer.got)
        gate.set()
        assert peer.wait("a").encoded.token_ids == peer.wait("b").encoded.token_ids == peer.wait("t0").encoded.token_ids
        assert peer.wait("l").loaded.vocab_size == tiny.vocab_size
        assert loader.calls == ["late"]
        peer.send(load("broken", "x"))   # fails: answered with the reason, then remembered
        assert "/nowhere" in peer.wait("x").loaded.failed_reason
        peer.send(encode("broken", "y"))
        assert peer.wait("y").error.code == common_pb2.ERROR_CODE_MODEL_NOT_AVAILABLE
        peer.send(encode("nope", "z"))
        assert peer.wait("z").error.code == common_pb2.ERROR_CODE_NOT_FOUND
        assert loader.calls == ["late", "broken", "nope"]
    finally:
        gate.set()
        stop.set()
        t.join(5)
        peer.close()
    assert not t.is_alive()
