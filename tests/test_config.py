"""Settings: defaults, TOML, NPUFLOW_* overrides, and one-line errors for bad values."""
import pytest

from npuflow.config import ConfigError, DEFAULT_MODEL_ID, load_settings


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
