"""Turn a model source from the configuration into a ready package in the cache.

source: "default" (SmolLM2-135M-Instruct, fetched and converted once), a .gguf file, a Hugging
Face safetensors folder (both converted into the cache, keyed by their content hash), an
existing package folder or an AX model directory (pulsar2 / StackFlow; both used in place).
Concurrent resolvers of one source serialize on a file lock, so a source is converted once; a
cached package that fails verification is rebuilt. With int8 (a model's `int8` setting) an
embedding model's source converts with int8 projections, into a cache entry of its own.
"""
from __future__ import annotations

import pathlib

from ..logs import get_logger
from .cache import file_lock, sha256_file, usable_package
from .default import DEFAULT_MODEL_ID, GGUF_SHA256, default_gguf
from .package import MANIFEST, ModelPackage, PackageError, load_package

log = get_logger("models")

__all__ = ["resolve_model", "serving_package", "DEFAULT_MODEL_ID"]


def serving_package(settings, model) -> ModelPackage:
    """A configured model's package (Settings, ModelSettings) with the serving config applied:
    the one view the worker and the tokenizer both have."""
    package = resolve_model(model.source, settings.server.cache_dir, model.id, int8=model.int8)
    return package.with_overrides(id=model.id, context_length=model.context_length,
                                  sampling_defaults=dict(model.sampling))


def resolve_model(source: str, cache_dir: str | pathlib.Path, model_id: str, *, int8: bool = False) -> ModelPackage:
    cache = pathlib.Path(cache_dir).expanduser()
    converts = source != "default" and _convertible(pathlib.Path(source).expanduser())
    if int8 and not converts:
        raise PackageError(f"model {model_id!r}: int8 applies to an embedding model's .gguf file or checkpoint "
                           f"folder converted on first use, not to {source!r} (make a package with "
                           f"`npuflow convert SOURCE OUT --int8`)")
    if source == "default":
        key = GGUF_SHA256[:16]
        with file_lock(cache / "locks" / f"{DEFAULT_MODEL_ID}.lock"):
            pkg = _cached_or_converted(cache / "models" / f"{DEFAULT_MODEL_ID}-{key}",
                                       lambda: default_gguf(cache / "downloads"), DEFAULT_MODEL_ID)
        return pkg.with_overrides(id=model_id)
    path = pathlib.Path(source).expanduser()
    if path.is_dir() and (path / MANIFEST).is_file():
        return load_package(path).with_overrides(id=model_id)
    from .ax_package import is_ax_dir, read_ax_package
    if is_ax_dir(path):        # pulsar2 / StackFlow directory: used in place by the AX engine
        return read_ax_package(path, model_id).with_overrides(id=model_id)
    if converts:
        from ..convert.hf_source import folder_digest
        digest = sha256_file(path) if path.is_file() else folder_digest(path)
        name = f"{_safe(model_id)}-{digest[:16]}" + ("-int8" if int8 else "")
        with file_lock(cache / "locks" / f"{name}.lock"):
            pkg = _cached_or_converted(cache / "models" / name, lambda: path, model_id, int8=int8)
        return pkg.with_overrides(id=model_id)
    raise PackageError(f"model source {source!r}: not 'default', a .gguf file, a checkpoint folder or a package")


def _convertible(path: pathlib.Path) -> bool:
    """A .gguf file or a checkpoint folder (converted into the cache), not a package."""
    return path.is_file() or (path.is_dir() and (path / "config.json").is_file() and not (path / MANIFEST).is_file())


def _cached_or_converted(target: pathlib.Path, get_source, model_id: str, **options) -> ModelPackage:
    from ..convert.weights import CONVERTER_VERSION
    pkg = usable_package(target)
    if pkg is not None:
        version = pkg.extra.get("graph", {}).get("converter_version")
        if version == CONVERTER_VERSION:
            log.info("using cached model", model=model_id, path=str(target))
            return pkg
        log.info("cached model is from another converter version: converting again", model=model_id,
                 path=str(target), version=version, current=CONVERTER_VERSION)
    from ..convert import convert
    log.info("converting model into the cache", model=model_id, path=str(target))
    convert(get_source(), target, model_id=model_id, overwrite=True, **options)
    return usable_package(target) or _fail(target)


def _fail(target: pathlib.Path):
    raise PackageError(f"{target}: freshly converted package does not verify")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)
