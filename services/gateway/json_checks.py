"""Checks over a parsed JSON value as a whole, before any field is read.

JSON text can hold what no later step is ready for: containers nested deeper than Python's
recursion limit, and lone UTF-16 surrogates (`"\\ud800"`) that `json.loads` accepts but that no
UTF-8 encoder (the tokenizer, protobuf) can write. `check_tree` walks the value once, without
recursion, and rejects both with a 400 naming the place (`messages[1].content[2].text`); the
same walk bounds a JSON schema's depth and size for structured output.
"""
from __future__ import annotations

import re
from typing import Any

from npuflow.gateway.errors import bad_param

MAX_DEPTH = 64          # nested arrays/objects in a request body
MAX_SCHEMA_DEPTH = 48   # nested arrays/objects in one JSON schema (response_format, tool parameters)
MAX_SCHEMA_NODES = 20000

_SURROGATE = re.compile("[\ud800-\udfff]")


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def check_tree(value: Any, param: str = "", max_depth: int = MAX_DEPTH, max_nodes: int | None = None,
               what: str = "the request body") -> None:
    """400 when `value` nests deeper than `max_depth` or has more than `max_nodes` values (naming
    `param`, or the top-level field of a body), or holds a string or object key with a lone
    surrogate (naming its place, `param` + path)."""
    stack = [(value, param, 0)]
    nodes = 0
    while stack:
        v, path, depth = stack.pop()
        nodes += 1
        if max_nodes is not None and nodes > max_nodes:
            raise _bad(param, f"{what} has more than {max_nodes} values", "too_large")
        if isinstance(v, str):
            if _SURROGATE.search(v):
                raise _bad(path, "the string holds a lone UTF-16 surrogate (such as \\ud800), which is not a "
                                 "Unicode character", "invalid_string")
            continue
        if not isinstance(v, (dict, list)):
            continue
        if depth >= max_depth:
            top = param or re.split(r"[.\[]", path, maxsplit=1)[0]
            raise _bad(top, f"{what} is nested more than {max_depth} levels deep", "too_deep")
        items = v.items() if isinstance(v, dict) else enumerate(v)
        children = []
        for k, x in items:
            if isinstance(k, str) and _SURROGATE.search(k):
                raise _bad(_child(path, _SURROGATE.sub("\ufffd", k)), "the object key holds a lone UTF-16 "
                           "surrogate (such as \\ud800), which is not a Unicode character", "invalid_string")
            children.append((x, _child(path, k), depth + 1))
        stack.extend(reversed(children))   # the first child is looked at first


def _bad(param: str, what: str, code: str):
    name = param if len(param) <= 200 else param[:197] + "..."
    return bad_param(name or None, f"Invalid '{name or 'body'}': {what}.", code=code)
