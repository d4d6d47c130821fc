"""A model package: a directory with manifest.json, the engine's graph(s) and tokenizer.json.

manifest.json (format 1):
{
  "format": 1,
  "id": "smollm2-135m-instruct",          # the name clients use as `model`
  "architecture": "llama",                # llama | qwen2 | qwen3
  "engine": "cpu",                        # which Engine runs the files
  "dims": {"hidden": 576, "layers": 30, "heads": 9, "kv_heads": 3, "head_dim": 64,
           "ffn": 1536, "vocab": 49152},
  "context_length": 8192,
  "eos_token_ids": [2],
  "bos_token_id": null,                   # added by encode(text, add_special_tokens) if set
  "chat_template": "{% for message in messages %}...",
  "sampling_defaults": {"temperature": 0.7, "top_p": 0.9},   # may be empty
  "files": {"model": "model.onnx", "tokenizer": "tokenizer.json", ...},
  "created": 1764250000,                  # unix time of conversion
  "source": {"path": "...", "sha256": "..."}
}
The manifest is written last, so a directory without one is an unfinished conversion.
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

MANIFEST = "manifest.json"
FORMAT = 1


class PackageError(Exception):
    """The directory is not a usable model package; the message says why in one line."""


@dataclass(frozen=True)
class Dims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int


@dataclass(frozen=True)
class ModelPackage:
    path: pathlib.Path
    id: str
    architecture: str
    engine: str
    dims: Dims
    context_length: int
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    chat_template: str
    files: dict[str, str]
    sampling_defaults: dict[str, Any] = field(default_factory=dict)
    created: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def file(self, key: str) -> pathlib.Path:
        """Absolute path of a file named in the manifest."""
        try:
            return self.path / self.files[key]
        except KeyError:
            raise PackageError(f"{self.path}: manifest names no '{key}' file") from None

    @property
    def tokenizer_path(self) -> pathlib.Path:
        return self.file("tokenizer")

    def with_overrides(self, *, id: str | None = None, context_length: int | None = None,
                       sampling_defaults: dict[str, Any] | None = None) -> "ModelPackage":
        """A copy with settings from the serving config applied."""
        from dataclasses import replace
        ctx = self.context_length if context_length is None else min(context_length, self.context_length)
        sd = dict(self.sampling_defaults)
        sd.update(sampling_defaults or {})
        return replace(self, id=id or self.id, context_length=ctx, sampling_defaults=sd)


_KNOWN = {"format", "id", "architecture", "engine", "dims", "context_length", "eos_token_ids",
          "bos_token_id", "chat_template", "files", "sampling_defaults", "created"}


def load_package(path: str | pathlib.Path) -> ModelPackage:
    """Read and check a package directory. Raises PackageError when anything is missing."""
    root = pathlib.Path(path).expanduser().resolve()
    mf = root / MANIFEST
    if not mf.is_file():
        raise PackageError(f"{root}: no {MANIFEST} (not a model package, or an unfinished conversion)")
    try:
        m = json.loads(mf.read_text())
        if m.get("format") != FORMAT:
            raise PackageError(f"{mf}: format {m.get('format')!r}, this version reads {FORMAT}")
        pkg = ModelPackage(
            path=root, id=str(m["id"]), architecture=str(m["architecture"]), engine=str(m["engine"]),
            dims=Dims(**m["dims"]), context_length=int(m["context_length"]),
            eos_token_ids=tuple(int(i) for i in m["eos_token_ids"]),
            bos_token_id=None if m.get("bos_token_id") is None else int(m["bos_token_id"]),
            chat_template=str(m.get("chat_template") or ""), files=dict(m["files"]),
            sampling_defaults=dict(m.get("sampling_defaults") or {}), created=int(m.get("created", 0)),
            extra={k: v for k, v in m.items() if k not in _KNOWN})
    except PackageError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise PackageError(f"{mf}: malformed manifest ({type(e).__name__}: {e})") from None
    for key, name in pkg.files.items():
        if not (root / name).is_file():
            raise PackageError(f"{root}: file '{name}' ({key}) named in the manifest is missing")
    return pkg


def write_manifest(root: pathlib.Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically; call it after every other file is in place."""
    manifest = {"format": FORMAT, **manifest}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False))
    tmp.replace(root / MANIFEST)
