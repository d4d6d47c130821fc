"""The memory budget: how many bytes the loaded models may hold, per memory pool.

Two pools: "ram" (Linux RAM: CPU models, and AX models on a PC, where the AX graphs run on the
onnxruntime mirror) and "cmm" (the NPU's memory: a board's CMM or an AXCL card's, which Linux
does not count as RAM). `server.memory_budget` is
- "" : no budget (every model may load; today's behaviour);
- a size, "3GiB", "1.5G", "512MB", "512M", "2048K" or bytes ("3221225472"): the same limit for
  every pool. Units are binary whatever the spelling (K = KiB = 1024 bytes, M = MiB, G = GiB,
  T = TiB), as systemd's MemoryMax= and docker's --memory read them; case does not matter;
- "auto": what is free when the supervisor starts, before any worker: the free CMM of the board
  (/proc/ax_proc/mem_cmm_info) or of the AXCL card (axcl-smi), and AUTO_RAM_FRACTION of the
  kernel's MemAvailable (the rest is left to the gateway, the tokenizer and the system);
- the resolved form "ram=N,cmm=N" (sizes as above; a pool not named has no limit), which the
  supervisor hands its children in NPUFLOW_MEMORY_BUDGET so that every process agrees on the
  figures "auto" gave once.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from ..config import ConfigError

POOLS = ("ram", "cmm")
AUTO_RAM_FRACTION = 0.75
MEMINFO = "/proc/meminfo"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b)?$")


@dataclass(frozen=True)
class Budget:
    totals: Mapping[str, int] = field(default_factory=dict)   # pool -> bytes; {} = no budget

    def total(self, pool: str) -> int | None:
        """The pool's limit in bytes; None = unlimited."""
        return self.totals.get(pool)

    def describe(self) -> str:
        """"ram 2.0 GiB, cmm 3.0 GiB" for logs and error messages."""
        return ", ".join(f"{p} {format_bytes(n)}" for p, n in self.totals.items()) or "no budget"


def parse_size(text: str, where: str = "size") -> int:
    """Bytes of "3GiB" / "1.5G" / "512MB" / "512m" / "4096" (binary units); ConfigError otherwise."""
    m = _SIZE.match(str(text).strip().lower())
    if m is None or (m[3] and m[3] != "b" and not m[2]):          # "5ib" is no unit
        raise ConfigError(f"{where}: {text!r} is not a size (bytes, or a number with K, M, G or T: "
                          f"\"3GiB\", \"512MB\", \"1.5G\")")
    n = int(float(m[1]) * _UNITS[m[2]])
    if n <= 0:
        raise ConfigError(f"{where}: {text!r} must be more than 0 bytes (\"\" = no budget)")
    return n


def parse_budget(text: str, where: str = "memory budget") -> Budget | None:
    """What the budget text means: None for "auto" (resolve it with resolve_budget), else a
    Budget (no limits for ""). Raises ConfigError naming `where` and what is wrong."""
    text = str(text).strip()
    if not text:
        return Budget({})
    if text.lower() == "auto":
        return None
    if "=" not in text:
        n = parse_size(text, where)
        return Budget({p: n for p in POOLS})
    totals: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        pool, _, size = (s.strip() for s in part.partition("="))
        pool = pool.lower()
        if pool not in POOLS:
            raise ConfigError(f"{where}: {text!r}: {pool!r} is not a memory pool (ram, cmm)")
        if pool in totals:
            raise ConfigError(f"{where}: {text!r}: {pool} is given twice")
        totals[pool] = parse_size(size, f"{where} {pool}")
    return Budget({p: totals[p] for p in POOLS if p in totals})


def resolve_budget(text: str, *, meminfo: str = MEMINFO, cmm_info: str | None = None,
                   smi: str | Sequence[str] | None = None) -> Budget:
    """The Budget the text gives, "auto" read from this host now: the free CMM of the board or
    the AXCL card (no cmm limit where there is none), AUTO_RAM_FRACTION of MemAvailable."""
    b = parse_budget(text)
    if b is not None:
        return b
    totals = {"ram": int(AUTO_RAM_FRACTION * mem_available(meminfo))}
    cmm = free_cmm_bytes(cmm_info, smi)
    if cmm is not None:
        totals["cmm"] = cmm
    return Budget(totals)


def budget_env(b: Budget) -> str:
    """"ram=N,cmm=N" (bytes) for NPUFLOW_MEMORY_BUDGET; parse_budget reads it back. "" = none."""
    return ",".join(f"{p}={int(n)}" for p, n in b.totals.items())


def plan_preload(models: Iterable, footprints: Mapping[str, object], budget: Budget) -> list[str]:
    """Ids of the preload models (config order) that fit the budget together: each one that fits
    in what the ones before it left is taken, one that does not is skipped (a smaller one after it
    may still fit). A model without a footprint is taken (its worker will say what is wrong)."""
    used: dict[str, int] = {}
    out = []
    for m in models:
        if not getattr(m, "preload", True):
            continue
        fp = footprints.get(m.id)
        if fp is not None:
            limit = budget.total(fp.pool)
            if limit is not None and used.get(fp.pool, 0) + fp.bytes > limit:
                continue
            used[fp.pool] = used.get(fp.pool, 0) + fp.bytes
        out.append(m.id)
    return out


def format_bytes(n: float) -> str:
    """"512 B", "300.0 KiB", "1.5 GiB"."""
    n = float(n)
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


# -- what this host has now -----------------------------------------------------------------------
def mem_available(meminfo: str = MEMINFO) -> int:
    """The kernel's MemAvailable in bytes (what can be allocated without swapping); the total RAM
    where /proc/meminfo cannot be read."""
    try:
        with open(meminfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def free_cmm_bytes(cmm_info: str | None = None, smi: str | Sequence[str] | None = None) -> int | None:
    """Free NPU memory (bytes) of the board, else of AXCL card 0 when axcl-smi is installed; None
    on a host without either."""
    from ..engine import ax_cmm
    try:
        info = ax_cmm.cmm_free_kb(cmm_info or ax_cmm.CMM_INFO)
    except ax_cmm.CmmError:
        info = None
    if info is None:
        names = [smi] if isinstance(smi, str) else list(smi or ax_cmm.AXCL_SMI)
        if any(shutil.which(n) for n in names):
            info = ax_cmm.axcl_cmm_free_kb(0, names)
    return None if info is None else info[0] * 1024
