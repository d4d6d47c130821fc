"""The supervisor restarts a crashed service but not one that refused its configuration, waits
drain_timeout_s plus a margin for the gateway, and preloads the preload models. (Workers and the
control socket: test_supervisor_control.py.)"""
import sys
import time

from npuflow.config import DRAIN_MARGIN_S, load_settings
from npuflow.supervisor import EX_CONFIG, Child, Supervisor, preload_plan


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
    monkeypatch.setattr(Supervisor, "_stop", staticmethod(lambda children, timeout, serve=None: waited.append(timeout)))
    sup.shutdown()
    assert waited[0] == 7 + DRAIN_MARGIN_S


def test_without_a_budget_every_preload_model_starts_and_no_budget_is_handed_on(tmp_path):
    cfg = tmp_path / "npuflow.toml"
    cfg.write_text('[[models]]\nid = "one"\nsource = "/nowhere/one.gguf"\n[[models]]\nid = "two"\n'
                   'source = "/nowhere/two.gguf"\n')
    settings = load_settings(cfg, env={"NPUFLOW_RUN_DIR": str(tmp_path)})
    assert preload_plan(settings) == (["one", "two"], "")


def test_children_are_told_where_the_control_socket_is(tmp_path):
    sup = Supervisor(load_settings(env={"NPUFLOW_RUN_DIR": str(tmp_path)}))
    assert sup.env["NPUFLOW_CONTROL_ENDPOINT"] == f"ipc://{tmp_path}/supervisor.sock"


def test_the_gateway_unit_waits_as_long_as_the_supervisor():
    import pathlib
    import re
    unit = (pathlib.Path(__file__).resolve().parents[1] / "deploy/systemd/npuflow-gateway.service").read_text()
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)[1])
    assert stop >= load_settings(env={}).server.drain_timeout_s + DRAIN_MARGIN_S
    for name in ("npuflow-gateway.service", "npuflow-tokenizer.service", "npuflow-worker@.service"):
        text = (pathlib.Path(__file__).resolve().parents[1] / "deploy/systemd" / name).read_text()
        assert f"RestartPreventExitStatus={EX_CONFIG}" in text, name
