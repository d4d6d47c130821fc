"""The supervisor restarts a crashed child but not one that refused its configuration, and waits
drain_timeout_s plus a margin for the gateway."""
import sys
import time

from npuflow.config import DRAIN_MARGIN_S, load_settings
from npuflow.supervisor import EX_CONFIG, Child, Supervisor


def _exited(tmp_path, code: int) -> tuple[Supervisor, Child]:
    sup = Supervisor(load_settings(env={"NPUFLOW_RUN_DIR": str(tmp_path)}))
    child = Child("worker:x", [sys.executable, "-c", f"raise SystemExit({code})"])
    child.start(sup.env)
    child.proc.wait(30)
    return sup, child


def test_a_crashed_child_is_restarted(tmp_path):
    sup, child = _exited(tmp_path, 1)
    sup._watch(child, time.monotonic())
    sup._watch(child, time.monotonic() + 5)
    assert child.restarts == 1
    child.proc.wait(30)


def test_a_child_that_refused_its_configuration_is_not_restarted(tmp_path):
    sup, child = _exited(tmp_path, EX_CONFIG)
    for later in (0, 5, 60, 3600):
        sup._watch(child, time.monotonic() + later)
    assert child.restarts == 0 and child.proc is None


def test_the_gateway_is_given_its_drain_budget_and_a_margin(tmp_path, monkeypatch):
    sup = Supervisor(load_settings(env={"NPUFLOW_RUN_DIR": str(tmp_path), "NPUFLOW_DRAIN_TIMEOUT_S": "7"}))
    waited = []
    monkeypatch.setattr(Supervisor, "_stop", staticmethod(lambda children, timeout: waited.append(timeout)))
    sup.shutdown()
    assert waited[0] == 7 + DRAIN_MARGIN_S


def test_the_gateway_unit_waits_as_long_as_the_supervisor():
    import pathlib
    import re
    unit = (pathlib.Path(__file__).resolve().parents[1] / "deploy/systemd/npuflow-gateway.service").read_text()
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)[1])
    assert stop >= load_settings(env={}).server.drain_timeout_s + DRAIN_MARGIN_S
    for name in ("npuflow-gateway.service", "npuflow-tokenizer.service", "npuflow-worker@.service"):
        text = (pathlib.Path(__file__).resolve().parents[1] / "deploy/systemd" / name).read_text()
        assert f"RestartPreventExitStatus={EX_CONFIG}" in text, name
