"""Typed settings for every service, read from a TOML file and NPUFLOW_* environment variables.

Nothing is read at import time: `load_settings()` is called by the CLI and the result is passed
to each service explicitly. Precedence: defaults < TOML file < environment.

    [server]
    host = "127.0.0.1"          # NPUFLOW_HOST
    port = 8000                 # NPUFLOW_PORT
    api_keys = ["sk-local"]     # NPUFLOW_API_KEYS (comma separated); empty = no auth
    max_body_bytes = 4194304    # NPUFLOW_MAX_BODY_BYTES; larger bodies get 413
    request_timeout_s = 600     # NPUFLOW_REQUEST_TIMEOUT_S; deadline of one request
    stream_write_timeout_s = 30 # NPUFLOW_STREAM_WRITE_TIMEOUT_S; a streamed answer's write may wait this long for
                                # a client that stopped reading, then the request ends and its connection closes
    header_timeout_s = 30       # NPUFLOW_HEADER_TIMEOUT_S; a request's line and headers must arrive within it
                                # (from its first byte, or from the connection's opening), else 408 and close
    body_timeout_s = 60         # NPUFLOW_BODY_TIMEOUT_S; the whole body must arrive within it, else 408 and close
    grpc_host = "127.0.0.1"     # NPUFLOW_GRPC_HOST
    grpc_port = 50051           # NPUFLOW_GRPC_PORT (0 = no gRPC server)
    grpc_tls_cert = ""          # NPUFLOW_GRPC_TLS_CERT: PEM certificate chain; with grpc_tls_key = TLS
    grpc_tls_key = ""           # NPUFLOW_GRPC_TLS_KEY: PEM private key (both or neither)
    run_dir = "/tmp/npuflow-0"  # NPUFLOW_RUN_DIR: where ipc:// socket files live
    cache_dir = "~/.cache/npuflow"  # NPUFLOW_CACHE_DIR: downloaded and converted models
    log_level = "info"          # NPUFLOW_LOG_LEVEL: debug | info | warning | error | critical
    drain_timeout_s = 30        # NPUFLOW_DRAIN_TIMEOUT_S: on SIGTERM the gateway lets in-flight
                                # HTTP and gRPC requests finish this long in all (concurrently),
                                # then ends them; `serve` waits that plus DRAIN_MARGIN_S (15 s) for
                                # the gateway. deploy/systemd's TimeoutStopSec=45 matches 30:
                                # raise both together.
    max_images_per_request = 8  # NPUFLOW_MAX_IMAGES_PER_REQUEST: image parts in one request, over all
                                # its messages (0 = no image input at all)
    max_image_pixels = 16777216 # NPUFLOW_MAX_IMAGE_PIXELS: width x height of one decoded image (4096 x 4096:
                                # a 12-megapixel phone photo passes; one decoded RGB copy is at most 48 MiB)
    max_image_bytes = 20971520  # NPUFLOW_MAX_IMAGE_BYTES: one image file (20 MiB, OpenAI's limit); a data: URL
                                # is also bounded by max_body_bytes, so raise that one too for large files
    fetch_image_urls = false    # NPUFLOW_FETCH_IMAGE_URLS: fetch http(s) image URLs; off = only data: URLs
    image_url_hosts = []        # NPUFLOW_IMAGE_URL_HOSTS (comma separated): the hosts images may be fetched
                                # from: "images.example.com", "*.example.com" (its subdomains) or an IP;
                                # empty = none, even with fetch_image_urls on. Whatever the list says,
                                # addresses that are not public (loopback, private, link-local, multicast,
                                # reserved) are never fetched from, nor redirected to (at most 3 redirects)
    image_fetch_timeout_s = 10  # NPUFLOW_IMAGE_FETCH_TIMEOUT_S: one image's whole fetch, redirects included
    memory_budget = ""          # NPUFLOW_MEMORY_BUDGET: what the loaded models may hold together; loading one
                                # that does not fit unloads idle ones first. "" = no limit; "auto" = what is free
                                # at start (the NPU's free memory, 3/4 of the available RAM); a size for each pool
                                # ("3GiB", "1.5G", "512MB", bytes; binary units); or "ram=2GiB,cmm=3GiB"
                                # (npuflow/models/budget.py)
    keep_alive = "300"          # NPUFLOW_KEEP_ALIVE: how long a model that is not preloaded stays loaded once
                                # idle: seconds, "30s", "5m", "1h", "forever" (or "-1"), "0" (unload when idle)
    models_dir = ""             # NPUFLOW_MODELS_DIR (`npuflow serve --models-dir DIR`): every model found in it
                                # (npuflow packages, pulsar2 / StackFlow directories, HF checkpoint folders,
                                # .gguf files; npuflow/models/catalog.py) is served, loaded on first use
    responses_store_max = 1000  # NPUFLOW_RESPONSES_STORE_MAX: responses kept for GET /v1/responses/{id} and
                                # previous_response_id (requests with store, the default); 0 = none kept
    responses_store_ttl_s = 3600  # NPUFLOW_RESPONSES_STORE_TTL_S: a stored response is forgotten after this
    responses_store_max_bytes = 67108864  # NPUFLOW_RESPONSES_STORE_MAX_BYTES: all stored responses together
                                # (their JSON and conversations, images included); the oldest go first
    conversations_max = 1000    # NPUFLOW_CONVERSATIONS_MAX: conversations of the Conversations API kept (0 = none)
    conversations_ttl_s = 86400  # NPUFLOW_CONVERSATIONS_TTL_S: a conversation not used for this long is forgotten
    conversations_max_bytes = 67108864  # NPUFLOW_CONVERSATIONS_MAX_BYTES: all conversations' items together;
                                # the least recently used go first
    max_embedding_tokens_per_request = 300000  # NPUFLOW_MAX_EMBEDDING_TOKENS_PER_REQUEST: the tokens of all the
                                # inputs of one /v1/embeddings request together (OpenAI's limit); more is a 400
    web_ui = true               # NPUFLOW_WEB_UI: the chat page at / and /chat (services/gateway/web_ui.py);
                                # public, it calls the API with the key its user gives it; false = / is a 404

    [tokenizer]
    endpoint = "ipc://{run_dir}/tokenizer.sock"   # NPUFLOW_TOKENIZER_ENDPOINT

    [[models]]                  # none listed = the default model (none at all when models_dir is set)
    id = "smollm2-135m-instruct"
    source = "default"          # "default", a .gguf file, a safetensors folder or a package folder
    engine = "cpu"              # cpu | ax
    context_length = 2048       # at most the model's own
    max_batch = 8               # sequences decoded together (chosen from bench/compare.py: README, Measured figures)
    threads = 2                 # onnxruntime intra-op threads
    max_queue = 64              # sequences waiting beyond max_batch before 429 (n per prompt of a request)
    prefix_cache = true         # a new prompt reuses the KV of a finished one it starts like
    kv_cache = "float32"        # engine "cpu": "float32" | "int8" (a quarter of the memory, faster attention,
                                # log-probabilities a little further from the float model: README)
    int8 = false                # an embedding model's checkpoint converted on first use: int8 projections
                                # (convert --int8: about 2x faster on a CPU, vectors no longer exact)
    preload = true              # load at start; false = on the first request (models found in models_dir: false)
    keep_alive = ""             # as server.keep_alive; "" = "forever" when preloaded, else server.keep_alive
    endpoint = "ipc://{run_dir}/worker-{id}.sock"
    device_id = -1              # engine "ax": the AXCL card (-1 = default)
    ax_provider = ""            # engine "ax": AxEngineExecutionProvider (on-board) | AXCLRTExecutionProvider (card)
    simulate_timing = ""        # engine "ax" on a PC: "ax650n" | "ax630c" sleeps the boards' per-graph time
                                # (also "ax650", "ax8850" = ax650n; "ax620e" = ax630c)
    [models.sampling]           # defaults for requests that leave a value out
    temperature = 0.7

A [[models]] entry whose id is that of a model found in models_dir changes only the settings it
names: source, engine and preload (false) stay those of the model found unless it sets them.
`Settings.rescan()` lists models_dir again (the gateway does on GET /v1/models), so packages
copied there are served without a restart.
"""
from __future__ import annotations

