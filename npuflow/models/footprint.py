"""What a model holds in memory while it is loaded: its footprint, the figure the budget counts.

    footprint(model, cache_dir) -> Footprint(bytes, pool, parts, estimated)

Nothing is converted, hashed or loaded: a package (npuflow or AX) is read from its manifest or
config files and the sizes of its files; "default" from its cache folder (known from the GGUF's
SHA-256), else from its downloaded GGUF, else from the figures below; a GGUF file or a checkpoint
folder from a package already converted from it in the cache, else estimated from its header
(tensor types and shapes: the bytes the converter will write for them).

CPU engine (pool "ram"): the package's files (graph and weights, embedding table, tokenizer),
its vision encoder's, the KV cache the engine allocates (engine/cpu.py: float32, or int8 with
kv_cache = "int8", per layer K and V of [max_batch, kv_heads, context + 1, head_dim], all of it
counted, although its pages are only touched as positions fill), and RUNTIME_BYTES.

AX engine: on a host with NPU memory (a board's /proc/ax_proc/mem_cmm_info, or an AXCL card's
axcl-smi) pool "cmm", the package's cmm_kb (its mode json's cmm_size, else the size of its graph
files: estimated); on a PC, where the AX graphs run on the onnxruntime mirror (the stand-in),
pool "ram" with the CPU-style sum (its KV: bf16 [1, kv_cache_len, kv_heads x head_dim] per layer,
kind and slot, engine/ax.py).

RUNTIME_BYTES, measured (VmRSS in /proc/PID/status of `python -m npuflow.cli worker --model ID`,
x86-64 PC, Python 3.11, onnxruntime 1.32, max_batch 4 (the default then; it is 8 now, which
bench/compare.py's fill8 run measured at 1,087 MiB for the default model against a footprint of
1,092 MiB; with kv_cache = "int8" 557 MiB at peak against 552); each model then given 4 requests that fill
its slots to their context, the worst case the footprint stands for):
- a tiny converted model (tests' tinymodels llama, Q4_0, 2 layers, 85 KiB of files, 0.25 MiB of KV,
  context 256): 80.1 MiB after loading, 85.2 MiB with its slots full: the interpreter and its
  libraries (onnxruntime, numpy, tokenizers, llguidance, zmq) and the scheduler;
- the default model (SmolLM2-135M Q4_1, 179.7 MiB of files, 360.2 MiB of KV at context 2048):
  310.8 MiB after loading, 725.6 MiB with 4 x 2038 positions filled: 185.7 MiB beyond its files
  and KV, the tiny model's 85 MiB plus about 100 MiB that comes with the model (51 MiB more at
  load than files + runtime, 55 MiB more than the KV while serving; not broken down further:
  onnxruntime's working buffers for 512-token prefill chunks and its copies of the weights, and
  the 49k-token vocabulary's tables, are the likely holders).
RUNTIME_BYTES is the latter rounded up (192 MiB): footprint(default) is 731.9 MiB, 0.9 % above
what its worker held; a tiny model is counted above what it holds (192 vs 85 MiB). Part of the
100 MiB grows with the model, so a model several times the default's size may hold somewhat more
than its footprint says. (Measured with a throwaway script: start the worker on a config, read
VmRSS once it answers a ping, send the requests over its socket as the gateway does, read VmRSS
again.)
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import struct
from dataclasses import dataclass
from typing import Sequence

from ..engine.ax_cmm import AXCL_SMI, AXCLRT, CMM_INFO
from .default import DEFAULT_MODEL_ID, GGUF_MEMBER, GGUF_SHA256
from .package import MANIFEST, ModelPackage, PackageError, load_package

MiB = 1 << 20
RUNTIME_BYTES = 192 * MiB      # a worker's own memory beyond its package and KV (measured, above)
CPU_KV_BYTES = {"float32": 4, "int8": 1}     # per element, by the model's kv_cache (engine/cpu.py)
AX_KV_BYTES = 2                # bf16 (engine/ax.py)
GRAPH_BYTES_PER_LAYER = 4096   # the converted model.onnx (nodes, small constants): 101283 B for 30 layers
TOKENIZER_BYTES_PER_TOKEN = 36  # the converted tokenizer.json: 1759968 B for 49152 tokens and their merges
# the default package (converter version 2), for a footprint before anything is downloaded
DEFAULT_FILES_BYTES = 188_460_163
DEFAULT_DIMS = {"layers": 30, "kv_heads": 3, "head_dim": 64, "context": 8192}


@dataclass(frozen=True)
class Footprint:
    bytes: int                 # what the model holds in its pool while loaded
    pool: str                  # "ram" | "cmm"
    parts: dict[str, int]      # e.g. {"weights": ..., "kv": ..., "vision": ..., "runtime": ...}
    estimated: bool            # not read from a finished package (source not converted yet, or an
                               # AX package without cmm_size)


@dataclass(frozen=True)
class _Sizes:
    """What a CPU-style footprint is computed from."""
    weights: int               # bytes of the files the engine loads (graph, weights, embeddings, tokenizer)
    vision: int                # bytes of the vision encoder's files (0 = text model)
    layers: int
    kv_heads: int
    head_dim: int
    context: int               # the package's context length (the configured one may be lower)
    activations: int = 0       # an embedding model: its largest batch's activations (it has no KV cache)


def footprint(model, cache_dir: str | os.PathLike, *, cmm_info: str = CMM_INFO,
              smi: str | Sequence[str] = AXCL_SMI) -> Footprint:
    """The footprint of a configured model (ModelSettings). Raises PackageError when its source
    is missing or unreadable (its worker would fail the same way)."""
    cache = pathlib.Path(cache_dir).expanduser()
    if model.source == "default":
        folder = cache / "models" / f"{DEFAULT_MODEL_ID}-{GGUF_SHA256[:16]}"
        if (folder / MANIFEST).is_file():
            return _cpu(_package_sizes(load_package(folder)), model, estimated=False)
        gguf = cache / "downloads" / pathlib.PurePath(GGUF_MEMBER).name
        if gguf.is_file():
            return _cpu(gguf_sizes(gguf), model, estimated=True)
        return _cpu(_Sizes(DEFAULT_FILES_BYTES, 0, **DEFAULT_DIMS), model, estimated=True)
    path = pathlib.Path(model.source).expanduser()
    if path.is_dir() and (path / MANIFEST).is_file():
        return _from_package(load_package(path), model, cmm_info, smi)
    from .ax_package import is_ax_dir, read_ax_package
    if is_ax_dir(path):
        return _from_package(read_ax_package(path, model.id), model, cmm_info, smi)
    if path.is_file() or (path.is_dir() and (path / "config.json").is_file()):
        converted = converted_package(path, cache, model.id, int8=model.int8)
        if converted is not None:
            return _cpu(_package_sizes(converted), model, estimated=False)
        sizes = gguf_sizes(path) if path.is_file() else hf_sizes(path)
        return _cpu(sizes, model, estimated=True)
    what = "not found" if not path.exists() else "not a .gguf file, a checkpoint folder or a package"
    raise PackageError(f"model source {model.source!r}: {what}")


def has_npu_memory(provider: str = "", cmm_info: str = CMM_INFO, smi: str | Sequence[str] = AXCL_SMI) -> bool:
    """Whether this host has NPU memory the AX runtime will use: the board's CMM (its /proc file),
    or an AXCL card (axcl-smi installed), as the provider setting allows."""
    if provider != AXCLRT and os.path.exists(cmm_info):
        return True
    names = [smi] if isinstance(smi, str) else list(smi)
    return provider != "AxEngineExecutionProvider" and any(shutil.which(n) for n in names)


# -- packages ---------------------------------------------------------------------------------------
def _from_package(pkg: ModelPackage, model, cmm_info: str, smi: str | Sequence[str]) -> Footprint:
    ax = pkg.extra.get("ax")
    if pkg.engine != "ax" or not ax:
        return _cpu(_package_sizes(pkg), model, estimated=False)
    on_npu = not str(ax["layer_files"][0]).endswith(".onnx")      # .onnx graphs: the CPU mirror
    if on_npu and has_npu_memory(getattr(model, "ax_provider", ""), cmm_info, smi):
        cmm = int(ax.get("cmm_kb") or 0) * 1024
        if ax.get("cmm_estimated"):
            vision = int(ax.get("vision_kb") or 0) * 1024
            parts = {"weights": cmm - vision, **({"vision": vision} if vision else {})}
        else:
            parts = {"cmm_size": cmm}
        return Footprint(cmm, "cmm", parts, bool(ax.get("cmm_estimated")))
    sizes = _package_sizes(pkg)
    d = pkg.dims
    width = d.kv_heads * d.head_dim or d.hidden
    positions = int(ax.get("kv_cache_len") or 0) or pkg.context_length     # every slot holds the graphs' C
    kv = d.layers * 2 * model.max_batch * positions * width * AX_KV_BYTES
    return _sum(sizes, kv, estimated=False)


def _package_sizes(pkg: ModelPackage) -> _Sizes:
    names = {key: name for key, name in pkg.files.items()}
    vision = {n for k, n in names.items() if k.startswith("vision_model")}
    size = {n: (pkg.path / n).stat().st_size for n in set(names.values())}
    d = pkg.dims
    weights = sum(s for n, s in size.items() if n not in vision)
    if isinstance(pkg.extra.get("embedding"), dict):
        return _embedding_sizes(weights, d.hidden, d.ffn, d.heads, pkg.context_length)
    return _Sizes(weights=weights, vision=sum(size[n] for n in vision),
                  layers=d.layers, kv_heads=d.kv_heads, head_dim=d.head_dim, context=pkg.context_length)


def _embedding_sizes(weights: int, hidden: int, ffn: int, heads: int, context: int) -> _Sizes:
    """An embedding model keeps no KV cache; its peak beyond the weights is one batch of
    BATCH_TOKENS padded tokens: a few hidden-wide tensors, the MLP's two ffn-wide ones and the
    attention scores of the longest rows."""
    from ..engine.embed import BATCH_TOKENS
    t = min(BATCH_TOKENS, context)
    acts = 4 * (BATCH_TOKENS * (6 * hidden + 2 * ffn) + 2 * heads * (BATCH_TOKENS // t) * t * t)
    return _Sizes(weights=weights, vision=0, layers=0, kv_heads=0, head_dim=0, context=context, activations=acts)


def converted_package(source: pathlib.Path, cache: pathlib.Path, model_id: str, *,
                      int8: bool = False) -> ModelPackage | None:
    """The package the cache holds for this GGUF file or checkpoint folder, without hashing it:
    one named for the model id whose manifest records this source path, converted after the
    source last changed, by this converter version (else the worker converts it again), and of
    the kind the model's `int8` setting asks for (resolve.py names an int8 entry `...-int8`)."""
    from ..convert.weights import CONVERTER_VERSION
    from .resolve import _safe
    src = source.expanduser().resolve()
    files = [src] if src.is_file() else [*src.glob("*.safetensors"), src / "config.json"]
    changed = max((f.stat().st_mtime for f in files if f.is_file()), default=math.inf)
    for folder in sorted((cache / "models").glob(f"{_safe(model_id)}-*")):
        if folder.name.endswith("-int8") != int8:
            continue
        try:
            m = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            if ((m.get("source") or {}).get("path") == str(src) and int(m.get("created", 0)) >= int(changed)
                    and (m.get("graph") or {}).get("converter_version") == CONVERTER_VERSION):
                return load_package(folder)
        except (OSError, ValueError, TypeError, AttributeError, PackageError):
            continue
    return None


