"""Settings: defaults, TOML, NPUFLOW_* overrides, and one-line errors for bad values."""
import math
import pathlib
from dataclasses import replace

import pytest

from npuflow.config import ConfigError, DEFAULT_MODEL_ID, keep_alive_s, load_settings, parse_duration


def test_defaults_serve_the_default_model_on_localhost(tmp_path):
    s = load_settings(env={"NPUFLOW_RUN_DIR": str(tmp_path)})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8000)
    assert [m.id for m in s.models] == [DEFAULT_MODEL_ID]
    assert s.models[0].source == "default"
    assert s.models[0].endpoint == f"ipc://{tmp_path}/worker-{DEFAULT_MODEL_ID}.sock"
    assert s.tokenizer.endpoint == f"ipc://{tmp_path}/tokenizer.sock"
    assert s.server.api_keys == ()


def test_toml_then_environment_then_cli(tmp_path):
    cfg = tmp_path / "npuflow.toml"
    cfg.write_text("""
[server]
port = 9001
api_keys = ["k1"]

[[models]]
id = "a"
context_length = 512
[models.sampling]
temperature = 0.2

[[models]]
id = "b"
endpoint = "tcp://10.0.0.2:5601"
""")
    s = load_settings(cfg, env={"NPUFLOW_API_KEYS": "x,y", "NPUFLOW_PORT": "9002"}, port=9003)
    assert s.server.port == 9003
    assert s.server.api_keys == ("x", "y")
    assert [m.id for m in s.models] == ["a", "b"]
    assert s.model("a").context_length == 512 and s.model("a").sampling == {"temperature": 0.2}
    assert s.model("b").endpoint == "tcp://10.0.0.2:5601"


def test_web_ui_is_on_by_default_and_set_by_toml_or_env(tmp_path):
    assert load_settings(env={}).server.web_ui is True
    cfg = tmp_path / "npuflow.toml"
    cfg.write_text("[server]\nweb_ui = false\n")
    assert load_settings(cfg, env={}).server.web_ui is False
    assert load_settings(cfg, env={"NPUFLOW_WEB_UI": "on"}).server.web_ui is True
    assert load_settings(env={"NPUFLOW_WEB_UI": "0"}).server.web_ui is False
    for bad in ("maybe", "2"):
        with pytest.raises(ConfigError, match="server.web_ui"):
            load_settings(env={"NPUFLOW_WEB_UI": bad})
    cfg.write_text("[server]\nweb_ui = \"nope\"\n")
    with pytest.raises(ConfigError, match="server.web_ui"):
        load_settings(cfg, env={})


