"""Write a ModelSpec as a model package directory (graph, embedding table, tokenizer, manifest)."""
from __future__ import annotations

import pathlib
import time
from typing import Any, Callable

import numpy as np
import onnx

from ..models.cache import sha256_file
from ..models.package import write_manifest
from .graph import build_graph
from .spec import ModelSpec
from .weights import CONVERTER_VERSION

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
KV_INT8_FILE = "model.kv_int8.onnx"
VISION_FILE = "vision.onnx"
VISION_DATA_FILE = "vision.onnx.data"


def write_package(spec: ModelSpec, root: pathlib.Path, *, model_id: str, source: dict[str, Any],
                  progress: Callable[[str, int], None], accuracy_level: int = 4,
                  bf16_boundaries: bool = False, int8_vision: bool = False, kv_int8: bool = True) -> None:
    """Fill the (empty) directory root; the manifest goes last. int8_vision: the vision encoder's
    MatMuls take int8 weights (per output channel) and int8 activations (per tensor, scaled at
    run time), which onnxruntime runs on the CPU's int8 units (see _quantize_vision). kv_int8:
    also write the graph with an int8 KV cache (files["model_kv_int8"], per-channel scales
    calibrated on the model, kv_int8.py), which reads the same weights file as the float32 one."""
    files: dict[str, str] = {"model": MODEL_FILE, "model_data": DATA_FILE, "tokenizer": "tokenizer.json"}
    (root / "tokenizer.json").write_text(spec.tokenizer_json, encoding="utf-8")

    progress("embedding", 0)
    emb = spec.embedding()
    emb_bits = emb.bits
    if emb.quantized:
        arrays = {"packed": emb.packed, "scales": emb.scales}
        if emb.zero_points is not None:
            arrays["zero_points"] = emb.zero_points
    else:
        arrays = {"weight": emb.weight}
    for key, arr in arrays.items():
        name = f"embedding.{key}.npy"
        np.save(root / name, np.ascontiguousarray(arr))
        files[f"embedding.{key}"] = name
    del emb, arrays

    model = build_graph(spec, lambda what, pct: progress(what, pct), accuracy_level, bf16_boundaries=bf16_boundaries)
    scales = _calibrate_kv(spec, model, root, files, emb_bits, progress) if kv_int8 else None
    progress("writing graph", 100)
    onnx.save(model, str(root / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
              location=DATA_FILE, size_threshold=1024)
    if scales is not None:      # the saved model now refers to DATA_FILE for its weights
        from .kv_int8 import apply_int8_kv
        apply_int8_kv(model, scales)
        onnx.save(model, str(root / KV_INT8_FILE))
        files["model_kv_int8"] = KV_INT8_FILE
    del model
    vision = _write_vision(spec, root, progress, files, int8_vision)

    root.chmod(0o755)
    for f in root.iterdir():
        f.chmod(0o644)
    checksums = {name: {"size": (root / name).stat().st_size, "sha256": sha256_file(root / name)}
                 for name in sorted(set(files.values()))}
    write_manifest(root, {
        "id": model_id,
        "architecture": spec.architecture,
        "engine": "cpu",
        "dims": spec.dims(),
        "context_length": spec.context_length,
        "eos_token_ids": spec.eos_token_ids,
        "bos_token_id": spec.bos_token_id,
        "chat_template": spec.chat_template,
        "sampling_defaults": {},
        "files": files,
        "created": int(time.time()),
        "source": source,
        "graph": {"rope_theta": spec.rope_theta, "rotary_interleaved": spec.rotary_interleaved,
                  "rms_eps": spec.rms_eps, "accuracy_level": accuracy_level, "embedding": {"bits": emb_bits},
                  "bf16_boundaries": bf16_boundaries, "converter_version": CONVERTER_VERSION},
        "checksums": checksums,
        **({"vision": vision} if vision is not None else {}),
    })


def _calibrate_kv(spec: ModelSpec, model, root: pathlib.Path, files: dict[str, str], emb_bits: int,
                  progress: Callable[[str, int], None]) -> list:
    """Per-channel K/V scales of every layer, measured on the float32-cache graph."""
    from ..engine.embedding import EmbeddingTable
    from .kv_int8 import calibrate, calibration_ids
    progress("calibrating int8 KV", 100)
    table = EmbeddingTable({k.removeprefix("embedding."): root / v for k, v in files.items()
                            if k.startswith("embedding.")}, emb_bits)
    ids = [i for i in calibration_ids(spec.tokenizer_json, spec.chat_template) if i < spec.vocab]
    return calibrate(model, lambda t: table.lookup(np.asarray(t, np.int64)), ids, kv_heads=spec.kv_heads,
                     head_dim=spec.head_dim, rope_theta=spec.rope_theta, interleaved=spec.rotary_interleaved)


def _write_vision(spec: ModelSpec, root: pathlib.Path, progress: Callable[[str, int], None],
                  files: dict[str, str], int8: bool = False) -> dict[str, Any] | None:
    """A VLM source's vision encoder (+ projector) as its own graph, vision.onnx with external
    data vision.onnx.data; returns the manifest's "vision" section (None for a text model)."""
    v = spec.extra.get("vision")
    if not v:
        return None
    from .vision_graph import build_vision_graph

    model = build_vision_graph(v["family"], v["config"], v["get"], lambda what, pct: progress(what, pct))
    progress("writing vision graph", 100)
    onnx.save(model, str(root / VISION_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
              location=VISION_DATA_FILE, size_threshold=1024)
    del model
    if not (root / VISION_DATA_FILE).exists():      # every initializer was small enough to stay inline
        (root / VISION_DATA_FILE).write_bytes(b"")
    files["vision_model"], files["vision_model_data"] = VISION_FILE, VISION_DATA_FILE
    section = dict(v["section"])
    if int8:
        progress("quantizing vision graph", 100)
        _quantize_vision(root, files)
    section["weights"] = "int8" if int8 else "float32"
    return section


def _quantize_vision(root: pathlib.Path, files: dict[str, str]) -> None:
    """Replace vision.onnx by onnxruntime's dynamic int8 quantization of its MatMuls (weights
    int8 per channel; activations quantized per tensor at run time: DynamicQuantizeLinear +
    MatMulInteger). Attention and the norms stay float32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, out = root / VISION_FILE, root / ("int8." + VISION_FILE)
    quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], use_external_data_format=True,
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    src.unlink()
    (root / VISION_DATA_FILE).unlink()
    data = out.name + ".data"                 # the external data file name the quantized graph holds
    if not (root / data).exists():
        (root / data).write_bytes(b"")
    files["vision_model"], files["vision_model_data"] = out.name, data

