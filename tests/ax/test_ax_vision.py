"""Vision-language models on the AX engine (onnxruntime mirror of pyaxengine).

The tiny Idefics3 and InternVL checkpoints (tests/vision/tinyvlm.py) are converted twice: with
`--layout ax` (per-layer AX graphs, the vision encoder with the vendor's NHWC uint8 signature)
and as the bf16-boundaries CPU twin. With one image, the AX engine (AxVisionEncoder + prefill with
embeds) answers token for token, logits to the bit, like the CPU engine does with its own vision
encoder. A vendor-shaped directory (the encoder in a folder below, no vision section in
config.json, the base model's HF processor files in a folder) is read correctly, with NHWC uint8
and NCHW float32 encoders. The CMM check counts the encoder.
"""
import json
import pathlib
import shutil
import sys

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "vision"))

import tinyvlm  # noqa: E402

from npuflow.engine.ax import AxEngine  # noqa: E402
from npuflow.engine.ax_cmm import CmmError  # noqa: E402
from npuflow.engine.ax_vision import AxVisionEncoder  # noqa: E402
from npuflow.models.ax_package import read_ax_package  # noqa: E402

P, KV, STEPS = 16, 256, 32
FAMILIES = ("idefics3", "internvl")


def _cmm(free_kb: int) -> str:
    return (f" total size=3145728KB(3072MB),used={3145728 - free_kb}KB(0MB),remain={free_kb}KB(0MB),"
            "partition_number=1,block_number=12\n")


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request, tmp_path_factory):
    """(family, HF folder, AX package, CPU bf16-boundaries package)."""
    from npuflow.convert import convert
    fam = request.param
    d = tmp_path_factory.mktemp(f"axvlm-{fam}")
    build = tinyvlm.build_tiny_idefics3 if fam == "idefics3" else tinyvlm.build_tiny_internvl
    src = build(d / "src")
    ax = convert(src, d / "ax", model_id=f"tiny-{fam}", layout="ax", prefill_len=P, kv_cache_len=KV)
    cpu = convert(src, d / "cpu", model_id=f"tiny-{fam}", bf16_boundaries=True)
    return fam, src, ax, cpu


