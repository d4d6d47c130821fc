"""The `npuflow` command.

    npuflow serve [--config FILE] [--host H] [--port P]   the whole stack, supervised
                  [--models-dir DIR]                      with every model package found in DIR
    npuflow gateway | tokenizer [--config FILE]           one service (systemd units, containers)
    npuflow worker --model ID [--config FILE]             the worker of one configured model
    npuflow convert SOURCE OUT [...]                      GGUF / safetensors -> model package
    npuflow models [--config FILE]                        configured models and their packages
"""
from __future__ import annotations

import argparse
import sys

from npuflow.config import ConfigError, Settings, load_settings

# A single service's exit status for a configuration error (sysexits' EX_CONFIG): the systemd
# units say RestartPreventExitStatus=78, so a bad configuration is not restarted every second.
EX_CONFIG = 78


def _settings(a: argparse.Namespace) -> Settings:
    overrides = {k: getattr(a, k, None) for k in ("host", "port", "models_dir")}
    return load_settings(a.config, **overrides)


def _cmd_serve(a: argparse.Namespace) -> int:
    from npuflow.supervisor import run_supervisor
    s = _settings(a)
    env = {"NPUFLOW_HOST": s.server.host, "NPUFLOW_PORT": str(s.server.port)}
    if s.server.models_dir:
        env["NPUFLOW_MODELS_DIR"] = s.server.models_dir
    return run_supervisor(s, env)


def _cmd_gateway(a: argparse.Namespace) -> int:
    from npuflow.gateway import run_gateway
    run_gateway(_settings(a))
    return 0


def _cmd_tokenizer(a: argparse.Namespace) -> int:
    from npuflow.tokenizer import run_tokenizer
    run_tokenizer(_settings(a))
    return 0


def _cmd_worker(a: argparse.Namespace) -> int:
    from npuflow.llm_worker import run_worker
    s = _settings(a)
    run_worker(s, s.model(a.model))
    return 0


def _cmd_models(a: argparse.Namespace) -> int:
    from npuflow.models.resolve import resolve_model
    s = _settings(a)
    for m in s.models:
        pkg = resolve_model(m.source, s.server.cache_dir, m.id, int8=m.int8)
        print(f"{m.id}\t{m.engine}\t{pkg.architecture}\tctx={min(m.context_length, pkg.context_length)}\t{pkg.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["convert"]:
        from npuflow.convert import main as convert_main
        return convert_main(argv[1:]) or 0
    ap = argparse.ArgumentParser(prog="npuflow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn, hlp in [("serve", _cmd_serve, "start the whole stack"),
                          ("gateway", _cmd_gateway, "run the HTTP/gRPC gateway"),
                          ("tokenizer", _cmd_tokenizer, "run the tokenizer service"),
                          ("worker", _cmd_worker, "run the worker of one model"),
                          ("models", _cmd_models, "list configured models (fetching/converting them)")]:
        p = sub.add_parser(name, help=hlp)
        p.set_defaults(fn=fn)
        p.add_argument("--config", help="TOML configuration file (or NPUFLOW_CONFIG)")
        if name in ("serve", "gateway"):
            p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
            p.add_argument("--port", type=int, help="port to listen on (default 8000)")
        if name == "serve":
            p.add_argument("--models-dir", help="serve every model package found in this directory "
                                                "(server.models_dir, NPUFLOW_MODELS_DIR)")
        if name == "worker":
            p.add_argument("--model", required=True, help="id of a configured model")
    sub.add_parser("convert", help="convert a GGUF or safetensors model (see npuflow convert -h)")
    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except ConfigError as e:  # one line; nothing was started
        print(f"npuflow: configuration error: {e}", file=sys.stderr)
        return EX_CONFIG if a.cmd in ("gateway", "tokenizer", "worker") else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
