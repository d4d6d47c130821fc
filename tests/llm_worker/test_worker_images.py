"""Requests with images in the worker, on the tiny converted VLM packages (real CPU engine, real
vision encoder, real image decoding and preprocessing): answers equal a direct engine
computation, prefix reuse keys cover the image, bad images are INVALID_ARGUMENT naming their
part, and an image encode runs beside the running streams instead of stalling them.

The one stand-in: `NpuLikeEncoder` wraps the real encoder and sleeps per tile (the GIL released,
as a call into the NPU or onnxruntime does), so the tiny encoder takes as long as a real one."""
import io
import pathlib
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer
from worker_helpers import WorkerPeer

from npuflow.config import ModelSettings
from npuflow.llm_worker import build_link
from npuflow.llm_worker.detok import load_token_table
from npuflow.llm_worker.request import ModelLimits
from npuflow.llm_worker.scheduler import Scheduler
from npuflow.v1 import common_pb2, worker_pb2

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "vision"))
import tinyvlm  # noqa: E402

FR = common_pb2
PARAM = "messages[1].content[2]"


# ---- packages, images, prompts ---------------------------------------------------------------
@pytest.fixture(scope="module", params=["idefics3", "internvl"])
def vlm(request, tmp_path_factory):
    return _load(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def idefics3(tmp_path_factory):
    return _load("idefics3", tmp_path_factory)


_PKGS: dict = {}


def _load(family, tmp_path_factory):
    if family not in _PKGS:
        from npuflow.models.package import load_package
        _PKGS[family] = load_package(tinyvlm.build_tiny_package(family, tmp_path_factory.mktemp(family)))
    return _PKGS[family]


def image_bytes(seed: int, size=(60, 45), fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def spec_of(pkg):
    from npuflow.vision import VisionSpec
    return VisionSpec.from_manifest(pkg.extra["vision"])


def prompt_with_images(pkg, images, *, before="User:", after=" What is in this picture?", detail="auto"):
    """Token ids of `before` + one expanded placeholder per image + `after`, and the ImageInputs
    with their spans (as the tokenizer service would send them)."""
    from npuflow.vision import image_prompt
    from npuflow.vision.images import probe_image
    tok = Tokenizer.from_file(str(pkg.tokenizer_path))
    spec = spec_of(pkg)
    ids = tok.encode(before, add_special_tokens=False).ids
    inputs = []
    for i, data in enumerate(images):
        w, h, _ = probe_image(data, max_pixels=1 << 24)
        span = tok.encode(image_prompt(spec, w, h, detail), add_special_tokens=False).ids
        inputs.append(worker_pb2.ImageInput(data=data, detail=detail, start=len(ids), end=len(ids) + len(span),
                                            param=f"messages[1].content[{i}]"))
        ids += span
    ids += tok.encode(after, add_special_tokens=False).ids
    return ids, inputs


def gen(rid, prompt, images=(), max_tokens=8, n=1, deadline=0, **sampling):
    return worker_pb2.GenerateRequest(request_id=rid, model="tiny", prompt_token_ids=prompt, n=n,
                                      deadline_unix_ms=deadline, images=list(images),
                                      sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                                         **sampling))


def direct_greedy(pkg, prompt, images, steps):
    """The answer computed by hand: encode every image (all its tiles in one call), prefill the
    whole prompt with the embeddings over the image tokens, decode greedily."""
    from npuflow.engine.cpu import CpuEngine
    from npuflow.engine.vision import open_vision_encoder
    from npuflow.vision import preprocess
    from npuflow.vision.images import decode_image
    spec = spec_of(pkg)
    enc = open_vision_encoder(pkg, threads=2)
    eng = CpuEngine(pkg, max_slots=1, threads=2)
    try:
        ids = np.asarray(prompt)
        rows, values = [], []
        for im in images:
            span = np.arange(im.start, im.end)
            rows.append(span[ids[im.start:im.end] == spec.image_token_id])
            values.append(enc.encode(preprocess(spec, decode_image(im.data, max_pixels=1 << 24), im.detail or "auto")))
        logits = eng.prefill(0, prompt, embeds=(np.concatenate(rows), np.concatenate(values)))
        out = []
        for _ in range(steps):
            out.append(int(np.argmax(logits)))
            logits = eng.decode([0], [out[-1]])[0]
        return out
    finally:
        eng.close()
        enc.close()


# ---- a scheduler on the real engine ----------------------------------------------------------
class NpuLikeEncoder:
    """The real encoder, plus `per_tile_s` per call of waiting (GIL released, as on the NPU) or,
    with `busy`, of matrix products on the CPU's cores (as a real-size encoder on onnxruntime)."""

    def __init__(self, encoder, per_tile_s, busy=False):
        self.inner, self.per_tile_s, self.spec, self.busy = encoder, per_tile_s, encoder.spec, busy
        self.calls = 0

    def encode(self, pixels):
        self.calls += 1
        if self.busy:
            a, end = np.ones((192, 192), np.float32), time.perf_counter() + self.per_tile_s * len(pixels)
            while time.perf_counter() < end:
                a = (a @ a) * (1 / 192)
        else:
            time.sleep(self.per_tile_s * len(pixels))
        return self.inner.encode(pixels)

    def close(self):
        self.inner.close()


class NpuLikeEngine:
    """The real engine, plus `decode_s` of waiting per decode call (GIL released), so a running
    stream lives long enough on the tiny model to be measured (a real model's decode step takes
    tens of milliseconds; the tiny one's well under one)."""

    def __init__(self, engine, decode_s):
        self.inner, self.decode_s = engine, decode_s
        self.vocab_size, self.context_length = engine.vocab_size, engine.context_length
        self.max_slots, self.prefill_align = engine.max_slots, engine.prefill_align

    def decode(self, slots, token_ids):
        time.sleep(self.decode_s)
        return self.inner.decode(slots, token_ids)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def make_scheduler(pkg, *, slots=2, vision=True, per_tile_s=0.0):
    from npuflow.engine.cpu import CpuEngine
    from npuflow.engine.vision import open_vision_encoder
    eng = CpuEngine(pkg, max_slots=slots, threads=2)
    enc = open_vision_encoder(pkg, threads=2) if vision else None
    if enc is not None and per_tile_s:
        enc = NpuLikeEncoder(enc, per_tile_s)
    limits = ModelLimits("tiny", eng.vocab_size, eng.context_length, tuple(pkg.eos_token_ids), {},
                         vision=enc.spec if enc is not None else None)
    s = Scheduler(eng, load_token_table(pkg.tokenizer_path, eng.vocab_size), limits, max_queue=8, vision=enc)
    return s, eng, enc


def run(s, timeout=60.0):
    """Step until no request is left (waiting for the encode thread when it is the only one busy)."""
    out: dict = {}
    end = time.monotonic() + timeout
    while (s.requests or s.has_work) and time.monotonic() < end:
        if not s.has_work:
            time.sleep(0.002)
            continue
        for _, ev in s.step():
            out.setdefault((ev.request_id, ev.index), []).append(ev)
    assert not s.requests, "requests left over"
    return out


def answer(s, msg):
    s.submit(msg, b"p")
    evs = run(s)[(msg.request_id, 0)]
    return [t for e in evs for t in e.token_ids], evs[-1]


@pytest.fixture
def closing():
    made = []
    yield made.append
    for s, eng, enc in made:
        s.close()
        eng.close()
        if enc is not None:
            enc.close()


# ---- the tests -------------------------------------------------------------------------------
class Gateway(WorkerPeer):
    recv_timeout = 30.0

    def generate(self, msg: worker_pb2.GenerateRequest):
        self.send(generate=msg)

    def hello(self):
        """Ping: the worker greets a new peer with its Hello before the first answer."""
        self.send(ping=worker_pb2.Ping(sent_unix_ms=1))
        hello = self.recv()
        assert self.recv().WhichOneof("kind") == "heartbeat"
        return hello.hello

    def abort(self, rid):
        self.send(abort=worker_pb2.Abort(request_id=rid))

    def events(self, timeout=30.0):
        """(arrival time, event) of every TokenEvent of the next message that has some."""
        while True:
            msg = self.recv(timeout)
            if msg.WhichOneof("kind") == "events":
                t = time.perf_counter()
                return [(t, ev) for ev in msg.events.events]

    def until_final(self, rid, timeout=60.0):
        evs, end = [], time.monotonic() + timeout
        while time.monotonic() < end:
            for _, ev in self.events():
                if ev.request_id == rid:
                    evs.append(ev)
                    if ev.finish_reason:
                        return evs
        raise AssertionError("no final event")


@pytest.fixture
def worker(tmp_path):
    """A worker link serving over a real ipc socket (as test_worker_link does), real engine."""
    started = []

    def start(pkg, *, per_tile_s=0.0, slots=2, vision=True, decode_s=0.0, busy=False):
        from npuflow.engine.cpu import CpuEngine
        from npuflow.engine.vision import open_vision_encoder
        eng = CpuEngine(pkg, max_slots=slots, threads=2)
        if decode_s:
            eng = NpuLikeEngine(eng, decode_s)
        enc = open_vision_encoder(pkg, threads=2) if vision else None
        if enc is not None and per_tile_s:
            enc = NpuLikeEncoder(enc, per_tile_s, busy)
        model = ModelSettings(id="tiny", endpoint=f"ipc://{tmp_path}/w{len(started)}.sock", max_queue=8)
        link = build_link(eng, pkg, model, vision=enc)
        link.grace_s = 0.3
        stop = threading.Event()
        t = threading.Thread(target=link.serve, args=(stop,), daemon=True)
        t.start()
        gw = Gateway(model.endpoint)
        started.append((stop, t, eng, enc, gw))
        return link, gw, stop, t
    yield start
    for stop, t, eng, enc, gw in started:
        stop.set()
        t.join(10)
        assert not t.is_alive()
        gw.close()
        eng.close()
        if enc is not None:
            enc.close()


def test_image_answer_over_the_socket_equals_the_direct_computation(vlm, worker):
    link, gw, _, _ = worker(vlm)
    prompt, images = prompt_with_images(vlm, [image_bytes(1)])
    want = direct_greedy(vlm, prompt, images, 24)
    gw.generate(gen("img", prompt, images, max_tokens=24, ignore_eos=True))
    hello = gw.recv()
    assert hello.WhichOneof("kind") == "hello" and hello.hello.vision
    evs = gw.until_final("img")
    got = [t for e in evs for t in e.token_ids]
    assert got == want
    last = evs[-1]
    assert last.finish_reason == FR.FINISH_REASON_LENGTH and last.prompt_tokens == len(prompt)
    assert last.cached_prompt_tokens == 0


def test_two_images_in_chunks_that_cut_the_spans(idefics3, closing):
    """Small prefill pieces end inside image spans; the answer is still the direct one."""
    s, eng, enc = make_scheduler(idefics3)
    closing((s, eng, enc))
    s.budget.tokens = lambda target_s: 7
    prompt, images = prompt_with_images(idefics3, [image_bytes(2), image_bytes(3, size=(30, 70))])
    got, last = answer(s, gen("two", prompt, images, max_tokens=16, ignore_eos=True))
    assert got == direct_greedy(idefics3, prompt, images, 16)
    assert last.prompt_tokens == len(prompt)


def test_n_choices_share_one_encode(idefics3, closing):
    s, eng, enc = make_scheduler(idefics3, slots=2, per_tile_s=0.001)
    closing((s, eng, enc))
    prompt, images = prompt_with_images(idefics3, [image_bytes(4)])
    s.submit(gen("n2", prompt, images, n=2, max_tokens=8, ignore_eos=True), b"p")
    out = run(s)
    a, b = ([t for e in out[("n2", i)] for t in e.token_ids] for i in range(2))
    assert a == b == direct_greedy(idefics3, prompt, images, 8)
    spec = spec_of(idefics3)
    image_tokens = sum(1 for t in prompt[images[0].start:images[0].end] if t == spec.image_token_id)
    assert enc.calls == image_tokens // spec.tokens_per_tile    # one call per tile, once for both


def test_prefix_reuse_never_crosses_a_different_image(vlm, closing):
    s, eng, enc = make_scheduler(vlm, slots=1, per_tile_s=1e-4)
    closing((s, eng, enc))
    img_a, img_b = image_bytes(10), image_bytes(11)
    p_a, ims_a = prompt_with_images(vlm, [img_a])
    p_b, ims_b = prompt_with_images(vlm, [img_b])
    assert p_a == p_b                      # same text, same token ids: only the image differs
    first_image_token = int(np.flatnonzero(np.asarray(p_a) == spec_of(vlm).image_token_id)[0])
    ans_a, last = answer(s, gen("a", p_a, ims_a, max_tokens=16, ignore_eos=True))
    assert last.cached_prompt_tokens == 0
    tiles = enc.calls
    ans_b, last = answer(s, gen("b", p_b, ims_b, max_tokens=16, ignore_eos=True))
    assert last.cached_prompt_tokens == first_image_token        # the text before the image only
    assert ans_b == direct_greedy(vlm, p_b, ims_b, 16)
    assert ans_b != ans_a
    ans_a2, last = answer(s, gen("a2", p_a, ims_a, max_tokens=16, ignore_eos=True))
    assert ans_a2 == ans_a == direct_greedy(vlm, p_a, ims_a, 16)
    assert last.cached_prompt_tokens == first_image_token       # the slot held b's image, not a's
    ans_a3, last = answer(s, gen("a3", p_a, ims_a, max_tokens=16, ignore_eos=True))
    assert ans_a3 == ans_a and last.cached_prompt_tokens == len(p_a) - 2    # the same image again
    assert enc.calls == 2 * tiles          # a and b were encoded; a's embeddings came back from the cache


def test_reuse_that_ends_inside_an_image_span(idefics3, closing):
    """The second prompt ends with the image's span, so reuse (all but its last two tokens)
    stops inside the span: the reused part is the same image's, the rest gets its embeddings."""
    s, eng, enc = make_scheduler(idefics3, slots=1)
    closing((s, eng, enc))
    img = image_bytes(12)
    p1, ims1 = prompt_with_images(idefics3, [img], after=" Describe it.")
    p2, ims2 = prompt_with_images(idefics3, [img], after="")
    answer(s, gen("long", p1, ims1))
    got, last = answer(s, gen("short", p2, ims2, max_tokens=12, ignore_eos=True))
    assert last.cached_prompt_tokens == len(p2) - 2 and last.cached_prompt_tokens > ims2[0].start
    assert got == direct_greedy(idefics3, p2, ims2, 12)


def _error(s, msg):
    s.submit(msg, b"p")
    out = run(s)
    last = out[(msg.request_id, 0)][-1]
    assert last.finish_reason == FR.FINISH_REASON_ERROR
    return last.error


def test_bad_images_are_invalid_argument_naming_the_part(idefics3, closing):
    s, eng, enc = make_scheduler(idefics3)
    closing((s, eng, enc))
    prompt, images = prompt_with_images(idefics3, [image_bytes(5)])

    def with_image(**change):
        im = worker_pb2.ImageInput()
        im.CopyFrom(images[0])
        im.param = PARAM
        for k, v in change.items():
            setattr(im, k, v)
        return [im]
    cases = {
        "not an image": with_image(data=b"this is text, not a picture"),
        "truncated": with_image(data=images[0].data[: len(images[0].data) // 2]),
        "count": with_image(data=image_bytes(5, size=(200, 30))),      # another size: another token count
        "span": with_image(end=len(prompt) + 3),
        "no tokens": with_image(start=0, end=1),
        "detail": with_image(detail="ultra"),
    }
    for name, ims in cases.items():
        err = _error(s, gen(name.replace(" ", "-"), prompt, ims))
        assert (err.code, err.param) == (FR.ERROR_CODE_INVALID_ARGUMENT, PARAM), name
        assert err.message, name
    overlap = [images[0], worker_pb2.ImageInput(data=images[0].data, start=images[0].start + 1,
                                                end=images[0].end, param="messages[1].content[3]")]
    err = _error(s, gen("overlap", prompt, overlap))
    assert (err.code, err.param) == (FR.ERROR_CODE_INVALID_ARGUMENT, "messages[1].content[3]")
    assert "overlaps" in err.message
    # the worker goes on serving
    got, last = answer(s, gen("fine", prompt, images, max_tokens=4, ignore_eos=True))
    assert len(got) == 4 and last.finish_reason == FR.FINISH_REASON_LENGTH


def test_an_image_to_a_text_model_is_invalid_argument(idefics3, closing):
    s, eng, enc = make_scheduler(idefics3, vision=False)
    closing((s, eng, enc))
    prompt, images = prompt_with_images(idefics3, [image_bytes(6)])
    images[0].param = PARAM
    err = _error(s, gen("text-model", prompt, images))
    assert (err.code, err.param) == (FR.ERROR_CODE_INVALID_ARGUMENT, PARAM)
    assert "does not take images" in err.message


def test_abort_deadline_and_stop_while_encoding(idefics3, worker):
    link, gw, stop, thread = worker(idefics3, per_tile_s=0.2)
    big = image_bytes(7, size=(128, 128))          # 16 tiles + the global image: 3.4 s of encode
    prompt, images = prompt_with_images(idefics3, [big])
    enc = link.scheduler.vision
    assert gw.hello().vision
    gw.generate(gen("abort-me", prompt, images))
    time.sleep(0.5)
    t0 = time.monotonic()
    gw.abort("abort-me")
    evs = gw.until_final("abort-me")
    assert evs[-1].finish_reason == FR.FINISH_REASON_ABORT and time.monotonic() - t0 < 0.5
    time.sleep(0.5)
    assert enc.calls < 8                            # the encode stopped between tiles
    assert link.scheduler.n_encoding == 0
    gw.generate(gen("late", prompt, images, deadline=int(time.time() * 1000) + 400))
    evs = gw.until_final("late")
    assert evs[-1].error.code == FR.ERROR_CODE_DEADLINE_EXCEEDED
    gw.generate(gen("stopped", prompt, images))
    time.sleep(0.3)
    t0 = time.monotonic()
    stop.set()
    evs = gw.until_final("stopped")
    assert evs[-1].error.code == FR.ERROR_CODE_WORKER_LOST
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - t0 < 3


def _largest_gap(gw, stream, other, n_after=3):
    """Token arrival times of `stream` from now until `other` got its first token (plus a few
    more of the stream's); returns the largest gap between two of the stream's token events,
    how long `other` took to its first token and whether `other` finished meanwhile."""
    times, t_start, t_first, other_done = [time.perf_counter()], time.perf_counter(), None, False
    after = 0
    while t_first is None or after < n_after:
        for t, ev in gw.events():
            if ev.request_id == stream and ev.token_ids:
                assert not ev.finish_reason, "the running stream ended before the measurement did"
                times.append(t)
                after += t_first is not None
            elif ev.request_id == other:
                other_done = other_done or bool(ev.finish_reason)
                if t_first is None and (ev.token_ids or ev.finish_reason):
                    assert ev.token_ids, ev.error.message
                    t_first = t
    return float(np.max(np.diff(times))), t_first - t_start, other_done


@pytest.mark.parametrize("encoder", ["npu", "cpu"])
def test_running_stream_keeps_decoding_while_an_image_is_encoded(idefics3, worker, encoder):
    """17 tiles of 30 ms: 0.5 s of encode, waiting on the NPU or computing on the CPU's cores
    (which the engine needs too); decode steps of 4 ms plus the tiny model's."""
    link, gw, _, _ = worker(idefics3, per_tile_s=0.03, slots=2, decode_s=0.004, busy=encoder == "cpu")
    gw.hello()
    tok = Tokenizer.from_file(str(idefics3.tokenizer_path))
    text_ids = tok.encode(tinyvlm.TEXT, add_special_tokens=False).ids
    rounds = []

    def measure(name, msg):
        gw.generate(gen(f"run-{name}", [5, 6, 7], max_tokens=0, ignore_eos=True))   # a fresh stream
        for _ in range(10):                                                      # is decoding
            gw.events()
        gw.generate(msg)
        gap, ttft, done = _largest_gap(gw, f"run-{name}", msg.request_id)
        if not done:
            gw.until_final(msg.request_id)
        gw.abort(f"run-{name}")
        gw.until_final(f"run-{name}")
        return gap, ttft
    for r in range(3):
        # a new text and a new image each round: nothing is reused from the KV or the image cache
        long_text = [r + 3] + text_ids[r:r + 899]
        prompt, images = prompt_with_images(idefics3, [image_bytes(80 + r, size=(128, 128))])
        text_gap, text_ttft = measure(f"t{r}", gen(f"text{r}", long_text, max_tokens=2))
        image_gap, image_ttft = measure(f"i{r}", gen(f"image{r}", prompt, images, max_tokens=2))
        rounds.append((text_gap, text_ttft, image_gap, image_ttft))
        print(f"{encoder} encoder, round {r}: largest gap of the running stream: {text_gap * 1000:.1f} ms while a "
              f"{len(long_text)}-token prompt prefilled (first token after {text_ttft * 1000:.0f} ms), "
              f"{image_gap * 1000:.1f} ms while a 17-tile image was encoded (first token after "
              f"{image_ttft * 1000:.0f} ms)")
    text_gap = min(r[0] for r in rounds)
    image_gap = min(r[2] for r in rounds)
    image_ttft = min(r[3] for r in rounds)
    assert image_ttft > 0.4                       # the encode took its time ...
    assert image_gap < max(2 * text_gap, 0.05)    # ... without holding the stream up


def test_worker_process_serves_images(idefics3, tmp_path):
    """`npuflow worker` on the converted package: Hello.vision, the direct answer, SIGTERM exits 0."""
    import os
    import signal
    import subprocess
    cfg = tmp_path / "npuflow.toml"
    cfg.write_text(f'[server]\nrun_dir = "{tmp_path}/run"\ncache_dir = "{tmp_path}/cache"\n'
                   f'[[models]]\nid = "tiny"\nsource = "{idefics3.path}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "npuflow.cli", "worker", "--model", "tiny"],
                            env={**os.environ, "NPUFLOW_CONFIG": str(cfg)}, stderr=subprocess.PIPE, text=True)
    gw = Gateway(f"ipc://{tmp_path}/run/worker-tiny.sock")
    try:
        hello = gw.hello()
        assert hello.vision and hello.model == "tiny"
        prompt, images = prompt_with_images(idefics3, [image_bytes(21), image_bytes(22, size=(40, 90))])
        gw.generate(gen("p", prompt, images, max_tokens=16, ignore_eos=True))
        got = [t for e in gw.until_final("p") for t in e.token_ids]
        assert got == direct_greedy(idefics3, prompt, images, 16)
        images[1].data = b"GIF89a broken"
        gw.generate(gen("bad", prompt, images))
        last = gw.until_final("bad")[-1]
        assert (last.error.code, last.error.param) == (FR.ERROR_CODE_INVALID_ARGUMENT, "messages[1].content[1]")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        gw.close()
