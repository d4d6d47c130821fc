"""The NPU memory check: the board's /proc file, an AXCL card through a fake `axcl-smi` on PATH,
and refusals that say when the model's need is an estimate."""
import json
import os
import stat

import pytest

from npuflow.engine.ax import AxEngine
from npuflow.engine.ax_cmm import CmmError, axcl_cmm_free_kb, check_fits, cmm_free_kb, parse_axcl_smi
from npuflow.engine.ax_runtime import AXCLRT, AXENGINE
from npuflow.models.ax_package import read_ax_package

CMM = (" total size=3145728KB(3072MB),used=18876KB(18MB + 444KB),remain=3126852KB(3053MB + 612KB),"
       "partition_number=1,block_number=12\n")
# axcl-smi's overview table as its guides show it (two cards here; the second row of a card ends
# in CMM-Usage)
SMI = """\
+------------------------------------------------------------------------------------------------+
| AXCL-SMI  V3.6.5_20250908154509                                  Driver  V3.6.5_20250908154509 |
+-----------------------------------------+--------------+---------------------------------------+
| Card  Name                     Firmware | Bus-Id       |                          Memory-Usage |
| Fan   Temp                Pwr:Usage/Cap | CPU      NPU |                             CMM-Usage |
|=========================================+==============+=======================================|
|    0  AX650N                     V3.6.5 | 0001:11:00.0 |                152 MiB /      945 MiB |
|   --   81C                      -- / -- | 1%        0% |                 18 MiB /     7040 MiB |
+-----------------------------------------+--------------+---------------------------------------+
|    1  AX650N                     V3.6.5 | 0002:01:00.0 |                152 MiB /      945 MiB |
|   --   60C                      -- / -- | 1%        0% |               7000 MiB /     7040 MiB |
+-----------------------------------------+--------------+---------------------------------------+

+------------------------------------------------------------------------------------------------+
| Processes:                                                                                     |
| Card      PID  Process Name                                                   NPU Memory Usage |
|================================================================================================|
"""


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """An `axcl-smi` on PATH that prints `text` (and exits with `code`)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")

    def install(text: str, code: int = 0, name: str = "axcl-smi"):
        (bindir / "out.txt").write_text(text)
        exe = bindir / name
        exe.write_text(f"#!/bin/sh\ncat '{bindir / 'out.txt'}'\nexit {code}\n")
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return install


def test_proc_parse_and_refusal(tmp_path):
    proc = tmp_path / "mem_cmm_info"
    proc.write_text("--- CMM info ---\n" + CMM)
    assert cmm_free_kb(proc) == (3126852, 3145728)
    assert check_fits(1024, "m", proc).free_kb == 3126852
    with pytest.raises(CmmError) as e:
        check_fits(3072 * 1024, "m", proc)
    assert str(e.value).startswith("m needs 3072 MiB of NPU memory (CMM) but only 3053 MiB of 3072 MiB are free;")
    with pytest.raises(CmmError, match=r"^m needs about 3072 MiB of NPU memory \(CMM; an estimate from the size "
                                       r"of its graph files\) but only 3053 MiB"):
        check_fits(3072 * 1024, "m", proc, estimated=True)
    assert cmm_free_kb(tmp_path / "absent") is None and check_fits(1 << 40, "m", tmp_path / "absent") is None
    proc.write_text("garbage\n")
    with pytest.raises(CmmError):
        cmm_free_kb(proc)


def test_axcl_smi_table():
    assert parse_axcl_smi(SMI, 0) == ((7040 - 18) * 1024, 7040 * 1024)
    assert parse_axcl_smi(SMI, 1) == (40 * 1024, 7040 * 1024)
    assert parse_axcl_smi(SMI, 2) is None and parse_axcl_smi("garbage", 0) is None


def test_axcl_card_read_through_axcl_smi(tmp_path, fake_smi):
    fake_smi(SMI, name="axcl_smi")                           # the older releases' name
    assert axcl_cmm_free_kb(1) == (40 * 1024, 7040 * 1024)
    fake_smi(SMI)
    proc = tmp_path / "absent"                               # a PC host: no proc file
    assert check_fits(1024, "m", proc, provider=AXCLRT, device_id=0).free_kb == (7040 - 18) * 1024
    assert check_fits(1 << 40, "m", proc, provider=AXENGINE) is None        # on-board: the proc file
    with pytest.raises(CmmError, match=r"^m needs about 100 MiB .* but only 40 MiB of 7040 MiB are free on card 1;"):
        check_fits(100 * 1024, "m", proc, estimated=True, provider=AXCLRT, device_id=1)


def test_axcl_smi_unusable_means_unknown(tmp_path, fake_smi, monkeypatch):
    fake_smi("something else\n")
    assert axcl_cmm_free_kb(0) is None
    fake_smi(SMI, code=3)
    assert check_fits(1 << 40, "m", tmp_path / "absent", provider=AXCLRT) is None
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert axcl_cmm_free_kb(0) is None


def test_engine_on_a_card_refuses_before_loading(tiny_package, tmp_path, fake_smi):
    fake_smi(SMI.replace("18 MiB /     7040 MiB", "7040 MiB /     7040 MiB"))
    with pytest.raises(CmmError,
                       match=r"^the model needs about 1 MiB .*an estimate.* 0 MiB of 7040 MiB are free on card 0"):
        AxEngine(tiny_package, provider=AXCLRT, cmm_info=str(tmp_path / "absent"))
    fake_smi(SMI)
    AxEngine(tiny_package, provider=AXCLRT, cmm_info=str(tmp_path / "absent")).close()


def test_mode_json_need_is_not_an_estimate(tiny_package, tmp_path):
    root = tiny_package.path
    (root / f"mode_{root.name}.json").write_text(json.dumps({"mode": "tiny", "cmm_size": 4096, "mode_param": {}}))
    pkg = read_ax_package(root)
    assert pkg.extra["ax"]["cmm_kb"] == 4096 and pkg.extra["ax"]["cmm_estimated"] is False
    assert tiny_package.extra["ax"]["cmm_estimated"] is True
    proc = tmp_path / "cmm"
    proc.write_text(CMM.replace("remain=3126852KB", "remain=1024KB"))
    with pytest.raises(CmmError, match=r"^the model needs 4 MiB of NPU memory \(CMM\) but only 1 MiB of 3072 MiB"):
        AxEngine(pkg, cmm_info=str(proc))
