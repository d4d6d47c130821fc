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
    whole = (pathlib.Path(__file__).resolve().parents[1] / "deploy/systemd/npuflow.service").read_text()
    assert int(re.search(r"^TimeoutStopSec=(\d+)$", whole, re.M)[1]) >= stop   # `serve` drains the gateway too
    for name in ("npuflow-gateway.service", "npuflow-tokenizer.service", "npuflow-worker@.service"):
        text = (pathlib.Path(__file__).resolve().parents[1] / "deploy/systemd" / name).read_text()
        assert f"RestartPreventExitStatus={EX_CONFIG}" in text, name


def test_only_the_preload_models_that_fit_start_and_the_children_get_the_resolved_budget(tmp_path, monkeypatch):
    """The budget and footprint modules are stand-ins here: what is tested is how the plan is used
    (which models start, a model whose footprint cannot be read starts too, the env form)."""
    import types
    from dataclasses import replace
    cfg = tmp_path / "npuflow.toml"
    cfg.write_text("".join(f'[[models]]\nid = "{m}"\nsource = "/nowhere/{m}.gguf"\n' for m in ("big", "small", "odd")))
    settings = load_settings(cfg, env={"NPUFLOW_RUN_DIR": str(tmp_path)})
    settings = replace(settings, server=types.SimpleNamespace(**{**vars(settings.server), "memory_budget": "auto"}))
    size = {"big": 10, "small": 1}

    def footprint(m, cache_dir):
        if m.id not in size:
            raise FileNotFoundError(m.source)
        return types.SimpleNamespace(bytes=size[m.id], pool="ram")

    budget = types.SimpleNamespace(describe=lambda: "ram 2 B")
    monkeypatch.setitem(sys.modules, "npuflow.models.footprint", types.SimpleNamespace(footprint=footprint))
    monkeypatch.setitem(sys.modules, "npuflow.models.budget", types.SimpleNamespace(
        resolve_budget=lambda text: budget if text == "auto" else None, budget_env=lambda b: "ram=2",
        format_bytes=str, plan_preload=lambda models, fps, b: [m.id for m in models if fps[m.id].bytes <= 2]))
    assert preload_plan(settings) == (["small", "odd"], "ram=2")
