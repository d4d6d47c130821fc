"""response_format, tools and tool_choice -> the grammar the worker enforces while decoding.

- response_format {"type": "json_object"}: any JSON object; {"type": "json_schema",
  "json_schema": {"name", "schema", "strict"}}: that schema. Both become an llguidance grammar
  (compact JSON, no free whitespace, so a small model cannot wander off in blank lines), checked
  here so an invalid schema is a 400 naming `response_format` before anything is queued:
  one that nests too deep or is too large (json_checks), one llguidance cannot compile, and one
  no JSON value satisfies (checked by compiling it as the worker does, over a vocabulary of the
  256 bytes, and asking for the first token mask: a `$ref` that only refers to itself has none).
- tool_choice "required" or {"type": "function", "function": {"name"}} forces the answer to be
  one call, {"name": ..., "arguments": {...}} with the arguments matching the function's
  `parameters` schema; "auto" (the default with tools) leaves the model free and the answer is
  parsed for calls (tool_calls.py); "none" keeps the tools in the prompt but never parses calls.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from npuflow.gateway.errors import ApiError, bad_param, one_line
from npuflow.gateway.json_checks import MAX_SCHEMA_DEPTH, MAX_SCHEMA_NODES, check_tree

try:
    import llguidance as _llg
except ImportError:  # pragma: no cover
    _llg = None

_JSON_OPTIONS = {"whitespace_flexible": False}


@dataclass
class Structured:
    grammar: str = ""            # llguidance grammar text for the worker ("" = free text)
    grammar_param: str = ""      # the field it came from, for errors
    tools: list[dict] = field(default_factory=list)
    tool_choice: str = "none"    # none | auto | required | function
    parse_tool_calls: bool = False

    def names(self) -> set[str]:
        """The functions the answer may call."""
        return {t["function"]["name"] for t in self.tools}


class _ByteVocab:
    """What llguidance's TokenizerWrapper reads: one token per byte, and an end token."""
    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<end>"]
    special_token_ids = [256]

    def __call__(self, text) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else bytes(text))


@functools.lru_cache(maxsize=1)
def _byte_tokenizer():
    return _llg.LLTokenizer(_llg.TokenizerWrapper(_ByteVocab()))


def _satisfiable(schema: Any) -> bool:
    """False when the schema certainly admits no value because a required part of it goes
    through local `$ref`s that never end (`{"$defs": {"a": {"$ref": "#/$defs/a"}}, ...}` deep
    inside a required property, which the first token mask cannot see). The productive
    definitions are found as a fixpoint; anything this does not model counts as satisfiable."""
    if not isinstance(schema, dict):
        return True
    defs = {"#": schema}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            defs.update({f"#/{key}/{name}": d for name, d in schema[key].items()})
    if len(defs) > 200:
        return True
    ok = {ref: False for ref in defs}

    def productive(s: Any) -> bool:
        if not isinstance(s, dict):
            return s is not False
        ref = s.get("$ref")
        if isinstance(ref, str) and ref in ok and not ok[ref]:
            return False
        if isinstance(s.get("allOf"), list) and not all(productive(x) for x in s["allOf"]):
            return False
        for key in ("anyOf", "oneOf"):
            if isinstance(s.get(key), list) and s[key] and not any(productive(x) for x in s[key]):
                return False
        kind = s.get("type")
        if kind == "object" and isinstance(s.get("properties"), dict) and isinstance(s.get("required"), list):
            props = s["properties"]
            if not all(productive(props[r]) for r in s["required"] if isinstance(r, str) and r in props):
                return False
        if kind == "array" and isinstance(s.get("minItems"), int) and s["minItems"] > 0 and "prefixItems" not in s:
            if not productive(s.get("items", True)):
                return False
        return True

    changed = True
    while changed:
        changed = False
        for ref, d in defs.items():
            if not ok[ref] and productive(d):
                ok[ref] = changed = True
    return ok["#"]


def _grammar(schema: Any, param: str) -> str:
    if _llg is None:
        raise ApiError(400, f"'{param}' needs structured output, which this server does not have "
                            "(llguidance is not installed).", param=param, code="unsupported_value")
    check_tree(schema, param, MAX_SCHEMA_DEPTH, MAX_SCHEMA_NODES, what="the schema")
    try:
        g = _llg.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
        err = _llg.LLMatcher.validate_grammar(g, _byte_tokenizer())
        if not err and not _satisfiable(schema):
            err = "no JSON value satisfies it (a $ref cycle that every value must go through)"
        if not err:
            m = _llg.LLMatcher(_byte_tokenizer(), g, log_level=0)
            m.compute_logit_bias()   # the first step: an error when nothing can be written at all
            if m.is_error():
                err = ("no JSON value satisfies it (for example a $ref that only refers to itself)"
                       if "NoExtensionBias" in m.get_error() else m.get_error())
    except (ValueError, TypeError, RuntimeError, RecursionError) as e:
        err = str(e)
    if err:
        raise bad_param(param, f"Invalid schema in '{param}': {one_line(err)}")
    return g


