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
