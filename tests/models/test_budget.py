"""The memory budget: sizes, the resolved "ram=N,cmm=N" form, "auto" from this host, the preload plan."""
from types import SimpleNamespace

import pytest

from npuflow.config import ConfigError, ModelSettings
from npuflow.models import budget as B
from npuflow.models.budget import (Budget, budget_env, format_bytes, parse_budget, parse_size, plan_preload,
                                   resolve_budget)

GiB, MiB = 1 << 30, 1 << 20


@pytest.mark.parametrize("text,n", [
    ("3GiB", 3 * GiB), ("3G", 3 * GiB), ("3g", 3 * GiB), ("3gib", 3 * GiB), ("3 GiB", 3 * GiB),
    ("512MB", 512 * MiB), ("512M", 512 * MiB), ("512mb", 512 * MiB), ("1.5GiB", 3 * GiB // 2), ("1.5G", 3 * GiB // 2),
    ("2048K", 2 * MiB), ("2048KiB", 2 * MiB), ("1T", 1 << 40), ("4096", 4096), ("4096B", 4096), (" 7 ", 7),
])
def test_sizes(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "G", "3X", "3 G B", "-1G", "0", "0GiB", "3GiBs", "5ib", "1e9", "ram"])
def test_bad_sizes(text):
    with pytest.raises(ConfigError, match="size|more than 0"):
        parse_size(text, "size")


def test_parse_budget_forms():
    assert parse_budget("") == Budget({}) and parse_budget("  ") == Budget({})
    assert parse_budget("auto") is None and parse_budget("AUTO") is None
    assert parse_budget("2GiB").totals == {"ram": 2 * GiB, "cmm": 2 * GiB}     # a size: every pool
    assert parse_budget("ram=1GiB, cmm=512M").totals == {"ram": GiB, "cmm": 512 * MiB}
    assert parse_budget("cmm=100,ram=200").totals == {"ram": 200, "cmm": 100}
    only = parse_budget("RAM=1G")
    assert only.total("ram") == GiB and only.total("cmm") is None               # a pool not named: no limit


@pytest.mark.parametrize("text,needle", [
    ("gpu=1G", "'gpu' is not a memory pool"), ("ram=1G,ram=2G", "ram is given twice"),
    ("ram=", "not a size"), ("lots", "not a size"), ("ram=0", "more than 0"),
])
def test_bad_budgets_name_the_setting(text, needle):
    with pytest.raises(ConfigError) as e:
        parse_budget(text, "server.memory_budget")
    assert needle in str(e.value) and str(e.value).startswith("server.memory_budget")


def test_budget_env_round_trip():
    for b in (Budget({}), Budget({"ram": 123, "cmm": 456}), Budget({"cmm": 7})):
        assert parse_budget(budget_env(b)) == b
    assert budget_env(Budget({"ram": 2 * GiB, "cmm": GiB})) == f"ram={2 * GiB},cmm={GiB}"
    assert budget_env(Budget({})) == ""


def test_total_and_describe():
    b = Budget({"ram": 2 * GiB, "cmm": 3 * GiB})
    assert b.total("ram") == 2 * GiB and b.total("gpu") is None
    assert b.describe() == "ram 2.0 GiB, cmm 3.0 GiB"
    assert Budget({}).describe() == "no budget" and Budget({}).total("ram") is None


@pytest.mark.parametrize("n,text", [(0, "0 B"), (512, "512 B"), (1536, "1.5 KiB"), (300 * MiB, "300.0 MiB"),
                                    (3 * GiB // 2, "1.5 GiB"), (2 << 40, "2.0 TiB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def _meminfo(tmp_path, kb):
    p = tmp_path / "meminfo"
    p.write_text(f"MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:   {kb} kB\n")
    return str(p)


def test_auto_on_a_pc_is_a_fraction_of_available_ram(tmp_path):
    b = resolve_budget("auto", meminfo=_meminfo(tmp_path, 4 * 1024 * 1024), cmm_info=str(tmp_path / "none"),
                       smi="no-such-axcl-smi")
    assert b.totals == {"ram": int(B.AUTO_RAM_FRACTION * 4 * GiB)}            # no NPU: no cmm limit
    assert b.total("cmm") is None


def test_auto_on_a_board_reads_free_cmm(tmp_path):
    cmm = tmp_path / "mem_cmm_info"
    cmm.write_text("total size=3145728KB(3072MB),used=18876KB(18MB + 444KB),remain=3126852KB(3053MB + 612KB),"
                   "partition_number=1\n")
    b = resolve_budget("auto", meminfo=_meminfo(tmp_path, 1024 * 1024), cmm_info=str(cmm), smi="no-such-axcl-smi")
    assert b.totals == {"ram": int(0.75 * GiB), "cmm": 3126852 * 1024}


def test_auto_with_an_axcl_card(tmp_path, monkeypatch):
    smi = tmp_path / "axcl-smi"
    rows = ("|    0  AX650N               V2.18.0 | 0001:81:00.0 |      181 MiB /      954 MiB |\n"
            "|   --   52C                 -- / -- | 3%        0% |       22 MiB /     3072 MiB |\n")
    smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{rows}EOF\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    b = resolve_budget("auto", meminfo=_meminfo(tmp_path, 1024 * 1024), cmm_info=str(tmp_path / "none"),
                       smi="axcl-smi")
    assert b.total("cmm") == (3072 - 22) * MiB


def test_mem_available_falls_back_to_total_ram(tmp_path):
    assert B.mem_available(str(tmp_path / "none")) > 0
    assert B.mem_available(_meminfo(tmp_path, 1000)) == 1000 * 1024


def test_explicit_budgets_need_no_host(tmp_path):
    assert resolve_budget("", meminfo=str(tmp_path / "none")) == Budget({})
    assert resolve_budget("ram=5,cmm=6").totals == {"ram": 5, "cmm": 6}


def _fp(n, pool="ram"):
    return SimpleNamespace(bytes=n, pool=pool)      # what plan_preload reads of a Footprint


def test_plan_preload_takes_what_fits_in_config_order():
    models = [ModelSettings(id=i) for i in "abcd"] + [ModelSettings(id="lazy", preload=False)]
    fps = {"a": _fp(4), "b": _fp(5), "c": _fp(2), "d": _fp(3, "cmm"), "lazy": _fp(1)}
    assert plan_preload(models, fps, Budget({"ram": 7, "cmm": 3})) == ["a", "c", "d"]   # b does not fit after a
    assert plan_preload(models, fps, Budget({"ram": 7, "cmm": 2})) == ["a", "c"]
    assert plan_preload(models, fps, Budget({})) == ["a", "b", "c", "d"]                 # no budget: every preload
    assert plan_preload(models, fps, Budget({"cmm": 1})) == ["a", "b", "c"]              # ram unlimited
    assert plan_preload(models, {"a": _fp(100)}, Budget({"ram": 10})) == ["b", "c", "d"]  # unknown footprint: taken
