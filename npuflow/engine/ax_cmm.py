"""NPU memory (CMM) check before an AX model is loaded.

CMM is separate from Linux RAM; a model that does not fit fails late inside the runtime and can
leave CMM allocated, so the worker compares the package's need with the free CMM first.

On a board (on-board NPU, AxEngineExecutionProvider) /proc/ax_proc/mem_cmm_info has a summary
line such as
  total size=3145728KB(3072MB),used=18876KB(18MB + 444KB),remain=3126852KB(3053MB + 612KB),...
A PC host with an AXCL card (AXCLRTExecutionProvider) has no such file, and pyaxengine's AXCL
bindings declare no memory query (axclrt's capi in pyaxengine: device list, malloc/free, memcpy,
engine calls). The card's CMM is read from the overview table that `axcl-smi` (older: `axcl_smi`) prints (format
confirmed in AXERA's and Radxa's axcl-smi guides, versions V2.18.0, V3.0.2 and V3.6.5): per card
two rows, the second ending in the CMM-Usage cell, in MiB:
  |    0  AX650N                    V2.18.0 | 0001:81:00.0 |                181 MiB /      954 MiB |
  |   --   52C                      -- / -- | 3%        0% |                 22 MiB /     3072 MiB |
The Card column is the card's index among the connected cards (not its PCIe number); that it is
the same index as pyaxengine's device_id (an index into axclrtGetDeviceList's list) is assumed,
not confirmed. When axcl-smi is missing, fails or prints something else, free CMM is unknown:
the model is loaded unchecked and a warning says so.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Sequence

from ..logs import get_logger

log = get_logger("engine.ax")

CMM_INFO = "/proc/ax_proc/mem_cmm_info"
# the tool's names: axcl-smi (AXCL V3), axcl_smi in /opt/bin/axcl (V2.18, per AXERA's guide)
AXCL_SMI = ("axcl-smi", "axcl_smi", "/opt/bin/axcl/axcl_smi")
AXCLRT = "AXCLRTExecutionProvider"
_LINE = re.compile(r"total size=(\d+)KB.*?remain=(\d+)KB")
_CARD_ROW = re.compile(r"^\|\s*(\d+)\s.*\|\s*[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]\s*\|")
_USAGE = re.compile(r"(\d+)\s*([KMG])iB\s*/\s*(\d+)\s*([KMG])iB\s*\|\s*$")
_KB = {"K": 1, "M": 1024, "G": 1024 * 1024}


class CmmError(Exception):
    """The model does not fit in free NPU memory, or the memory cannot be read; one line."""


@dataclass(frozen=True)
class CmmFree:
    free_kb: int
    total_kb: int
    where: str          # "" on the board, " on card N" for an AXCL card


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


def parse_axcl_smi(text: str, card: int) -> tuple[int, int] | None:
    """(free KB, total KB) of one card from axcl-smi's overview table, or None if it is not there."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        m = _CARD_ROW.match(line.strip())
        if m and int(m[1]) == card:
            u = _USAGE.search(lines[i + 1].strip())
            if u is None:
                return None
            used, total = int(u[1]) * _KB[u[2]], int(u[3]) * _KB[u[4]]
            return max(total - used, 0), total
    return None


def axcl_cmm_free_kb(card: int, smi: str | Sequence[str] = AXCL_SMI,
                     timeout: float = 15.0) -> tuple[int, int] | None:
    """(free KB, total KB) of an AXCL card from `axcl-smi` (the first of smi found on PATH), or
    None when it cannot be read."""
    names = [smi] if isinstance(smi, str) else list(smi)
    exe = next((found for found in map(shutil.which, names) if found), None)
    if exe is None:
        log.warning("axcl-smi not found: free NPU memory of the card unknown, not checked", card=card)
        return None
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("axcl-smi failed: free NPU memory of the card unknown, not checked", error=str(e))
        return None
    info = parse_axcl_smi(out.stdout, card) if out.returncode == 0 else None
    if info is None:
        log.warning("axcl-smi printed no CMM-Usage for the card: free NPU memory unknown, not checked",
                    card=card, returncode=out.returncode, output=(out.stdout or out.stderr)[-300:])
    return info


def free_cmm(provider: str = "", device_id: int | None = None, path: str | os.PathLike = CMM_INFO,
             smi: str | Sequence[str] = AXCL_SMI) -> CmmFree | None:
    """Free CMM where the model will run: the card's for the AXCL provider, else the board's."""
    if provider == AXCLRT:
        card = device_id or 0
        info = axcl_cmm_free_kb(card, smi)
        return None if info is None else CmmFree(info[0], info[1], f" on card {card}")
    info = cmm_free_kb(path)
    return None if info is None else CmmFree(info[0], info[1], "")


def check_fits(need_kb: int, model: str, path: str | os.PathLike = CMM_INFO, *, estimated: bool = False,
               provider: str = "", device_id: int | None = None, smi: str | Sequence[str] = AXCL_SMI,
               required: bool = False) -> CmmFree | None:
    """Raise CmmError when need_kb exceeds the free CMM; return what is free (None when unknown).
    estimated: need_kb was computed from file sizes (no mode json cmm_size); the message says so.
    With required, a missing proc file is an error too (a board without its NPU driver)."""
    free = free_cmm(provider, device_id, path, smi)
    if free is None:
        if required and provider != AXCLRT:
            raise CmmError(f"{path} not found: the NPU driver is not loaded on this host")
        return None
    if need_kb > free.free_kb:
        mib = -(-need_kb // 1024)                     # the need rounded up, what is free rounded down
        need = (f"about {mib} MiB of NPU memory (CMM; an estimate from the size of its graph files)"
                if estimated else f"{mib} MiB of NPU memory (CMM)")
        raise CmmError(f"{model} needs {need} but only {free.free_kb // 1024} MiB of {free.total_kb // 1024} MiB "
                       f"are free{free.where}; stop another model or use a smaller one")
    return free