# -- estimates from a source not converted yet -------------------------------------------------------
# Bytes per weight the converter writes (convert/weights.py, graph.py, package_writer.py): blocks of
# 32 weights; float32 scales; Q4_0 stays 4-bit with the default zero point, Q4_1 is widened to 8 bits
# with a uint8 zero point per block in the graph and kept 4-bit with float32 zero points in the
# embedding table; Q8_0 stays 8-bit; float types become float32.
_GRAPH = {"Q4_0": (16 + 4) / 32, "Q4_1": (32 + 4 + 1) / 32, "Q8_0": (32 + 4) / 32}
_TABLE = {"Q4_0": (16 + 4) / 32, "Q4_1": (16 + 4 + 4) / 32, "Q8_0": (32 + 4) / 32}
_TABLE_ARRAYS = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 2}      # .npy files, a 128-byte header each
_NPY_HEADER = 128
_memo: dict[tuple, _Sizes] = {}


def _memoized(path: pathlib.Path, compute) -> _Sizes:
    """Estimates are kept per source (path, size, mtime): the gateway asks on every model listing."""
    files = [path] if path.is_file() else sorted(path.iterdir())
    key = (str(path), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()))
    if key not in _memo:
        _memo[key] = compute(path)
    return _memo[key]


def gguf_sizes(path: pathlib.Path) -> _Sizes:
    """The package a GGUF file converts into, from its header (metadata and tensor shapes)."""
    return _memoized(path, _gguf_sizes)


