"""NPU memory (CMM) check before an AX model is loaded.

CMM is separate from Linux RAM; a model that does not fit fails late inside the runtime and can
leave CMM allocated, so the worker compares the package's need with the free CMM first.
/proc/ax_proc/mem_cmm_info has a summary line such as
  total size=3145728KB(3072MB),used=18876KB(18MB + 444KB),remain=3126852KB(3053MB + 612KB),...
"""
from __future__ import annotations

import os
import re

CMM_INFO = "/proc/ax_proc/mem_cmm_info"
_LINE = re.compile(r"total size=(\d+)KB.*?remain=(\d+)KB")


class CmmError(Exception):
    """The model does not fit in free NPU memory, or the memory cannot be read; one line."""


def cmm_free_kb(path: str | os.PathLike = CMM_INFO) -> tuple[int, int] | None:
    """(free KB, total KB) from the CMM summary, or None when the file does not exist (no NPU
    driver on this host). Raises CmmError when the file exists but has no summary line."""
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except FileNotFoundError:
        return None
    found = _LINE.findall(text)
    if not found:
        raise CmmError(f"{path}: no 'total size=...KB ... remain=...KB' line to read free NPU memory from")
    total, remain = found[-1]
    return int(remain), int(total)


def check_fits(need_kb: int, model: str, path: str | os.PathLike = CMM_INFO, *, required: bool = False) -> int | None:
    """Raise CmmError when need_kb exceeds the free CMM; return the free KB (None when unknown).
    With required, a missing proc file is an error too (a board without its NPU driver)."""
    info = cmm_free_kb(path)
    if info is None:
        if required:
            raise CmmError(f"{path} not found: the NPU driver is not loaded on this host")
        return None
    free, total = info
    if need_kb > free:
        raise CmmError(f"{model} needs {need_kb // 1024} MiB of NPU memory (CMM) but only "
                       f"{free // 1024} MiB of {total // 1024} MiB are free; stop another model or "
                       f"use a smaller one")
    return free