def response_format_grammar(rf: Any) -> str:
    if rf is None:
        return ""
    if not isinstance(rf, dict):
        raise bad_param("response_format", "Invalid type for 'response_format': expected an object.",
                        code="invalid_type")
    kind = rf.get("type", "text")
    if kind == "text":
        return ""
    if kind == "json_object":
        return _grammar({"type": "object"}, "response_format")
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("name"), str):
            raise bad_param("response_format.json_schema", "Missing required parameter: "
                            "'response_format.json_schema' with a 'name'.", code="missing_required_parameter")
        schema = js.get("schema", {})
        if not isinstance(schema, dict):
            raise bad_param("response_format.json_schema.schema", "The schema must be a JSON object.")
        return _grammar(schema, "response_format")
    raise bad_param("response_format.type", f"Invalid value: {kind!r}. Supported values are: 'text', "
                                            "'json_object' and 'json_schema'.")


def _tools(v: Any) -> list[dict]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise bad_param("tools", "Invalid type for 'tools': expected an array.", code="invalid_type")
    for i, t in enumerate(v):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict):
            raise bad_param(f"tools[{i}]", "Each tool must be {\"type\": \"function\", \"function\": {...}}.")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_param(f"tools[{i}].function.name", f"Missing required parameter: 'tools[{i}].function.name'.",
                            code="missing_required_parameter")
        params = fn.get("parameters", {"type": "object"})
        if not isinstance(params, dict):
            raise bad_param(f"tools[{i}].function.parameters", "The parameters must be a JSON schema object.")
    return v


def _rebase_refs(schema: Any, at: str) -> Any:
    """`schema` with its local `$ref`s ("#", "#/$defs/x") pointing into `at`, the JSON pointer
    where it now sits inside a larger schema (a tool's parameters inside the forced call)."""
    if isinstance(schema, dict):
        return {k: ("#" + at + v[1:] if k == "$ref" and isinstance(v, str) and v.startswith("#")
                    else _rebase_refs(v, at)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebase_refs(v, at) for v in schema]
    return schema


def _call_schema(fn: dict, at: str = "") -> dict:
    """The forced call `{"name", "arguments"}` as a schema placed at JSON pointer `at`."""
    params = _rebase_refs(fn.get("parameters") or {"type": "object"}, at + "/properties/arguments")
    return {"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False}


def parse_structured(body: dict) -> Structured:
    """The chat request's response_format, tools, tool_choice and parallel_tool_calls."""
    out = Structured(grammar=response_format_grammar(body.get("response_format")))
    if out.grammar:
        out.grammar_param = "response_format"
    out.tools = _tools(body.get("tools"))
    ptc = body.get("parallel_tool_calls")
    if ptc is not None and not isinstance(ptc, bool):
        raise bad_param("parallel_tool_calls", "Invalid type for 'parallel_tool_calls': expected a boolean.",
                        code="invalid_type")
    tc = body.get("tool_choice")
    if tc is None:
        tc = "auto" if out.tools else "none"
    names = {t["function"]["name"]: t["function"] for t in out.tools}
    if isinstance(tc, str):
        if tc not in ("none", "auto", "required"):
            raise bad_param("tool_choice", f"Invalid value: {tc!r}. Supported values are: 'none', 'auto' and "
                                           "'required', or a named function.")
        if tc != "none" and not out.tools:
            raise bad_param("tool_choice", f"tool_choice {tc!r} needs 'tools'.")
        forced = list(names.values()) if tc == "required" else []
    elif isinstance(tc, dict):
        name = (tc.get("function") or {}).get("name") if isinstance(tc.get("function"), dict) else None
        if tc.get("type") != "function" or name not in names:
            raise bad_param("tool_choice", "tool_choice must name one of the functions in 'tools': "
                                           "{\"type\": \"function\", \"function\": {\"name\": ...}}.")
        forced, tc = [names[name]], "function"
    else:
        raise bad_param("tool_choice", "Invalid type for 'tool_choice': expected a string or an object.",
                        code="invalid_type")
    out.tool_choice = tc
    out.parse_tool_calls = tc != "none"
    if forced:
        if out.grammar:
            raise bad_param("tool_choice", "A forced tool_choice cannot be combined with a JSON response_format.")
        schema = (_call_schema(forced[0]) if len(forced) == 1 else
                  {"anyOf": [_call_schema(f, f"/anyOf/{i}") for i, f in enumerate(forced)]})
        out.grammar, out.grammar_param = _grammar(schema, "tool_choice"), "tool_choice"
    return out


def after_thinking(grammar: str, opened: bool) -> str:
    """`grammar` (as _grammar makes it) applied to the answer of a model that thinks first: the
    rest of the <think> block the prompt `opened`, or else an optional block the model opens
    itself, free text up to `</think>`, blank lines, then the grammar's text."""
    top = json.loads(grammar)
    inner = top["grammars"][0]["name"]
    head = "start: think answer\n" if opened else 'start: ("<think>" think)? answer\n'
    lark = head + f'think[stop="</think>"]: /(?s:.*)/\nanswer: /\\n*/ @{inner}\n'
    return json.dumps({"grammars": [{"name": "after_thinking", "lark_grammar": lark}] + top["grammars"]})


def tools_json(s: Structured) -> str:
    return json.dumps(s.tools) if s.tools else ""
