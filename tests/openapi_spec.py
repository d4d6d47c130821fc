"""Bodies checked against OpenAI's own specification (openapi.yaml, OpenAPI 3.1 = JSON Schema
2020-12), where the machine has it: NPUFLOW_OPENAPI_SPEC names the file (CI sets it and then it
must exist), else ../shared/openai/openapi.yaml beside the repository when it is there.

    errors("Response", body) -> list of error strings (empty: the body conforms)
"""
from __future__ import annotations

import functools
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = "NPUFLOW_OPENAPI_SPEC"


def spec_path() -> pathlib.Path | None:
    if os.environ.get(ENV):
        return pathlib.Path(os.environ[ENV])
    p = REPO.parent / "shared" / "openai" / "openapi.yaml"
    return p if p.is_file() else None


@functools.lru_cache(maxsize=1)
def _registry():
    import yaml
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012
    spec = yaml.load(spec_path().read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return Registry().with_resource("urn:openai", Resource.from_contents(spec, default_specification=DRAFT202012))


@functools.lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema
    return jsonschema.Draft202012Validator({"$ref": f"urn:openai#/components/schemas/{name}"}, registry=_registry())


def _leaves(e) -> list:
    """The errors that say why: of an anyOf / oneOf failure, those of the branch meant (one whose
    `type` discriminator matched, the one with fewest errors), recursively."""
    if not e.context:
        return [e]
    branches: dict = {}
    for c in e.context:
        branches.setdefault(c.relative_schema_path[0], []).append(c)
    at = len(e.absolute_path)
    def wrong_kind(errs):
        return any(c.validator in ("const", "enum") and list(c.absolute_path)[at:] == ["type"] for c in errs)
    meant = [b for b in branches.values() if not wrong_kind(b)] or list(branches.values())
    best = min(meant, key=len)
    return [leaf for c in best for leaf in _leaves(c)]


def errors(name: str, body) -> list[str]:
    out = []
    for e in _validator(name).iter_errors(body):
        out += [f"{'/'.join(map(str, d.absolute_path)) or '<root>'}: {d.message[:200]}" for d in _leaves(e)]
    return out
