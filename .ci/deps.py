"""Print the project's requirements from pyproject.toml, one a line (the one source of truth for CI).

    python .ci/deps.py runtime         [project].dependencies as written
    python .ci/deps.py runtime test    ... and the named extras
    python .ci/deps.py --lowest ...    each one pinned to its lower bound (name==X for name>=X)
    python .ci/deps.py --python 3.10 ...   only those whose marker holds on Python 3.10, without
                                           the marker (pip download --python-version evaluates
                                           markers for the Python that runs pip, not the target)
"""
from __future__ import annotations

import pathlib
import re
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pip vendors the same parser
    from pip._vendor import tomli as tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
_BOUND = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(>=|==)\s*([^,;\s]+)\s*(;.*)?$")


def requirements(groups: list[str]) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    out = []
    for g in groups:
        out += project["dependencies"] if g == "runtime" else project["optional-dependencies"][g]
    return out


def lowest(req: str) -> str:
    m = _BOUND.match(req)
    if not m:
        raise SystemExit(f"deps.py: {req!r} has no single lower bound (name>=X or name==X)")
    name, _, version, marker = m.groups()
    return f"{name}=={version}" + (f" {marker}" if marker else "")


def for_python(req: str, version: str) -> str | None:
    """The requirement without its marker if the marker holds on Python `version`, else None."""
    try:
        from packaging.markers import Marker
    except ImportError:
        from pip._vendor.packaging.markers import Marker
    spec, _, marker = req.partition(";")
    if marker.strip() and not Marker(marker.strip()).evaluate(
            {"python_version": version, "python_full_version": version + ".0"}):
        return None
    return spec.strip()


def main(argv: list[str]) -> None:
    args = list(argv)
    pin = "--lowest" in args
    python = None
    if "--python" in args:
        i = args.index("--python")
        python = args[i + 1]
        del args[i:i + 2]
    groups = [a for a in args if a != "--lowest"] or ["runtime"]
    for r in requirements(groups):
        r = lowest(r) if pin else r
        if python:
            r = for_python(r, python)
        if r:
            print(r)


if __name__ == "__main__":
    main(sys.argv[1:])
