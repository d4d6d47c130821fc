"""Generate the Python code for proto/ into npuflow/v1 (the one command for it).

    python -m npuflow.protogen            # write npuflow/v1/*_pb2*.py
    python -m npuflow.protogen --check    # exit 1 if the committed code differs
"""
from __future__ import annotations

import argparse
import filecmp
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "npuflow" / "v1"


def proto_files() -> list[pathlib.Path]:
    return sorted((PROTO_DIR / "npuflow" / "v1").glob("*.proto"))


def _has_service(proto: pathlib.Path) -> bool:
    """gRPC stubs are made only for files that define a service (the others would be empty)."""
    return any(line.lstrip().startswith("service ") for line in proto.read_text().splitlines())


def generate(out_root: pathlib.Path) -> pathlib.Path:
    """Run protoc (from grpcio-tools) on every .proto; return the folder of npuflow/v1 code."""
    from grpc_tools import protoc

    files = [str(p.relative_to(PROTO_DIR)) for p in proto_files()]
    services = [str(p.relative_to(PROTO_DIR)) for p in proto_files() if _has_service(p)]
    include = f"-I{PROTO_DIR}"
    for args in (["protoc", include, f"--python_out={out_root}", f"--pyi_out={out_root}", *files],
                 ["protoc", include, f"--grpc_python_out={out_root}", *services]):
        if len(args) > 3 and protoc.main(args) != 0:
            raise SystemExit("protoc failed")
    out = out_root / "npuflow" / "v1"
    (out / "__init__.py").write_text('"""Code generated from proto/npuflow/v1 by python -m npuflow.protogen."""\n')
    return out


def differences() -> list[str]:
    """Names of generated files that differ from (or are missing in) npuflow/v1."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(pathlib.Path(tmp))
        names = {p.name for p in fresh.iterdir()} | {p.name for p in OUT_DIR.glob("*.py*")}
        return sorted(n for n in names
                      if not (fresh / n).exists() or not (OUT_DIR / n).exists()
                      or not filecmp.cmp(fresh / n, OUT_DIR / n, shallow=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    a = ap.parse_args(argv)
    if a.check:
        diff = differences()
        if diff:
            print("generated code is stale: " + ", ".join(diff) + " (run python -m npuflow.protogen)")
            return 1
        print("generated code matches proto/")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(pathlib.Path(tmp))
        OUT_DIR.mkdir(exist_ok=True)
        for old in OUT_DIR.glob("*.py*"):
            old.unlink()
        for p in fresh.iterdir():
            (OUT_DIR / p.name).write_bytes(p.read_bytes())
    print(f"wrote {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