def _tile_pixels(spec, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random RGB tiles (uint8 [n, S, S, 3]) and their pixels as the HF processors make them:
    byte * rescale_factor (float64, cast to float32), then (x - mean) / std in float32."""
    S, proc = spec.tile_size, spec.processor
    raw = np.random.default_rng(seed).integers(0, 256, (n, S, S, 3), dtype=np.uint8)
    x = (raw.astype(np.float64) * proc["rescale_factor"]).astype(np.float32).transpose(0, 3, 1, 2)
    mean = np.asarray(proc["image_mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(proc["image_std"], np.float32).reshape(1, 3, 1, 1)
    return raw, np.ascontiguousarray((x - mean) / std)


def _prompt(fam: str, src: pathlib.Path, spec) -> tuple[list[int], np.ndarray]:
    """A chat prompt with one single-tile image whose placeholders straddle a prefill chunk
    boundary; returns the ids and the placeholder positions."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids   # noqa: E731
    img = [spec.image_token_id] * spec.tokens_per_tile
    text = enc("Hello, what is in this picture? Please look at it closely and tell me, thank you.")
    if fam == "idefics3":
        t = spec.tokens
        marks = [tok.token_to_id(t["fake_image"]), tok.token_to_id(t["global_image"])]
        head = enc("<|im_start|>User:") + text
        tail = [tok.token_to_id(t["fake_image"])] + enc(" Describe it.<end_of_utterance>\nAssistant:")
    else:
        marks = [tok.token_to_id(spec.tokens["start"])]
        head = enc("<|im_start|>user\n") + text
        tail = [tok.token_to_id(spec.tokens["end"])] + enc("\nDescribe it.<|im_end|>\n<|im_start|>assistant\n")
    ids = head[:P - 2 - len(marks)] + marks + img + tail          # the image starts 2 before the chunk boundary
    rows = np.flatnonzero(np.asarray(ids) == spec.image_token_id)
    assert len(rows) == spec.tokens_per_tile and rows[0] < P <= rows[-1]      # across the first chunk boundary
    return ids, rows


def _greedy(engine, pieces, steps=STEPS):
    """Prefill the prompt in pieces [(ids, embeds)], then greedy decode; tokens and logits."""
    engine.release(0)
    for ids, embeds in pieces:
        logits = engine.prefill(0, ids, embeds=embeds)
    out, all_logits = [], []
    for _ in range(steps):
        all_logits.append(logits)
        out.append(int(np.argmax(logits)))
        logits = engine.decode([0], [out[-1]])[0]
    engine.release(0)
    return out, all_logits


@pytest.fixture(scope="module")
def engines(vlm):
    from npuflow.engine.cpu import CpuEngine
    from npuflow.engine.vision import open_vision_encoder
    fam, src, ax, cpu = vlm
    made = [AxEngine(ax, max_slots=1), open_vision_encoder(ax), CpuEngine(cpu, max_slots=1, context_length=KV),
            open_vision_encoder(cpu)]
    yield made
    for m in made:
        m.close()


def test_export_has_the_vendor_encoder_signature(vlm):
    fam, src, ax, cpu = vlm
    cfg = json.loads((ax.path / "config.json").read_text())
    assert cfg["filename_image_encoder_axmodel"] == ax.files["vision_model"] == ax.extra["ax"]["vision_file"]
    from npuflow.engine import ax_ort
    sess = ax_ort.InferenceSession(str(ax.file("vision_model")))   # what pyaxengine would declare
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    S = cpu.extra["vision"]["tile_size"]
    assert (inp.name, inp.dtype, inp.shape) == ("image", np.dtype(np.uint8), [1, S, S, 3])
    assert (out.name, out.dtype, out.shape) == ("output", np.dtype(np.float32), [1, 4, cpu.dims.hidden])
    with pytest.raises(AssertionError):                        # strict as pyaxengine: no batch of 2
        sess.run(None, {"image": np.zeros((2, S, S, 3), np.uint8)})
    v = ax.extra["vision"]
    assert v["input"]["layout"] == "NHWC" and v["input"]["dtype"] == "uint8"
    for key in ("family", "image_token", "image_token_id", "tile_size", "tokens_per_tile", "hidden", "tokens"):
        assert v[key] == cpu.extra["vision"][key]


def test_one_image_greedy_identical_to_the_bf16_cpu_twin(vlm, engines):
    fam, src, ax, cpu = vlm
    ax_eng, ax_enc, cpu_eng, cpu_enc = engines
    assert type(ax_enc) is AxVisionEncoder and ax_enc.layout == "NHWC"
    assert ax_enc.spec == cpu_enc.spec.__class__.from_manifest({**cpu_enc.spec.to_manifest(), "input": ax_enc.spec.input,
                                                                "output": ax_enc.spec.output})
    _, px = _tile_pixels(ax_enc.spec, 1)
    e_ax, e_cpu = ax_enc.encode(px), cpu_enc.encode(px)
    assert e_ax.shape == e_cpu.shape == (4, cpu.dims.hidden)
    assert np.array_equal(e_ax, e_cpu)             # the uint8 round trip and the graph's normalization are exact
    ids, rows = _prompt(fam, src, ax_enc.spec)
    ax_out, ax_logits = _greedy(ax_eng, [(ids, (rows, e_ax))])
    cpu_out, cpu_logits = _greedy(cpu_eng, [(ids, (rows, e_cpu))])
    assert ax_out == cpu_out
    assert all(np.array_equal(a, c) for a, c in zip(ax_logits, cpu_logits))
    text_only, _ = _greedy(ax_eng, [(ids, None)])  # the image changes the answer
    assert text_only != ax_out


def test_image_rows_survive_an_unaligned_append(vlm, engines):
    """A second prefill that starts inside the image's chunk re-runs that chunk: the AX engine
    feeds the image rows it kept, so the answer is the one-piece answer."""
    fam, src, ax, cpu = vlm
    ax_eng, ax_enc, cpu_eng, _ = engines
    _, px = _tile_pixels(ax_enc.spec, 1)
    emb = ax_enc.encode(px)
    ids, rows = _prompt(fam, src, ax_enc.spec)
    cut = int(rows[-1]) + 2                     # not a multiple of P: the next piece re-runs the chunk
    assert cut % P
    whole, _ = _greedy(ax_eng, [(ids, (rows, emb))])
    split, _ = _greedy(ax_eng, [(ids[:cut], (rows, emb)), (ids[cut:], None)])
    cpu_split, _ = _greedy(cpu_eng, [(ids[:cut], (rows, emb)), (ids[cut:], None)])
    assert split == whole == cpu_split
    ax_eng.release(0)                           # truncate forgets rows past the new length
    ax_eng.prefill(0, ids, embeds=(rows, emb))
    ax_eng.truncate(0, int(rows[0]))
    assert all(p < rows[0] for p in ax_eng._rows[0])
    ax_eng.release(0)


def _vendor_copy(ax_dir: pathlib.Path, src: pathlib.Path, dest: pathlib.Path, nested: bool = False) -> dict:
    """The AX export rearranged as the vendor ships it: LLM graphs at the top, the encoder under
    vit_axmodel/, config.json without npuflow's vision keys, the base model's HF files in a folder."""
    shutil.copytree(ax_dir, dest)
    cfg = json.loads((dest / "config.json").read_text())
    vision = cfg.pop("vision")
    (dest / "vit_axmodel").mkdir()
    for name in (cfg.pop("filename_image_encoder_axmodel"), "vision_model.onnx.data"):
        (dest / name).unlink()
    if nested:      # the base model's whole HF config (text model in text_config) plus ax-llm's keys
        hf = json.loads((src / "config.json").read_text())
        cfg = {**hf, **{k: cfg[k] for k in ("template_filename_axmodel", "axmodel_num", "filename_post_axmodel",
                                            "filename_tokens_embed", "tokens_embed_num", "tokens_embed_size")}}
    (dest / "config.json").write_text(json.dumps(cfg))
    base = dest / src.name
    base.mkdir()
    for f in ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.json"):
        if (src / f).is_file():
            shutil.copy(src / f, base / f)
    return vision


@pytest.mark.parametrize("layout,nested", [("NHWC", False), ("NCHW", True)])
def test_vendor_layout_package(vlm, tmp_path, layout, nested):
    from npuflow.convert.ax_vision_export import wrap_input
    from npuflow.engine.vision import open_vision_encoder
    fam, src, ax, cpu = vlm
    dest = tmp_path / "vendor"
    vision = _vendor_copy(ax.path, src, dest, nested)
    proc = vision["processor"]
    inner = onnx.load(str(cpu.file("vision_model")))             # the float NCHW encoder, weights inline
    onnx.save(wrap_input(inner, layout, proc["image_mean"], proc["image_std"], proc["rescale_factor"]),
              str(dest / "vit_axmodel" / f"tiny_{fam}_vit.onnx"))
    pkg = read_ax_package(dest)
    assert pkg.extra["ax"]["vision_file"] == f"vit_axmodel/tiny_{fam}_vit.onnx"
    assert (pkg.dims, pkg.eos_token_ids) == (ax.dims, ax.eos_token_ids)
    v = pkg.extra["vision"]                                      # read from the base model's HF files
    assert v["image_token_id"] == vision["image_token_id"] and v["family"] == fam
    enc = open_vision_encoder(pkg)
    try:
        assert isinstance(enc, AxVisionEncoder) and enc.layout == layout
        assert enc.spec.input["dtype"] == ("uint8" if layout == "NHWC" else "float32")
        assert (enc.spec.tile_size, enc.spec.tokens_per_tile, enc.spec.hidden) == (
            vision["tile_size"], vision["tokens_per_tile"], vision["hidden"])
        _, px = _tile_pixels(enc.spec, 3, seed=1)                # three tiles through a batch-1 graph
        ref = open_vision_encoder(cpu)
        try:
            assert np.array_equal(enc.encode(px), ref.encode(px))
        finally:
            ref.close()
    finally:
        enc.close()


def test_uint8_round_trip_is_exact(vlm):
    from npuflow.engine.ax_vision import normalization, to_bytes
    fam, src, ax, cpu = vlm
    from npuflow.vision import VisionSpec
    spec = VisionSpec.from_manifest(cpu.extra["vision"])
    raw, px = _tile_pixels(spec, 2, seed=3)
    assert np.array_equal(to_bytes(px, *normalization(ax.extra["vision"]), "NHWC"), raw)


def test_cmm_check_counts_the_encoder(vlm, tmp_path):
    fam, src, ax, cpu = vlm
    a = ax.extra["ax"]
    text_kb = sum((ax.path / f).stat().st_size for f in [*a["layer_files"], a["post_file"]]) // 1024
    assert a["vision_kb"] > 0 and a["cmm_kb"] == text_kb + a["vision_kb"] and a["cmm_estimated"]
    info = tmp_path / "cmm"
    info.write_text(_cmm(a["cmm_kb"] - 1))                      # room for the LLM, not for LLM + encoder
    with pytest.raises(CmmError, match="needs about"):
        AxEngine(ax, max_slots=1, cmm_info=str(info))
    info.write_text(_cmm(a["vision_kb"] - 1))
    with pytest.raises(CmmError, match="the vision encoder needs"):
        AxVisionEncoder(ax, cmm_info=str(info))
    info.write_text(_cmm(a["vision_kb"] + 1))
    AxVisionEncoder(ax, cmm_info=str(info)).close()


def test_embeds_are_checked(vlm, engines):
    from npuflow.engine.base import EngineError
    ax_eng = engines[0]
    H = vlm[2].dims.hidden
    ax_eng.release(0)
    for bad in [(np.array([3]), np.zeros((1, H + 1), np.float32)), (np.array([5]), np.zeros((1, H), np.float32)),
                (np.array([0, 0]), np.zeros((2, H), np.float32)), (np.array([0.5]), np.zeros((1, H), np.float32))]:
        with pytest.raises(EngineError):
            ax_eng.prefill(0, [1, 2, 3], embeds=bad)
        assert ax_eng.length(0) == 0 and not ax_eng._rows[0]


def test_build_ax_vision_follows_the_model_settings(vlm):
    """The worker's AX builder opens the encoder on the model's provider, with simulated timing:
    each tile takes the published AX650N encoder time."""
    import time
    from types import SimpleNamespace
    from npuflow.engine.ax_build import build_ax_vision
    from npuflow.engine.ax_runtime import AXCLRT
    from npuflow.engine.ax_vision import VISION_TILE_S
    fam, src, ax, cpu = vlm
    model = SimpleNamespace(device_id=0, ax_provider=AXCLRT, threads=1, simulate_timing="ax650n")
    enc = build_ax_vision(ax, model, cmm_info="/nonexistent")
    try:
        assert enc._sess.wrapped.get_providers() == AXCLRT
        _, px = _tile_pixels(enc.spec, 2)
        t0 = time.perf_counter()
        enc.encode(px)
        took = time.perf_counter() - t0
        assert 2 * VISION_TILE_S["ax650n"] <= took < 2 * VISION_TILE_S["ax650n"] + 0.2
        assert enc.clock.runs == 2
    finally:
        enc.close()
    assert build_ax_vision(read_ax_package(tinyvlm_text_only(ax.path.parent)), model) is None


def tinyvlm_text_only(where: pathlib.Path) -> pathlib.Path:
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from ax_tiny import write_tiny
    root = where / "text-only"
    return root if root.is_dir() else write_tiny(root)


def _png(seed: int, size) -> bytes:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _scheduler(engine, encoder, pkg):
    from npuflow.llm_worker.detok import load_token_table
    from npuflow.llm_worker.request import ModelLimits
    from npuflow.llm_worker.scheduler import Scheduler
    limits = ModelLimits("tiny", engine.vocab_size, engine.context_length, tuple(pkg.eos_token_ids), {},
                         vision=encoder.spec)
    return Scheduler(engine, load_token_table(pkg.tokenizer_path, engine.vocab_size), limits, max_queue=4,
                     vision=encoder)


def _answer(sched, ids, images, rid, steps=STEPS):
    import time
    from npuflow.v1 import common_pb2, worker_pb2
    msg = worker_pb2.GenerateRequest(request_id=rid, model="tiny", prompt_token_ids=ids, images=images,
                                     sampling=common_pb2.SamplingParams(max_tokens=steps, temperature=0.0,
                                                                        ignore_eos=True))
    sched.submit(msg, b"p")
    events, end = [], time.monotonic() + 120
    while (sched.requests or sched.has_work) and time.monotonic() < end:
        if not sched.has_work:
            time.sleep(0.002)
            continue
        events += [ev for _, ev in sched.step()]
    assert not sched.requests and not events[-1].error.message, events[-1].error.message
    return [t for ev in events for t in ev.token_ids], events[-1]


def test_worker_answers_image_requests_like_the_bf16_cpu_twin(vlm):
    """Through the worker's scheduler (real image decoding, tiling and preprocessing, encoding
    tile by tile, prefill in pieces): two images of several tiles each, then the same request
    again (prefix reuse), on the AX engine and on the CPU twin: the same tokens."""
    from tokenizers import Tokenizer
    from npuflow.engine.cpu import CpuEngine
    from npuflow.engine.vision import open_vision_encoder
    from npuflow.v1 import worker_pb2
    from npuflow.vision import VisionSpec, image_prompt, tile_count
    fam, src, ax, cpu = vlm
    spec = VisionSpec.from_manifest(cpu.extra["vision"])
    tok = Tokenizer.from_file(str(cpu.tokenizer_path))
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids   # noqa: E731
    ids, images = enc("User: compare"), []
    for i, size in enumerate([(60, 45), (40, 50)]):
        span = enc(image_prompt(spec, *size, "auto"))
        images.append(worker_pb2.ImageInput(data=_png(10 + i, size), detail="auto", start=len(ids),
                                            end=len(ids) + len(span), param=f"messages[0].content[{i}]"))
        ids += span
    ids += enc(" What differs?")
    assert tile_count(spec, 60, 45, "auto") > 1 and len(ids) + STEPS <= KV
    answers = []
    for eng, venc, pkg in ((AxEngine(ax, max_slots=2), open_vision_encoder(ax), ax),
                           (CpuEngine(cpu, max_slots=2, context_length=KV), open_vision_encoder(cpu), cpu)):
        sched = _scheduler(eng, venc, pkg)
        try:
            first, _ = _answer(sched, ids, images, "a")
            again, last = _answer(sched, ids, images, "b")
            answers.append(first)
            assert again == first and last.cached_prompt_tokens > images[0].start
        finally:
            sched.close()
            eng.close()
            venc.close()
    assert answers[0] == answers[1] and len(answers[0]) == STEPS