@pytest.mark.parametrize("text,needle", [
    ("[server]\nport = 'abc'\n", "server.port"),
    ("[server]\nbogus = 1\n", "bogus"),
    ("[[models]]\nid = 'a b'\n", "models[0].id"),
    ("[[models]]\nid = 'a'\n[[models]]\nid = 'a'\n", "unique"),
    ("[nonsense]\n", "nonsense"),
    ("[server\n", "config file"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=None) as e:
        load_settings(cfg, env={})
    assert needle in str(e.value)


def test_grpc_port_and_tls_files(tmp_path):
    s = load_settings(env={"NPUFLOW_RUN_DIR": str(tmp_path)})
    assert (s.server.grpc_host, s.server.grpc_port) == ("127.0.0.1", 50051)
    assert (s.server.grpc_tls_cert, s.server.grpc_tls_key) == ("", "")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("cert")
    key.write_text("key")
    s = load_settings(env={"NPUFLOW_GRPC_PORT": "0"})
    assert s.server.grpc_port == 0
    s = load_settings(env={"NPUFLOW_GRPC_TLS_CERT": str(cert), "NPUFLOW_GRPC_TLS_KEY": str(key)})
    assert (s.server.grpc_tls_cert, s.server.grpc_tls_key) == (str(cert), str(key))
    with pytest.raises(ConfigError, match="set together"):
        load_settings(env={"NPUFLOW_GRPC_TLS_CERT": str(cert)})
    with pytest.raises(ConfigError, match="grpc_tls_key"):
        load_settings(env={"NPUFLOW_GRPC_TLS_CERT": str(cert), "NPUFLOW_GRPC_TLS_KEY": str(tmp_path / "none")})


@pytest.mark.parametrize("text,needle", [
    ('[[models]]\nid = "a"\nengine = "npu"\n', 'models[0] (a).engine: \'npu\' is not one of "cpu", "ax"'),
    ('[[models]]\nid = "a"\nengine = "ax"\nax_provider = "CPUExecutionProvider"\n',
     'models[0] (a).ax_provider: \'CPUExecutionProvider\' is not one of "", "AxEngineExecutionProvider"'),
    ('[[models]]\nid = "a"\nsimulate_timing = "ax999"\n', "models[0] (a).simulate_timing: 'ax999' is not one of"),
    ('[server]\nlog_level = "verbose"\n', 'server.log_level: \'verbose\' is not one of "debug", "info"'),
    ('[[models]]\nid = "a"\nprefix_cache = "maybe"\n', "models[0].prefix_cache: bad value 'maybe'"),
    ('[server]\ndrain_timeout_s = -1\n', "server.drain_timeout_s"),
    ('[server]\nrequest_timeout_s = 0\n', "server.request_timeout_s"),
])
def test_enum_settings_are_checked_when_the_config_loads(tmp_path, text, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env={})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_enum_settings_accept_their_values_in_any_case_where_it_is_safe(tmp_path):
    cfg = tmp_path / "ok.toml"
    cfg.write_text('[server]\nlog_level = "WARNING"\n[[models]]\nid = "a"\nengine = "ax"\n'
                   'ax_provider = "AXCLRTExecutionProvider"\nsimulate_timing = "AX630C"\nprefix_cache = "off"\n')
    s = load_settings(cfg, env={"NPUFLOW_DRAIN_TIMEOUT_S": "12.5"})
    assert s.server.log_level == "warning" and s.model("a").simulate_timing == "ax630c"
    assert s.model("a").prefix_cache is False and s.server.drain_timeout_s == 12.5
    assert load_settings(env={}).server.drain_timeout_s == 30.0


def test_the_allowed_values_are_the_engines_own():
    from npuflow.config import AX_PROVIDERS, SIMULATE_TIMING
    from npuflow.engine.ax_runtime import PROVIDERS
    from npuflow.engine.ax_timing import PROFILES
    assert set(AX_PROVIDERS) == {"", *PROVIDERS}
    assert set(SIMULATE_TIMING) == {"", *PROFILES}


def test_serve_with_an_invalid_config_is_one_line_and_status_1(tmp_path):
    import subprocess
    import sys
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[server]\nrun_dir = "{tmp_path}/run"\n[[models]]\nid = "a"\nengine = "gpu"\n')
    proc = subprocess.run([sys.executable, "-m", "npuflow.cli", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "npuflow: configuration error: models[0] (a).engine: 'gpu' is not one of \"cpu\", \"ax\""]
    assert not (tmp_path / "run").exists()   # no child made a socket
    worker = subprocess.run([sys.executable, "-m", "npuflow.cli", "worker", "--model", "a", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=60)
    assert worker.returncode == 78   # systemd units: RestartPreventExitStatus=78


# -- lifecycle: memory budget, keep_alive, preload, models_dir -----------------------------------------
def _models_dir(tmp_path):
    """A models_dir with a GGUF file and a package (tests/models/model_dirs builders)."""
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).parent / "models"))
    sys.path.insert(0, str(pathlib.Path(__file__).parent / "convert"))
    from model_dirs import cpu_package, gguf_file
    d = tmp_path / "models"
    gguf_file(d / "zeta.gguf")
    cpu_package(d, "alpha")
    return d


def test_lifecycle_defaults(tmp_path):
    s = load_settings(env={"NPUFLOW_RUN_DIR": str(tmp_path)})
    assert (s.server.memory_budget, s.server.keep_alive, s.server.models_dir) == ("", "300", "")
    m = s.models[0]
    assert (m.preload, m.keep_alive, m.discovered) == (True, "", False)
    assert keep_alive_s(m, s.server) == math.inf          # the default model stays loaded, as before


def test_lifecycle_settings_from_toml_and_env(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nmemory_budget = "3GiB"\nkeep_alive = "5m"\n'
                   '[[models]]\nid = "a"\npreload = false\n[[models]]\nid = "b"\nkeep_alive = 0\n'
                   '[[models]]\nid = "c"\npreload = false\nkeep_alive = "forever"\n')
    s = load_settings(cfg, env={})
    assert s.server.memory_budget == "3GiB"
    assert [keep_alive_s(m, s.server) for m in s.models] == [300.0, 0.0, math.inf]
    assert s.model("a").explicit_keys == {"id", "preload"}
    s = load_settings(cfg, env={"NPUFLOW_MEMORY_BUDGET": "ram=1,cmm=2", "NPUFLOW_KEEP_ALIVE": "-1"})
    assert s.server.memory_budget == "ram=1,cmm=2" and keep_alive_s(s.model("a"), s.server) == math.inf
    assert s.model("a") == replace(s.model("a"), explicit_keys=frozenset())   # not part of equality


@pytest.mark.parametrize("text,seconds", [
    ("300", 300.0), ("2.5", 2.5), ("0", 0.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0),
    ("500ms", 0.5), (" 5M ", 300.0), ("forever", math.inf), ("FOREVER", math.inf), ("-1", math.inf), (-1, math.inf),
    (45, 45.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5", "5 m", "5d", "1h-5m", "inf", "nan", "m5"])
def test_bad_durations_name_the_setting(text):
    with pytest.raises(ConfigError, match="^server.keep_alive: "):
        parse_duration(text, "server.keep_alive")


@pytest.mark.parametrize("text,needle", [
    ('[server]\nmemory_budget = "lots"\n', "server.memory_budget: 'lots' is not a size"),
    ('[server]\nmemory_budget = "gpu=1G"\n', "server.memory_budget: 'gpu=1G': 'gpu' is not a memory pool"),
    ('[server]\nkeep_alive = "soon"\n', "server.keep_alive: 'soon' is not a duration"),
    ('[[models]]\nid = "a"\nkeep_alive = "-3"\n', "models[0] (a).keep_alive: '-3' must be 0 or more seconds"),
    ('[[models]]\nid = "a"\npreload = "sometimes"\n', "models[0].preload: bad value 'sometimes'"),
    ('[[models]]\nid = "a"\ndiscovered = true\n', "models[0]: unknown setting 'discovered'"),
    ('[[models]]\nid = "a"\nexplicit_keys = []\n', "models[0]: unknown setting 'explicit_keys'"),
])
def test_bad_lifecycle_settings(tmp_path, text, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env={})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_models_dir_must_be_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=f"server.models_dir: {tmp_path}/none not found"):
        load_settings(env={"NPUFLOW_MODELS_DIR": str(tmp_path / "none")})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=f"server.models_dir: {tmp_path}/file is not a directory"):
        load_settings(env={"NPUFLOW_MODELS_DIR": str(tmp_path / "file")})


def test_models_dir_without_entries_serves_only_what_it_holds(tmp_path):
    d = _models_dir(tmp_path)
    s = load_settings(env={"NPUFLOW_RUN_DIR": str(tmp_path), "NPUFLOW_MODELS_DIR": str(d)})
    assert [m.id for m in s.models] == ["alpha", "zeta"]                      # no default model; by id
    alpha = s.model("alpha")
    assert (alpha.source, alpha.engine, alpha.preload, alpha.discovered) == (str(d / "pkg"), "cpu", False, True)
    assert alpha.endpoint == f"ipc://{tmp_path}/worker-alpha.sock"
    assert keep_alive_s(alpha, s.server) == 300.0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_settings(env={"NPUFLOW_MODELS_DIR": str(empty)}).models == ()


def test_config_entries_override_discovered_models_per_key(tmp_path):
    d = _models_dir(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[server]\nmodels_dir = "{d}"\nrun_dir = "{tmp_path}"\n'
                   '[[models]]\nid = "zeta"\ncontext_length = 512\n'          # only what it sets changes
                   '[[models]]\nid = "mine"\n'                                # not in the directory: the default model
                   '[[models]]\nid = "alpha"\npreload = true\nengine = "ax"\nsource = "/elsewhere"\n')
    s = load_settings(cfg, env={})
    assert [m.id for m in s.models] == ["zeta", "mine", "alpha"]               # config order, nothing repeated
    zeta = s.model("zeta")
    assert (zeta.source, zeta.engine, zeta.preload, zeta.context_length) == (str(d / "zeta.gguf"), "cpu", False, 512)
    assert not zeta.discovered and keep_alive_s(zeta, s.server) == 300.0
    assert (s.model("mine").source, s.model("mine").preload) == ("default", True)
    alpha = s.model("alpha")
    assert (alpha.source, alpha.engine, alpha.preload) == ("/elsewhere", "ax", True)


def test_rescan_finds_new_packages_and_forgets_removed_ones(tmp_path):
    import shutil
    d = _models_dir(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[server]\nmodels_dir = "{d}"\n[[models]]\nid = "zeta"\nmax_batch = 2\n')
    s = load_settings(cfg, env={})
    assert [m.id for m in s.models] == ["zeta", "alpha"]
    shutil.copy(d / "zeta.gguf", d / "beta.gguf")
    shutil.rmtree(d / "pkg")
    again = s.rescan()
    assert [m.id for m in again.models] == ["zeta", "beta"]
    assert again.model("zeta") == s.model("zeta") and again.model("zeta").max_batch == 2
    assert again.rescan() == again
    assert s.model("beta").source == str(d / "beta.gguf")                      # model() looks again for an unknown id
    with pytest.raises(ConfigError, match=f"no model 'nope' in the configuration or in {d}"):
        s.model("nope")
    plain = load_settings(env={})
    assert plain.rescan() is plain


def test_serve_passes_models_dir_to_its_children(tmp_path, monkeypatch):
    import npuflow.supervisor
    from npuflow import cli
    seen = {}
    monkeypatch.setattr(npuflow.supervisor, "run_supervisor", lambda s, env: seen.update(s=s, env=env) or 0)
    d = tmp_path / "models"
    d.mkdir()
    monkeypatch.delenv("NPUFLOW_MODELS_DIR", raising=False)
    monkeypatch.delenv("NPUFLOW_CONFIG", raising=False)
    assert cli.main(["serve", "--models-dir", str(d), "--port", "8123"]) == 0
    assert seen["s"].server.models_dir == str(d) and seen["s"].models == ()
    assert seen["env"] == {"NPUFLOW_HOST": "127.0.0.1", "NPUFLOW_PORT": "8123", "NPUFLOW_MODELS_DIR": str(d)}
    assert cli.main(["serve"]) == 0 and "NPUFLOW_MODELS_DIR" not in seen["env"]