import ipaddress
import math
import os
import pathlib
import re
import sys
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (the boards' Ubuntu 22.04): the same parser from PyPI
    import tomli as tomllib

DEFAULT_MODEL_ID = "smollm2-135m-instruct"

# The allowed values of the settings that are enums, checked when the configuration loads.
ENGINES = ("cpu", "ax")
AX_PROVIDERS = ("", "AxEngineExecutionProvider", "AXCLRTExecutionProvider")  # engine/ax_runtime.PROVIDERS
KV_CACHES = ("float32", "int8")                                                # engine/cpu.KV_GRAPHS
SIMULATE_TIMING = ("", "ax650n", "ax630c", "ax650", "ax8850", "ax620e")     # engine/ax_timing.PROFILES
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
DRAIN_MARGIN_S = 15.0   # what `serve` waits for the gateway beyond drain_timeout_s (stopping its clients)


class ConfigError(Exception):
    """The configuration is invalid; the message names the setting."""


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout_s: float = 600.0
    stream_write_timeout_s: float = 30.0
    header_timeout_s: float = 30.0
    body_timeout_s: float = 60.0
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    grpc_tls_cert: str = ""
    grpc_tls_key: str = ""
    run_dir: str = ""
    cache_dir: str = ""
    log_level: str = "info"
    drain_timeout_s: float = 30.0   # SIGTERM: in-flight HTTP + gRPC requests finish within this, in all
    max_images_per_request: int = 8
    max_image_pixels: int = 4096 * 4096
    max_image_bytes: int = 20 * 1024 * 1024
    fetch_image_urls: bool = False
    image_url_hosts: tuple[str, ...] = ()
    image_fetch_timeout_s: float = 10.0
    memory_budget: str = ""        # npuflow.models.budget.parse_budget reads it
    keep_alive: str = "300"        # parse_duration; what a model that is not preloaded keeps when idle
    models_dir: str = ""
    responses_store_max: int = 1000          # stored Responses API responses (0 = none are kept)
    responses_store_ttl_s: float = 3600.0    # ... kept at most this long
    responses_store_max_bytes: int = 64 * 1024 * 1024   # ... holding at most this together
    conversations_max: int = 1000            # Conversations API conversations (0 = none are kept)
    conversations_ttl_s: float = 86400.0     # ... each forgotten this long after its last use
    conversations_max_bytes: int = 64 * 1024 * 1024     # ... holding at most this together
    max_embedding_tokens_per_request: int = 300_000   # all inputs of one embeddings request together
    web_ui: bool = True            # the chat page (GET /, /chat, /ui/*)


@dataclass(frozen=True)
class TokenizerSettings:
    endpoint: str = ""


@dataclass(frozen=True)
class ModelSettings:
    id: str = DEFAULT_MODEL_ID
    source: str = "default"
    engine: str = "cpu"
    context_length: int = 2048
    max_batch: int = 8
    threads: int = 2
    max_queue: int = 64
    prefix_cache: bool = True    # reuse a free slot's KV for a prompt that starts the same way
    kv_cache: str = "float32"    # engine "cpu": KV cache type, float32 | int8 (convert/kv_int8.py)
    int8: bool = False           # an embedding checkpoint converted on first use gets int8 projections
    endpoint: str = ""
    device_id: int = -1          # engine "ax": AXCL card to use (-1 = the runtime's default)
    ax_provider: str = ""        # engine "ax": AxEngineExecutionProvider | AXCLRTExecutionProvider
    simulate_timing: str = ""    # engine "ax": ax650n | ax630c adds the boards' per-graph latency
    sampling: Mapping[str, Any] = field(default_factory=dict)
    preload: bool = True         # loaded at start (else on its first request)
    keep_alive: str = ""         # idle time before unload; "" = forever when preloaded, else server.keep_alive
    discovered: bool = False     # found in server.models_dir, no [[models]] entry for it
    # the keys its [[models]] entry set (what a model found in models_dir under the same id takes from it)
    explicit_keys: frozenset = field(default=frozenset(), compare=False, repr=False)


INTERNAL_MODEL_KEYS = ("discovered", "explicit_keys")   # not settable in the configuration
DISCOVERY_KEYS = ("source", "engine", "preload")        # what a model found in models_dir brings


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    models: tuple[ModelSettings, ...] = ()
    config_path: str = ""

    def model(self, model_id: str) -> ModelSettings:
        """The model of that id; one that is not listed yet is looked for in models_dir again."""
        for m in self.models:
            if m.id == model_id:
                return m
        if self.server.models_dir:
            for m in self.rescan().models:
                if m.id == model_id:
                    return m
            raise ConfigError(f"no model '{model_id}' in the configuration or in {self.server.models_dir}")
        raise ConfigError(f"no model '{model_id}' in the configuration")

    def rescan(self) -> "Settings":
        """The same settings with models_dir listed again: the [[models]] entries first in their
        order, then the models found there without an entry, by id. Cheap: a directory listing and
        small json reads (no hashing, no conversion)."""
        if not self.server.models_dir:
            return self
        return replace(self, models=_with_discovered([m for m in self.models if not m.discovered], self.server))


def parse_duration(text: str, where: str) -> float:
    """Seconds of "300", "2.5", "30s", "5m", "1h", "1h30m", "500ms"; math.inf for "forever" or
    "-1"; "0" is 0. Raises ConfigError naming `where`."""
    t = str(text).strip().lower()
    if t == "forever":
        return math.inf
    try:
        v = float(t)
    except ValueError:
        parts = _DURATION_PART.findall(t)
        if not t or "".join(n + u for n, u in parts) != t:
            raise ConfigError(f"{where}: {text!r} is not a duration (seconds, \"30s\", \"5m\", \"1h\", "
                              f"\"forever\" or \"-1\", \"0\")") from None
        return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if v == -1:
        return math.inf
    if not (math.isfinite(v) and v >= 0):
        raise ConfigError(f"{where}: {text!r} must be 0 or more seconds, or \"forever\" (\"-1\")")
    return v


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_s(model: ModelSettings, server: ServerSettings) -> float:
    """How long the model stays loaded once idle (math.inf = until stopped): its keep_alive, else
    forever for a preloaded model, else the server's."""
    if model.keep_alive:
        return parse_duration(model.keep_alive, f"model {model.id} keep_alive")
    if model.preload:
        return math.inf
    return parse_duration(server.keep_alive, "server.keep_alive")


MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def _coerce(cls, values: Mapping[str, Any], where: str):
    known = {f.name: f for f in fields(cls)}
    out = {}
    for key, val in values.items():
        if key not in known or (cls is ModelSettings and key in INTERNAL_MODEL_KEYS):
            raise ConfigError(f"{where}: unknown setting '{key}'")
        default = getattr(cls(), key) if key != "sampling" else {}
        try:
            if isinstance(default, bool):
                if not isinstance(val, bool):
                    if str(val).strip().lower() not in _TRUE + _FALSE:
                        raise ValueError("use true or false")
                    val = str(val).strip().lower() in _TRUE
            elif isinstance(default, int):
                val = int(val)
            elif isinstance(default, float):
                val = float(val)
            elif isinstance(default, tuple):
                val = tuple(s.strip() for s in val.split(",") if s.strip()) if isinstance(val, str) else tuple(val)
            elif isinstance(default, str):
                val = str(val)
            elif key == "sampling" and not isinstance(val, Mapping):
                raise TypeError("a table")
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}.{key}: bad value {val!r} ({e})") from None
        out[key] = val
    return cls(**out)


