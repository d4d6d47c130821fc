"""Write an EmbedSpec as an embedding model package: graph, tokenizer, manifest.

The manifest's "embedding" section is what the worker and the gateway read:
  "embedding": {"pooling": "mean" | "cls" | "last", "normalize": bool, "dimensions": D,
                "matryoshka": bool,      # `dimensions` < D may be asked (truncate, re-normalise)
                "query_format": "...",   # how `instruction` and a text become a query ("" = none)
                "weights": "float32" | "int8"}
With int8 the graph's MatMuls are onnxruntime's dynamic int8 quantization (weights int8 per
output channel, activations quantized per tensor at run time): about twice as fast on a CPU with
int8 units, and no longer exact (cosine to the float32 package about 0.9995 on random weights).
An embedding package has no chat template and no EOS ids: it never generates.
"""
from __future__ import annotations

import pathlib
import time
from typing import Any, Callable

import onnx

from ..models.cache import sha256_file
from ..models.package import write_manifest
from .embed_graph import build_embed_graph
from .embed_source import EmbedSpec
from .weights import CONVERTER_VERSION

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


def write_embed_package(spec: EmbedSpec, root: pathlib.Path, *, model_id: str, source: dict[str, Any],
                        progress: Callable[[str, int], None], int8: bool = False) -> None:
    """Fill the (empty) directory root; the manifest goes last."""
    files = {"model": MODEL_FILE, "model_data": DATA_FILE, "tokenizer": "tokenizer.json"}
    (root / "tokenizer.json").write_text(spec.tokenizer_json, encoding="utf-8")
    model = build_embed_graph(spec, progress)
    progress("writing graph", 100)
    onnx.save(model, str(root / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
              location=DATA_FILE, size_threshold=1024)
    del model
    if not (root / DATA_FILE).exists():
        (root / DATA_FILE).write_bytes(b"")
    if int8:
        progress("quantizing graph", 100)
        _quantize(root, files)
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
        "eos_token_ids": [],
        "bos_token_id": None,
        "chat_template": "",
        "sampling_defaults": {},
        "files": files,
        "created": int(time.time()),
        "source": source,
        "graph": {"eps": spec.eps, "rope_theta": spec.rope_theta, "converter_version": CONVERTER_VERSION},
        "checksums": checksums,
        "embedding": {"pooling": spec.pooling, "normalize": spec.normalize, "dimensions": spec.hidden,
                      "matryoshka": spec.matryoshka, "query_format": spec.query_format,
                      "weights": "int8" if int8 else "float32"},
    })


def _quantize(root: pathlib.Path, files: dict[str, str]) -> None:
    """Replace the graph by onnxruntime's dynamic int8 quantization of its MatMuls with constant
    weights (the projections; attention's MatMuls and the embedding tables stay float32)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = root / ("int8." + MODEL_FILE)
    quantize_dynamic(str(root / MODEL_FILE), str(out), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], use_external_data_format=True,
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    (root / MODEL_FILE).unlink()
    (root / DATA_FILE).unlink()
    data = out.name + ".data"
    if not (root / data).exists():
        (root / data).write_bytes(b"")
    files["model"], files["model_data"] = out.name, data
