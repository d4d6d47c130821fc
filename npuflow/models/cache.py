"""The converted-model cache: file locks, package verification, atomic rebuilds."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
import shutil
from typing import Iterator

from ..logs import get_logger
from .package import MANIFEST, ModelPackage, PackageError, load_package

log = get_logger("models")


@contextlib.contextmanager
def file_lock(path: pathlib.Path) -> Iterator[None]:
    """An exclusive fcntl lock on path (created if needed), held for the with block; blocks while
    another process holds it, and is released by the kernel if the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process", lock=str(path))
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sha256_file(path: pathlib.Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_package(path: pathlib.Path, *, full: bool = True) -> ModelPackage:
    """Load a package and check every file against the sizes (and, with full, the SHA-256) that
    the manifest records. Raises PackageError naming the first mismatch."""
    pkg = load_package(path)
    sums = pkg.extra.get("checksums")
    if not isinstance(sums, dict) or not sums:
        raise PackageError(f"{path}: manifest records no checksums")
    for name, info in sums.items():
        f = pkg.path / name
        if not f.is_file():
            raise PackageError(f"{path}: file '{name}' is missing")
        size = f.stat().st_size
        if size != int(info["size"]):
            raise PackageError(f"{path}: file '{name}' has {size} bytes, manifest says {info['size']}")
        if full and sha256_file(f) != info["sha256"]:
            raise PackageError(f"{path}: file '{name}' does not match its SHA-256")
    return pkg


def usable_package(path: pathlib.Path, *, full: bool = True) -> ModelPackage | None:
    """The cached package at path if it verifies; otherwise remove what is there and return None."""
    if not path.exists():
        return None
    try:
        return verify_package(path, full=full)
    except PackageError as e:
        reason = str(e) if (path / MANIFEST).exists() else "unfinished conversion (no manifest)"
        log.warning("discarding cached package", path=str(path), reason=reason)
        shutil.rmtree(path, ignore_errors=True)
        return None