def _env_overrides(env: Mapping[str, str], cls, prefix: str) -> dict[str, str]:
    return {f.name: env[prefix + f.name.upper()] for f in fields(cls) if prefix + f.name.upper() in env}


def load_settings(config_path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                  **cli_overrides: Any) -> Settings:
    """Build Settings from defaults, the TOML file, NPUFLOW_* variables and CLI flags (in that order)."""
    env = os.environ if env is None else env
    path = config_path or env.get("NPUFLOW_CONFIG") or ""
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(pathlib.Path(path).expanduser().read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
    unknown = set(data) - {"server", "tokenizer", "models"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")

    server_vals = dict(data.get("server", {}))
    server_vals.update(_env_overrides(env, ServerSettings, "NPUFLOW_"))
    server_vals.update({k: v for k, v in cli_overrides.items() if v is not None})
    server = _coerce(ServerSettings, server_vals, "server")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    server = replace(server,
                     run_dir=server.run_dir or f"/tmp/npuflow-{uid}",
                     cache_dir=str(pathlib.Path(server.cache_dir or _default_cache_dir()).expanduser()))
    if not (0 < server.port < 65536) or not (0 <= server.grpc_port < 65536):
        raise ConfigError("server.port / server.grpc_port must be valid TCP ports")
    _check_grpc_tls(server)
    if server.max_body_bytes < 1024:
        raise ConfigError("server.max_body_bytes must be at least 1024")
    server = replace(server, log_level=_one_of("server.log_level", server.log_level.lower(), LOG_LEVELS))
    if not server.drain_timeout_s >= 0:
        raise ConfigError(f"server.drain_timeout_s: {server.drain_timeout_s} must be 0 or more seconds")
    if not server.request_timeout_s > 0:
        raise ConfigError(f"server.request_timeout_s: {server.request_timeout_s} must be more than 0 seconds")
    if not server.stream_write_timeout_s > 0:
        raise ConfigError(f"server.stream_write_timeout_s: {server.stream_write_timeout_s} must be more than 0 seconds")
    server = _check_images(server)
    server = _check_lifecycle(server)

    tok_vals = dict(data.get("tokenizer", {}))
    tok_vals.update(_env_overrides(env, TokenizerSettings, "NPUFLOW_TOKENIZER_"))
    tokenizer = _coerce(TokenizerSettings, tok_vals, "tokenizer")
    tokenizer = replace(tokenizer, endpoint=(tokenizer.endpoint or "ipc://{run_dir}/tokenizer.sock")
                        .format(run_dir=server.run_dir))

    raw_models = data.get("models") or ([] if server.models_dir else [{}])
    if not isinstance(raw_models, list):
        raise ConfigError(f"{path}: 'models' must be an array of tables ([[models]])")
    models = []
    for i, mv in enumerate(raw_models):
        m = _coerce(ModelSettings, mv, f"models[{i}]")
        if not MODEL_ID_RE.match(m.id):
            raise ConfigError(f"models[{i}].id {m.id!r}: use letters, digits and . _ : -")
        if m.context_length < 16 or m.max_batch < 1 or m.threads < 1 or m.max_queue < 1:
            raise ConfigError(f"models[{i}] ({m.id}): context_length, max_batch, threads, max_queue must be positive")
        where = f"models[{i}] ({m.id})"
        _one_of(f"{where}.engine", m.engine, ENGINES)
        _one_of(f"{where}.ax_provider", m.ax_provider, AX_PROVIDERS)
        _one_of(f"{where}.kv_cache", m.kv_cache, KV_CACHES)
        m = replace(m, simulate_timing=_one_of(f"{where}.simulate_timing", m.simulate_timing.lower(), SIMULATE_TIMING))
        if m.keep_alive:
            parse_duration(m.keep_alive, f"{where}.keep_alive")
        models.append(replace(m, endpoint=_endpoint(m, server), sampling=dict(m.sampling),
                              explicit_keys=frozenset(mv)))
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        raise ConfigError("model ids must be unique")
    return Settings(server=server, tokenizer=tokenizer, models=_with_discovered(models, server),
                    config_path=str(path))


def _endpoint(m: ModelSettings, server: ServerSettings) -> str:
    return (m.endpoint or "ipc://{run_dir}/worker-{id}.sock").format(run_dir=server.run_dir, id=m.id)


def _with_discovered(entries: list[ModelSettings], server: ServerSettings) -> tuple[ModelSettings, ...]:
    """The [[models]] entries (source, engine, preload of a model found in models_dir under the same
    id, unless the entry sets them), then the other models found there, by id."""
    if not server.models_dir:
        return tuple(entries)
    from .models.catalog import discover
    found = {m.id: m for m in discover(server.models_dir)}
    out = []
    for e in entries:
        d = found.pop(e.id, None)
        if d is not None:
            e = replace(e, **{k: getattr(d, k) for k in DISCOVERY_KEYS if k not in e.explicit_keys})
        out.append(e)
    out += [replace(d, endpoint=_endpoint(d, server)) for d in sorted(found.values(), key=lambda m: m.id)]
    return tuple(out)


def _check_lifecycle(server: ServerSettings) -> ServerSettings:
    """memory_budget and keep_alive must parse; models_dir must be a directory (made absolute)."""
    from .models.budget import parse_budget
    parse_budget(server.memory_budget, "server.memory_budget")
    parse_duration(server.keep_alive, "server.keep_alive")
    if server.models_dir:
        d = pathlib.Path(server.models_dir).expanduser()
        if not d.is_dir():
            what = "is not a directory" if d.exists() else "not found"
            raise ConfigError(f"server.models_dir: {server.models_dir} {what}")
        server = replace(server, models_dir=str(d.resolve()))
    return server


def _one_of(where: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        names = ", ".join(f'"{a}"' for a in allowed)
        raise ConfigError(f"{where}: {value!r} is not one of {names}")
    return value


# an image_url_hosts entry: a host name, "*." + a host name (its subdomains), or an IP address
_HOST_NAME = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?$")


def _check_images(server: ServerSettings) -> ServerSettings:
    for key, lo in (("max_images_per_request", 0), ("max_image_pixels", 1), ("max_image_bytes", 1),
                    ("responses_store_max", 0), ("responses_store_max_bytes", 0),
                    ("conversations_max", 0), ("conversations_max_bytes", 0),
                    ("max_embedding_tokens_per_request", 1)):
        if getattr(server, key) < lo:
            raise ConfigError(f"server.{key}: {getattr(server, key)} must be at least {lo}")
    for key in ("responses_store_ttl_s", "conversations_ttl_s"):
        if not getattr(server, key) > 0:
            raise ConfigError(f"server.{key}: {getattr(server, key)} must be more than 0 seconds")
    if not server.image_fetch_timeout_s > 0:
        raise ConfigError(f"server.image_fetch_timeout_s: {server.image_fetch_timeout_s} must be more than 0 seconds")
    hosts = []
    for h in server.image_url_hosts:
        h = str(h).strip().lower()
        if not (_is_ip(h.strip("[]")) or (len(h) <= 253 and _HOST_NAME.match(h))):
            raise ConfigError(f"server.image_url_hosts: {h!r} is not a host name, '*.' and a host name, "
                              "or an IP address (no scheme, port or path)")
        hosts.append(h.strip("[]").rstrip("."))
    return replace(server, image_url_hosts=tuple(hosts))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_grpc_tls(server: ServerSettings) -> None:
    if bool(server.grpc_tls_cert) != bool(server.grpc_tls_key):
        raise ConfigError("server.grpc_tls_cert and server.grpc_tls_key must be set together")
    if server.grpc_port:
        for key in ("grpc_tls_cert", "grpc_tls_key"):
            path = getattr(server, key)
            if path and not pathlib.Path(path).expanduser().is_file():
                raise ConfigError(f"server.{key}: file {path} not found")


def _default_cache_dir() -> str:
    import platformdirs
    return platformdirs.user_cache_dir("npuflow")