def _gguf_sizes(path: pathlib.Path) -> _Sizes:
    from gguf import GGUFReader

    from ..convert.gguf_source import _field
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the gguf package raises plain errors for bad files
        raise PackageError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch = _field(reader, "general.architecture")

    def meta(key, default=None):
        return _field(reader, f"{arch}.{key}", default)

    weights = 0
    embed = None
    for t in reader.tensors:
        kind, n = t.tensor_type.name, int(t.n_elements)
        if t.name == "token_embd.weight":
            embed = (kind, n)
            weights += math.ceil(n * _TABLE.get(kind, 4)) + _NPY_HEADER * _TABLE_ARRAYS.get(kind, 1)
        else:
            weights += math.ceil(n * _GRAPH.get(kind, 4)) if len(t.shape) > 1 else 4 * n
    if embed is not None and not any(t.name == "output.weight" for t in reader.tensors):
        weights += math.ceil(embed[1] * _GRAPH.get(embed[0], 4))           # the tied output head
    try:
        layers, hidden = int(meta("block_count")), int(meta("embedding_length"))
        heads = int(meta("attention.head_count"))
    except (TypeError, ValueError):
        raise PackageError(f"{path}: GGUF header without {arch}.block_count / embedding_length / "
                           f"attention.head_count") from None
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    weights += GRAPH_BYTES_PER_LAYER * layers + TOKENIZER_BYTES_PER_TOKEN * (len(tokens.data) if tokens else 0)
    return _Sizes(weights=weights, vision=0, layers=layers, kv_heads=int(meta("attention.head_count_kv", heads)),
                  head_dim=int(meta("attention.key_length", hidden // heads)),
                  context=int(meta("context_length", 2048)))


def hf_sizes(folder: pathlib.Path) -> _Sizes:
    """The package a Hugging Face checkpoint folder converts into (float weights become float32),
    from its config.json and its safetensors headers."""
    return _memoized(folder, _hf_sizes)


def _hf_sizes(folder: pathlib.Path) -> _Sizes:
    from ..convert.hf_source import _HEADS, VISION_FAMILIES
    try:
        top = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        cfg = top.get("text_config") if top.get("model_type") in VISION_FAMILIES else top
        layers, hidden, heads = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        kv_heads, head_dim = int(cfg.get("num_key_value_heads") or heads), int(cfg.get("head_dim") or hidden // heads)
        context = int(cfg.get("max_position_embeddings", 2048))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise PackageError(f"{folder}/config.json: cannot read the model's dimensions "
                           f"({type(e).__name__}: {e})") from None
    text = VISION_FAMILIES.get(top.get("model_type"), ("",))
    shapes = _safetensors_shapes(folder)
    weights = vision = 0
    embed = 0
    for name, shape in shapes.items():
        n = 4 * math.prod(shape)
        if name.endswith("embed_tokens.weight") and name.startswith(text):
            embed = n
        if name.startswith(text) or name in _HEADS:
            weights += n
        else:
            vision += n
    if not any(h in shapes for h in _HEADS):
        weights += embed                                  # the tied output head: in the graph too
    tok = folder / "tokenizer.json"
    weights += GRAPH_BYTES_PER_LAYER * layers + (tok.stat().st_size if tok.is_file() else 0)
    from ..convert.embed_source import is_embedding_folder
    if is_embedding_folder(folder):
        return _embedding_sizes(weights, hidden, int(cfg["intermediate_size"]), heads, context)
    return _Sizes(weights=weights, vision=vision, layers=layers, kv_heads=kv_heads, head_dim=head_dim, context=context)


def _safetensors_shapes(folder: pathlib.Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise PackageError(f"{folder}: no *.safetensors files")
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error) as e:
            raise PackageError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e})") from None
        out.update({k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return out


# -- sums ---------------------------------------------------------------------------------------------
def _cpu(sizes: _Sizes, model, *, estimated: bool) -> Footprint:
    context = min(model.context_length, sizes.context)
    kv = sizes.layers * 2 * model.max_batch * sizes.kv_heads * (context + 1) * sizes.head_dim \
        * CPU_KV_BYTES[getattr(model, "kv_cache", "float32")]
    return _sum(sizes, kv, estimated)


def _sum(sizes: _Sizes, kv: int, estimated: bool) -> Footprint:
    parts = {"weights": sizes.weights, **({"vision": sizes.vision} if sizes.vision else {}), "kv": kv,
             **({"activations": sizes.activations} if sizes.activations else {}), "runtime": RUNTIME_BYTES}
    return Footprint(sum(parts.values()), "ram", parts, estimated)
