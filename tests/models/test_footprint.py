"""footprint(model, cache_dir): the sums for each engine and pool, read from packages or estimated
from sources that are not converted yet (checked against what the converter really writes)."""
import os
import pathlib
import shutil

import pytest

from model_dirs import DIMS, gguf_file, hf_folder, pulsar2_dir, sized_package, stackflow_dir
from npuflow.config import ModelSettings
from npuflow.models import footprint as F
from npuflow.models.default import DEFAULT_MODEL_ID, GGUF_MEMBER, GGUF_SHA256
from npuflow.models.footprint import RUNTIME_BYTES, footprint, gguf_sizes, has_npu_memory, hf_sizes
from npuflow.models.package import PackageError, load_package

NO_NPU = {"cmm_info": "/nonexistent/mem_cmm_info", "smi": "no-such-axcl-smi"}


def _kv(layers, kv_heads, head_dim, positions, slots, dtype_bytes):
    return layers * 2 * kv_heads * head_dim * positions * slots * dtype_bytes


def _files(pkg_dir):
    pkg = load_package(pkg_dir)
    return sum((pkg.path / n).stat().st_size for n in set(pkg.files.values()))


def test_cpu_package_sum(tmp_path):
    pkg = sized_package(tmp_path / "p", "p", {"model": 1000, "model_data": 50_000, "tokenizer": 300,
                                              "embedding.packed": 2000, "vision_model": 7000,
                                              "vision_model_data": 9000}, context_length=1024)
    model = ModelSettings(id="p", source=str(pkg), context_length=2048, max_batch=3)
    fp = footprint(model, tmp_path / "cache", **NO_NPU)
    kv = _kv(DIMS["layers"], DIMS["kv_heads"], DIMS["head_dim"], 1024 + 1, 3, 4)   # float32, context + 1 positions
    assert fp.parts == {"weights": 53_300, "vision": 16_000, "kv": kv, "runtime": RUNTIME_BYTES}
    assert fp.bytes == sum(fp.parts.values()) and fp.pool == "ram" and not fp.estimated
    small = footprint(ModelSettings(id="p", source=str(pkg), context_length=256, max_batch=1), tmp_path, **NO_NPU)
    assert small.parts["kv"] == _kv(DIMS["layers"], DIMS["kv_heads"], DIMS["head_dim"], 257, 1, 4)
    assert "vision" not in footprint(ModelSettings(id="q", source=str(sized_package(
        tmp_path / "q", "q", {"model": 10, "tokenizer": 5}))), tmp_path, **NO_NPU).parts


def test_the_kv_is_what_the_cpu_engine_allocates(tmp_path):
    """The count matches the buffers CpuEngine makes (tests/models tiny GGUF, converted)."""
    from npuflow.convert import convert
    from npuflow.engine.cpu import CpuEngine
    pkg = convert(gguf_file(tmp_path / "t.gguf"), tmp_path / "pkg", model_id="t")
    eng = CpuEngine(pkg, max_slots=3, context_length=100, threads=1)
    try:
        allocated = sum(k.nbytes + v.nbytes for k, v in eng._kv)
    finally:
        eng.close()
    fp = footprint(ModelSettings(id="t", source=str(pkg.path), context_length=100, max_batch=3), tmp_path, **NO_NPU)
    assert fp.parts["kv"] == allocated


@pytest.mark.parametrize("qtype,embed", [("Q4_0", None), ("Q4_1", None), ("Q8_0", None), ("F32", None),
                                         ("F16", None), ("Q4_1", "Q8_0"), ("Q4_0", "Q4_1")])
def test_gguf_estimate_is_close_to_the_converted_package(tmp_path, qtype, embed):
    from npuflow.convert import convert
    src = gguf_file(tmp_path / "t.gguf", "qwen2" if qtype == "Q4_1" else "llama", qtype, embed)
    pkg = convert(src, tmp_path / "pkg", model_id="t")
    est = gguf_sizes(src)
    real = _files(pkg.path)
    assert abs(est.weights - real) / real < 0.1, (est.weights, real)     # tiny: the graph and tokenizer guesses weigh
    d = pkg.dims
    assert (est.layers, est.kv_heads, est.head_dim) == (d.layers, d.kv_heads, d.head_dim)
    assert est.context == pkg.context_length


