"""`npuflow convert SOURCE OUT`: a GGUF file or a Hugging Face safetensors folder (llama, qwen2,
qwen3; vision-language: idefics3 / SmolVLM, internvl; embedding models: BERT-family sentence
encoders, Qwen3-Embedding) -> a model package for the CPU engine (see
npuflow/models/package.py). A vision-language package also holds the vision encoder graph
(vision.onnx) and the manifest's "vision" section.

The package is written into a temporary directory beside OUT and renamed into place when
complete, so a crash never leaves a half package at OUT.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time

from ..logs import get_logger, setup_logging
from ..models.package import ModelPackage, load_package
from .spec import ARCHITECTURES, ConvertError, ModelSpec

__all__ = ["convert", "main", "ConvertError", "read_source", "ARCHITECTURES"]

log = get_logger("convert")


def read_source(source: str | os.PathLike) -> tuple[ModelSpec, dict]:
    """The ModelSpec of a GGUF file or HF checkpoint folder, and a description of the source."""
    from ..models.cache import sha256_file

    path = pathlib.Path(source).expanduser().resolve()
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ConvertError(f"{path}: not a GGUF file (no GGUF magic) and not a checkpoint folder")
        from .gguf_source import read_gguf
        return read_gguf(path), {"path": str(path), "format": "gguf", "sha256": sha256_file(path)}
    if path.is_dir() and (path / "config.json").is_file():
        from .hf_source import folder_digest, read_hf
        return read_hf(path), {"path": str(path), "format": "safetensors", "sha256": folder_digest(path)}
    raise ConvertError(f"{path}: not a .gguf file or a folder with config.json")


def _default_id(source: pathlib.Path) -> str:
    name = source.stem if source.is_file() else source.name
    name = re.sub(r"[^A-Za-z0-9._:-]+", "-", name).strip("-.").lower()
    return name or "model"


def convert(source: str | os.PathLike, out: str | os.PathLike, *, model_id: str | None = None,
            overwrite: bool = False, float_activations: bool = False, layout: str = "cpu",
            prefill_len: int = 128, kv_cache_len: int = 1024, bf16_boundaries: bool = False,
            int8_vision: bool = False, int8: bool = False) -> ModelPackage:
    """Convert SOURCE into a package at OUT and return it. Raises ConvertError (one line) for an
    unsupported architecture / tensor type / tokenizer, or when OUT exists (unless overwrite).
    Quantized projections quantize their activations to int8 per block of 32 (as llama.cpp does)
    unless float_activations, which is exact to the dequantized weights and slower.
    layout "ax" writes the pulsar2 directory layout instead (per-layer ONNX graphs with the AX
    signature, see ax_export.py) with the given prefill and KV cache lengths.
    bf16_boundaries (layout "cpu"): round to bf16 where the AX graphs do (graph.build_graph), so
    the CPU engine computes what the AX export of the same source computes.
    int8_vision (layout "cpu", vision-language sources): quantize the vision encoder's MatMuls to
    int8 (about 2.3x faster on a CPU with int8 units; the image embeddings are then no longer
    transformers' to 1e-4).
    A "cpu" package also holds the graph with an int8 KV cache (kv_int8.py), unless
    float_activations or bf16_boundaries, which are there to be exact.
    An embedding checkpoint (a BERT-family sentence encoder, Qwen3-Embedding: embed_source.py)
    becomes an embedding package (embed_writer.py); int8 quantizes its projections (faster, no
    longer exact). int8 is refused for other sources."""
    src = pathlib.Path(source).expanduser().resolve()
    out = pathlib.Path(out).expanduser().resolve()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConvertError(f"{out} already exists (pass overwrite to replace it)")
    t0 = time.monotonic()
    log.info("convert start", source=str(src), out=str(out))
    mid = model_id or _default_id(src)
    from .embed_source import is_embedding_folder
    if src.is_dir() and is_embedding_folder(src):
        if layout == "ax":
            raise ConvertError(f"{src}: an embedding model converts for the CPU engine only (no --layout ax)")
        return _convert_embedding(src, out, mid, t0, int8)
    if int8:
        raise ConvertError(f"{src}: --int8 is for embedding models (a language model's graph is quantized from its GGUF)")
    spec, source_info = read_source(src)
    log.info("source read", architecture=spec.architecture, layers=spec.layers, hidden=spec.hidden,
             vocab=spec.vocab, vision=(spec.extra.get("vision") or {}).get("family"),
             seconds=round(time.monotonic() - t0, 2))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    last = [-1]

    def progress(what: str, pct: int) -> None:
        if pct // 10 != last[0] // 10 or what in ("embedding", "writing graph", "writing vision graph"):
            log.info("convert progress", step=what, percent=pct)
            last[0] = pct

    try:
        if layout == "ax":
            from .ax_export import write_ax_layout
            write_ax_layout(spec, tmp, model_id=mid, kv_len=kv_cache_len, prefill_len=prefill_len,
                            progress=progress, accuracy_level=0 if float_activations else 4)
        else:
            from .package_writer import write_package
            write_package(spec, tmp, model_id=mid, source=source_info, progress=progress,
                          accuracy_level=0 if float_activations else 4, bf16_boundaries=bf16_boundaries,
                          int8_vision=int8_vision, kv_int8=not (float_activations or bf16_boundaries))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if layout == "ax":
        from ..models.ax_package import read_ax_package
        pkg = read_ax_package(out, mid)
    else:
        pkg = load_package(out)
    log.info("convert done", model=pkg.id, out=str(out), seconds=round(time.monotonic() - t0, 2))
    return pkg


def _convert_embedding(src: pathlib.Path, out: pathlib.Path, mid: str, t0: float, int8: bool) -> ModelPackage:
    """An embedding checkpoint (BERT-family encoder, Qwen3-Embedding) -> an embedding package."""
    from .embed_source import read_embed_hf
    from .embed_writer import write_embed_package
    from .hf_source import folder_digest
    spec = read_embed_hf(src)
    log.info("source read", architecture=spec.architecture, layers=spec.layers, hidden=spec.hidden,
             vocab=spec.vocab, pooling=spec.pooling, normalize=spec.normalize, seconds=round(time.monotonic() - t0, 2))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_embed_package(spec, tmp, model_id=mid, progress=lambda what, pct: None, int8=int8,
                            source={"path": str(src), "format": "safetensors", "sha256": folder_digest(src)})
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pkg = load_package(out)
    log.info("convert done", model=pkg.id, out=str(out), seconds=round(time.monotonic() - t0, 2))
    return pkg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="npuflow convert", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a .gguf file or a Hugging Face safetensors folder")
    p.add_argument("out", help="the package directory to create")
    p.add_argument("--id", dest="model_id", default=None, help="model id in the manifest (default: from the source name)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--float-activations", action="store_true",
                   help="keep activations float32 in quantized projections (exact, slower)")
    p.add_argument("--layout", choices=("cpu", "ax"), default="cpu",
                   help="cpu: a package for the CPU engine; ax: the pulsar2 layout (per-layer ONNX graphs with the AX signature)")
    p.add_argument("--prefill-len", type=int, default=128, help="--layout ax: tokens per prefill chunk")
    p.add_argument("--kv-cache-len", type=int, default=1024, help="--layout ax: KV cache positions (context length)")
    p.add_argument("--bf16-boundaries", action="store_true",
                   help="--layout cpu: round to bf16 where the AX NPU graphs do (the CPU twin of an --layout ax export)")
    p.add_argument("--int8-vision", action="store_true",
                   help="--layout cpu, vision-language sources: int8 vision encoder (faster; embeddings no longer exact)")
    p.add_argument("--int8", action="store_true",
                   help="embedding models: int8 projections (about 2x faster on a CPU; vectors no longer exact)")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    try:
        convert(args.source, args.out, model_id=args.model_id, overwrite=args.force,
                float_activations=args.float_activations, layout=args.layout, prefill_len=args.prefill_len,
                kv_cache_len=args.kv_cache_len, bf16_boundaries=args.bf16_boundaries, int8_vision=args.int8_vision,
                int8=args.int8)
    except ConvertError as e:
        print(f"npuflow convert: error: {e}", file=sys.stderr)
        return 2
    return 0