def test_gguf_estimate_of_the_default_model(default_package):
    """The downloaded default GGUF against its converted package: within 0.1 %."""
    src = pathlib.Path(default_package.extra["source"]["path"])
    assert src.name == pathlib.PurePath(GGUF_MEMBER).name
    est, real = gguf_sizes(src).weights, _files(default_package.path)
    assert abs(est - real) / real < 0.001, (est, real)


def test_hf_estimate_is_close_to_the_converted_package(tmp_path):
    from npuflow.convert import convert
    src = hf_folder(tmp_path / "ckpt", "qwen3")
    pkg = convert(src, tmp_path / "pkg", model_id="h")
    est = hf_sizes(src)
    real = _files(pkg.path)
    assert abs(est.weights - real) / real < 0.1, (est.weights, real)
    assert est.vision == 0 and (est.layers, est.kv_heads, est.head_dim) == (pkg.dims.layers, pkg.dims.kv_heads,
                                                                             pkg.dims.head_dim)


@pytest.mark.parametrize("family", ["idefics3", "internvl"])
def test_hf_vision_language_estimate_splits_the_vision_encoder(tmp_path, family):
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "vision"))
    import tinyvlm
    from npuflow.convert import convert
    src = getattr(tinyvlm, f"build_tiny_{family}")(tmp_path / "ckpt")
    pkg = load_package(convert(src, tmp_path / "pkg", model_id="v").path)
    est, real = hf_sizes(src), F._package_sizes(pkg)
    assert abs(est.weights - real.weights) / real.weights < 0.05, (est, real)
    assert abs(est.vision - real.vision) / real.vision < 0.1, (est, real)
    fp = footprint(ModelSettings(id="v", source=str(src)), tmp_path / "cache", **NO_NPU)
    assert fp.estimated and fp.parts["vision"] == est.vision


def test_a_source_converted_in_the_cache_is_read_from_its_package(tmp_path):
    from npuflow.models.resolve import resolve_model
    src = gguf_file(tmp_path / "src" / "t.gguf")
    cache = tmp_path / "cache"
    model = ModelSettings(id="t", source=str(src))
    before = footprint(model, cache, **NO_NPU)
    assert before.estimated
    pkg = resolve_model(str(src), cache, "t")
    after = footprint(model, cache, **NO_NPU)
    assert not after.estimated and after.parts["weights"] == _files(pkg.path)
    assert footprint(ModelSettings(id="other", source=str(src)), cache, **NO_NPU).estimated   # another id: its own
    future = pkg.created + 10
    os.utime(src, (future, future))                         # the source changed since: converted again on load
    assert footprint(model, cache, **NO_NPU).estimated
    hf = hf_folder(tmp_path / "src" / "ckpt")
    resolve_model(str(hf), cache, "h")
    assert not footprint(ModelSettings(id="h", source=str(hf)), cache, **NO_NPU).estimated


def _default_folder(cache):
    return cache / "models" / f"{DEFAULT_MODEL_ID}-{GGUF_SHA256[:16]}"


def test_default_model_from_its_cache_folder_its_download_or_known_figures(tmp_path):
    cache = tmp_path / "cache"
    model = ModelSettings()                                  # source "default", context 2048, 8 slots
    known = footprint(model, cache, **NO_NPU)                # nothing downloaded yet
    d = F.DEFAULT_DIMS
    assert known.estimated and known.parts == {"weights": F.DEFAULT_FILES_BYTES, "runtime": RUNTIME_BYTES,
                                               "kv": _kv(d["layers"], d["kv_heads"], d["head_dim"], 2049, 8, 4)}
    (cache / "downloads").mkdir(parents=True)
    shutil.copy(gguf_file(tmp_path / "t.gguf"), cache / "downloads" / os.path.basename(GGUF_MEMBER))
    downloaded = footprint(model, cache, **NO_NPU)
    assert downloaded.estimated and downloaded.parts["weights"] == gguf_sizes(tmp_path / "t.gguf").weights
    sized_package(_default_folder(cache), DEFAULT_MODEL_ID, {"model": 123, "tokenizer": 4})
    converted = footprint(model, cache, **NO_NPU)
    assert not converted.estimated and converted.parts["weights"] == 127


def test_ax_stand_in_on_a_pc_counts_ram_with_bf16_kv(tmp_path):
    from ax_tiny import C, H, LAYERS
    d = pulsar2_dir(tmp_path / "ax")
    fp = footprint(ModelSettings(id="ax", source=str(d), engine="ax", max_batch=2), tmp_path, **NO_NPU)
    pkg_files = sum(f.stat().st_size for f in d.iterdir()
                    if f.suffix in (".onnx", ".bin") or f.name == "tokenizer.json")
    assert fp.pool == "ram" and not fp.estimated
    assert fp.parts == {"weights": pkg_files, "kv": LAYERS * 2 * 2 * C * H * 2, "runtime": RUNTIME_BYTES}


@pytest.fixture
def board(tmp_path):
    cmm = tmp_path / "mem_cmm_info"
    cmm.write_text("total size=3145728KB(3072MB),used=18876KB(18MB + 444KB),remain=3126852KB(3053MB + 612KB)\n")
    return {"cmm_info": str(cmm), "smi": "no-such-axcl-smi"}


def test_ax_on_a_board_counts_cmm_size(tmp_path, board):
    d = stackflow_dir(tmp_path / "sf", "sf", cmm_kb=1000)
    fp = footprint(ModelSettings(id="sf", source=str(d), engine="ax"), tmp_path, **board)
    assert fp == F.Footprint(1000 * 1024, "cmm", {"cmm_size": 1000 * 1024}, False)
    assert footprint(ModelSettings(id="sf", source=str(d), engine="ax"), tmp_path, **NO_NPU).pool == "ram"


def test_ax_without_cmm_size_is_estimated_from_its_graphs(tmp_path, board):
    d = stackflow_dir(tmp_path / "sf", "sf", cmm_kb=None, graph_bytes=10 * 1024, vision_bytes=5 * 1024)
    fp = footprint(ModelSettings(id="sf", source=str(d), engine="ax"), tmp_path, **board)
    assert fp.estimated and fp.pool == "cmm"
    assert fp.parts == {"weights": 30 * 1024, "vision": 5 * 1024} and fp.bytes == 35 * 1024


def test_ax_stand_in_graphs_run_on_the_cpu_even_on_a_board(tmp_path, board):
    d = pulsar2_dir(tmp_path / "ax")
    assert footprint(ModelSettings(id="ax", source=str(d), engine="ax"), tmp_path, **board).pool == "ram"


def test_has_npu_memory(tmp_path, board, monkeypatch):
    assert has_npu_memory("", **board) and has_npu_memory("AxEngineExecutionProvider", **board)
    assert not has_npu_memory("AXCLRTExecutionProvider", **board)       # the card's memory, not the board's
    assert not has_npu_memory("", **NO_NPU)
    smi = tmp_path / "bin" / "axcl-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}:/usr/bin:/bin")
    card = {"cmm_info": NO_NPU["cmm_info"], "smi": "axcl-smi"}
    assert has_npu_memory("", **card) and has_npu_memory("AXCLRTExecutionProvider", **card)
    assert not has_npu_memory("AxEngineExecutionProvider", **card)


def test_a_missing_source_is_a_package_error(tmp_path):
    with pytest.raises(PackageError, match="not found"):
        footprint(ModelSettings(id="x", source=str(tmp_path / "none.gguf")), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match="not a .gguf file, a checkpoint folder or a package"):
        footprint(ModelSettings(id="x", source=str(tmp_path / "empty")), tmp_path)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(PackageError, match="not a readable GGUF file"):
        footprint(ModelSettings(id="x", source=str(bad)), tmp_path)


def test_a_converted_entry_counts_only_for_its_own_int8_setting(tmp_path):
    """An embedding source converted with int8 projections only: a model with `int8 = true` is
    read off that entry, one without it is still an estimate (its float32 entry is not there)."""
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))
    import embed_ckpt
    from npuflow.models.resolve import resolve_model
    src = embed_ckpt.write_bert(tmp_path / "bert")
    cache = tmp_path / "cache"
    fast = resolve_model(str(src), cache, "b", int8=True)
    with_int8 = footprint(ModelSettings(id="b", source=str(src), int8=True), cache, **NO_NPU)
    assert not with_int8.estimated and with_int8.parts["weights"] == F._package_sizes(fast).weights
    assert F.converted_package(src, cache, "b") is None
    assert footprint(ModelSettings(id="b", source=str(src)), cache, **NO_NPU).estimated
    exact = resolve_model(str(src), cache, "b")
    assert F.converted_package(src, cache, "b").path == exact.path
    assert F.converted_package(src, cache, "b", int8=True).path == fast.path
