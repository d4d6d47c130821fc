"""A corpus of malformed HTTP requests for every route of the gateway, and a runner that sends it.

Used by tests/gateway/test_bad_input_corpus.py (against a gateway with fake peers) and by
bench/fuzz_inputs.py (against a running stack). Standard library only. Each case is one request:
wrong methods and content types, bodies that are not JSON objects, every field with values of
the wrong type, numbers far out of range (huge, negative, NaN, Infinity, 1e308), nesting, lone
surrogates, base64-looking junk, very long strings, a body over the size limit and a gzip bomb.
Image parts: bad base64, files that are not images, cut or
too large (a decompression bomb), unsupported schemes, URLs to fetch, wrong roles, too many.
The answer to each must be below 500 and, when it is an error, OpenAI-shaped:
`{"error": {"message", "type", "param", "code"}}` as JSON.

Requests that happen to be valid ask for at most 2 tokens (both max_tokens keys are set, so a
mutation of one still leaves a small limit in most cases), so a real model answers them quickly.
"""
from __future__ import annotations

import base64
import gzip
import http.client
import json
import struct
import urllib.parse
import zlib
from dataclasses import dataclass, field
from typing import Iterator

CHAT, COMPL, RESP = "/v1/chat/completions", "/v1/completions", "/v1/responses"
CONV = "/v1/conversations"


@dataclass
class Case:
    name: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict = field(default_factory=dict)   # Content-Type defaults to JSON when a body is set
    auth: bool = True                             # add the runner's API key


def _dumps(v) -> bytes:
    """JSON text as a careless client writes it: NaN/Infinity allowed, lone surrogates escaped."""
    return json.dumps(v, allow_nan=True).encode()


def _deep(n: int, leaf=1):
    v = leaf
    for _ in range(n):
        v = [v]
    return v


def junk_values(long_len: int = 20000) -> list[tuple[str, object]]:
    """(label, value) pairs, none of them right for most fields."""
    return [
        ("null", None), ("true", True), ("false", False), ("zero", 0), ("neg1", -1), ("half", 0.5),
        ("negzero", -0.0), ("i32max+1", 2 ** 31), ("u32max+1", 2 ** 32), ("i64max+1", 2 ** 63),
        ("u64max+1", 2 ** 64), ("1e30", 10 ** 30), ("-1e30", -10 ** 30), ("1e308", 1e308),
        ("-1e308", -1e308), ("1e400digits", 10 ** 400), ("nan", float("nan")), ("inf", float("inf")),
        ("-inf", float("-inf")), ("empty", ""), ("str", "x"), ("surrogate", "\ud800"),
        ("low-surrogate", "a\udfffb"), ("long", "y" * long_len), ("list", []), ("list1", [1]),
        ("liststr", ["a", 5, None]), ("obj", {}), ("objjunk", {"a": {"b": [None]}}), ("deep40", _deep(40)),
        ("base64ish", "data:image/png;base64,@@@@not==base64!!"), ("nul", "a\x00b"),
    ]


CHAT_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
               "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "seed", "n",
               "stop", "stop_token_ids", "ignore_eos", "logprobs", "top_logprobs", "response_format", "tools",
               "tool_choice", "parallel_tool_calls", "stream", "stream_options", "user", "audio", "modalities",
               "functions", "function_call"]
RESP_FIELDS = ["model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "top_logprobs",
               "include", "tools", "tool_choice", "parallel_tool_calls", "text", "reasoning", "store",
               "previous_response_id", "metadata", "stream", "stream_options", "background", "truncation",
               "conversation", "prompt", "user", "chat_template_kwargs", "context_management"]
COMPL_FIELDS = ["model", "prompt", "max_tokens", "temperature", "top_p", "logprobs", "echo", "suffix", "best_of",
                "n", "stop", "seed", "logit_bias", "stream", "stream_options"]


def png(width: int, height: int, rows: bytes | None = None) -> bytes:
    """An RGB PNG file written with the standard library (`rows`: the filtered scanlines, zeros
    by default); a header claiming a huge size with few rows makes a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    if rows is None:
        rows = (b"\0" + b"\x7f" * (3 * width)) * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_parts() -> dict[str, list]:
    """Messages with image parts, nearly all wrong (a text-only model refuses the rest)."""
    ok = _data_url(png(4, 3))

    def user(*parts, role="user"):
        return [{"role": "system", "content": "s"}, {"role": role, "content": [{"type": "text", "text": "x"}, *parts]}]

    def img(url, **kw):
        return {"type": "image_url", "image_url": {"url": url, **kw}}
    bomb = png(60000, 60000, b"\0" * 1000)
    return {
        "img-valid": user(img(ok)), "img-valid-string": user({"type": "image_url", "image_url": ok}),
        "img-input-image": user({"type": "input_image", "image_url": ok, "detail": "low"}),
        "img-b64-garbage": user(img("data:image/png;base64,@@@@not==base64!!")),
        "img-b64-truncated": user(img(ok[:-5])), "img-b64-empty": user(img("data:image/png;base64,")),
        "img-b64-urlsafe": user(img(ok.replace("+", "-").replace("/", "_") + "-_")),
        "img-not-base64": user(img("data:image/png,rawbytes")), "img-no-comma": user(img("data:image/png;base64")),
        "img-text": user(img(_data_url(b"just some text"))), "img-png-cut": user(img(_data_url(png(50, 40)[:60]))),
        "img-bomb": user(img(_data_url(bomb))), "img-mime-svg": user(img(_data_url(b"<svg/>", "image/svg+xml"))),
        "img-mime-junk": user(img(_data_url(png(2, 2), "x" * 300))),
        "img-file": user(img("file:///etc/passwd")), "img-ftp": user(img("ftp://example.com/a.png")),
        "img-http": user(img("http://169.254.169.254/latest/meta-data/")),
        "img-https": user(img("https://images.example.com/a.png")), "img-no-scheme": user(img("a.png")),
        "img-empty-url": user(img("")), "img-long-url": user(img("https://x.example.com/" + "a" * 20000)),
        "img-url-int": user(img(5)), "img-url-null": user(img(None)), "img-url-list": user({"type": "image_url",
                                                                                          "image_url": [ok]}),
        "img-missing": user({"type": "image_url"}), "img-detail-junk": user(img(ok, detail="ultra")),
        "img-detail-int": user(img(ok, detail=3)), "img-file-id": user({"type": "input_image", "file_id": "f"}),
        "img-system": user(img(ok), role="system"), "img-assistant": user(img(ok), role="assistant"),
        "img-tool": user(img(ok), role="tool"), "img-many": user(*[img(ok)] * 40),
    }


def cases(model: str, max_body_bytes: int = 4 * 1024 * 1024) -> Iterator[Case]:
    """The whole corpus for a gateway serving `model` with the given body limit."""
    msgs = [{"role": "user", "content": "hi"}]
    chat = {"model": model, "messages": msgs, "max_tokens": 2, "max_completion_tokens": 2}
    compl = {"model": model, "prompt": "hi", "max_tokens": 2}
    resp = {"model": model, "input": "hi", "max_output_tokens": 16}
    values = junk_values()

    # every field of the generation routes, with every junk value
    for path, base, names in ((CHAT, chat, CHAT_FIELDS), (COMPL, compl, COMPL_FIELDS), (RESP, resp, RESP_FIELDS)):
        for key in names:
            for label, v in values:
                yield Case(f"{path} {key}={label}", "POST", path, _dumps({**base, key: v}))
    for key in ("model", "prompt", "messages", "tokens", "add_special_tokens", "tools"):
        for label, v in values:
            yield Case(f"/tokenize {key}={label}", "POST", "/tokenize",
                       _dumps({"model": model, "prompt": "hi", key: v}))
    for key in ("model", "tokens"):
        for label, v in values:
            yield Case(f"/detokenize {key}={label}", "POST", "/detokenize", _dumps({"model": model, "tokens": [1],
                                                                                  key: v}))
    for label, v in values:   # as token ids inside the lists
        yield Case(f"/detokenize tokens=[{label}]", "POST", "/detokenize", _dumps({"model": model, "tokens": [1, v]}))
        yield Case(f"{COMPL} prompt=[{label}]", "POST", COMPL, _dumps({**compl, "prompt": [1, v]}))
        yield Case(f"{CHAT} stop_token_ids=[{label}]", "POST", CHAT, _dumps({**chat, "stop_token_ids": [v]}))
        yield Case(f"{CHAT} logit_bias value={label}", "POST", CHAT, _dumps({**chat, "logit_bias": {"1": v}}))

    # messages and their parts
    bad_messages = {
        "msg-not-obj": ["hi"], "role-missing": [{"content": "x"}], "role-int": [{"role": 1, "content": "x"}],
        "role-unknown": [{"role": "robot", "content": "x"}], "content-int": [{"role": "user", "content": 5}],
        "content-obj": [{"role": "user", "content": {"text": "x"}}],
        "part-not-obj": [{"role": "user", "content": ["x"]}],
        "part-no-type": [{"role": "user", "content": [{"text": "x"}]}],
        "part-text-int": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
        "part-image-junk": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64,!!!!"}}]}],
        "part-audio-junk": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {
            "data": "%%%", "format": "wav"}}]}],
        "part-file": [{"role": "user", "content": [{"type": "file", "file": {"file_data": "AAAA"}}]}],
        "tool-calls-junk": [{"role": "assistant", "tool_calls": "x"}],
        "tool-call-no-fn": [{"role": "assistant", "tool_calls": [{"id": "1"}]}],
        "tool-call-args-obj": [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {
            "name": "f", "arguments": {"a": [1, {"b": None}]}}}]}, {"role": "user", "content": "x"}],
        "tool-msg-no-id": [{"role": "tool", "content": "x"}],
        "name-int": [{"role": "user", "content": "x", "name": 5}],
        "surrogate-name": [{"role": "user", "content": "x", "name": "\udc80"}],
        "surrogate-part": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                                      "text": "\ud800"}]}],
        "long-content": [{"role": "user", "content": "x " * 20000}],
        "many-messages": [{"role": "user", "content": "x"}] * 2000,
        "deep-content": [{"role": "user", "content": _deep(60, "x")}],
    }
    bad_messages.update(image_parts())
    for label, m in bad_messages.items():
        yield Case(f"{CHAT} messages {label}", "POST", CHAT, _dumps({**chat, "messages": m}))
        yield Case(f"{RESP} input {label}", "POST", RESP, _dumps({**resp, "input": m}))
        yield Case(f"/tokenize messages {label}", "POST", "/tokenize", _dumps({"model": model, "messages": m}))

    # structured output and tools
    schemas = {
        "selfref": {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        "dangling-ref": {"$ref": "#/$defs/nope"}, "bad-type": {"type": "nonsense"}, "not-obj": [1],
        "deep": json.loads('{"type": "array", "items": ' * 200 + "{}" + "}" * 200),
        "unsat": {"type": "integer", "minimum": 5, "maximum": 1}, "empty-enum": {"enum": []},
        "pattern-junk": {"type": "string", "pattern": "(((("}, "huge-enum": {"enum": list(range(30000))},
    }
    for label, s in schemas.items():
        yield Case(f"{CHAT} schema {label}", "POST", CHAT, _dumps({**chat, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": s}}}))
        yield Case(f"{CHAT} tool params {label}", "POST", CHAT, _dumps({**chat, "tool_choice": "required", "tools": [
            {"type": "function", "function": {"name": "f", "parameters": s}}]}))
    bad_items = {"type-unknown": [{"type": "web_search_call"}], "call-no-id": [{"type": "function_call", "name": "f"}],
                 "call-args-obj": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}}],
                 "output-int": [{"type": "function_call_output", "call_id": "c", "output": 5}],
                 "output-parts-junk": [{"type": "function_call_output", "call_id": "c", "output": [{"x": 1}]}],
                 "reasoning-junk": [{"type": "reasoning", "summary": 5}], "item-ref": [{"type": "item_reference"}]}
    for label, items in bad_items.items():
        yield Case(f"{RESP} input items {label}", "POST", RESP, _dumps({**resp, "input": items}))
    for label, text in {"fmt-int": {"format": 5}, "fmt-unknown": {"format": {"type": "yaml"}},
                        "schema-no-name": {"format": {"type": "json_schema", "schema": {}}},
                        "schema-selfref": {"format": {"type": "json_schema", "name": "x",
                                                      "schema": schemas["selfref"]}}}.items():
        yield Case(f"{RESP} text {label}", "POST", RESP, _dumps({**resp, "text": text}))
    for label, tools in {"flat-no-name": [{"type": "function"}], "hosted": [{"type": "file_search"}],
                         "params-junk": [{"type": "function", "name": "f", "parameters": "x"}]}.items():
        yield Case(f"{RESP} tools {label}", "POST", RESP, _dumps({**resp, "tools": tools}))
    for rid in ("resp_nope", "x" * 5000, "%00", "../../etc"):
        for method in ("GET", "DELETE"):
            yield Case(f"{method} {RESP}/{rid[:20]}", method, f"{RESP}/{urllib.parse.quote(rid)}")
    # the Conversations API: every field with every junk value, items as a response's input, ids
    for key in ("metadata", "items"):
        for label, v in values:
            yield Case(f"{CONV} {key}={label}", "POST", CONV, _dumps({key: v}))
            yield Case(f"{CONV}/x {key}={label}", "POST", f"{CONV}/conv_nope", _dumps({key: v}))
            yield Case(f"{CONV}/x/items {key}={label}", "POST", f"{CONV}/conv_nope/items", _dumps({key: v}))
    for label, items in {**bad_items, **{f"msg {k}": m for k, m in bad_messages.items()}}.items():
        yield Case(f"{CONV} items {label}", "POST", CONV, _dumps({"items": items}))
    for cid in ("conv_nope", "x" * 5000, "%00", "../../etc", "%ED%A0%80"):
        for method, sub in (("GET", ""), ("DELETE", ""), ("GET", "/items"), ("GET", "/items/msg_x"),
                            ("DELETE", "/items/msg_x")):
            yield Case(f"{method} {CONV}/{cid[:20]}{sub}", method, f"{CONV}/{cid}{sub}")
    for q in ("limit=0", "limit=x", "limit=101", "order=up", "after=%00", "include=nope", "limit=" + "9" * 400):
        yield Case(f"GET {CONV}/x/items?{q[:30]}", "GET", f"{CONV}/conv_nope/items?{q}")
    for label, rf in {"type-int": {"type": 5}, "type-unknown": {"type": "yaml"}, "no-schema": {"type": "json_schema"},
                      "schema-str": {"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}}.items():
        yield Case(f"{CHAT} response_format {label}", "POST", CHAT, _dumps({**chat, "response_format": rf}))
    for label, tools in {"not-list": {"a": 1}, "item-str": ["f"], "no-fn": [{"type": "function"}],
                         "name-int": [{"type": "function", "function": {"name": 5}}],
                         "type-other": [{"type": "code_interpreter"}]}.items():
        yield Case(f"{CHAT} tools {label}", "POST", CHAT, _dumps({**chat, "tools": tools}))
    for label, tc in {"unknown-fn": {"type": "function", "function": {"name": "nope"}}, "int": 5,
                      "fn-no-name": {"type": "function", "function": {}}}.items():
        yield Case(f"{CHAT} tool_choice {label}", "POST", CHAT, _dumps({**chat, "tool_choice": tc, "tools": [
            {"type": "function", "function": {"name": "f"}}]}))

    # bodies that are not a JSON object, content types, methods
    for label, raw in {"empty": b"", "null": b"null", "array": b"[]", "number": b"1", "string": b'"x"',
                       "truncated": b'{"model": ', "trailing": b'{"a": 1} x', "bad-utf8": b'{"a": "\xff\xfe"}',
                       "utf16": '{"a": 1}'.encode("utf-16"), "bom": b"\xef\xbb\xbf{}", "nan": b'{"seed": NaN}',
                       "deep-1000": b"[" * 1000 + b"]" * 1000, "deep-obj": b'{"a":' * 3000 + b"1" + b"}" * 3000,
                       "dup-keys": b'{"model": 1, "model": "%s", "messages": []}' % model.encode(),
                       "bigint": b'{"seed": 1' + b"0" * 5000 + b"}", "lone-surrogate-key": b'{"\\ud800": 1}',
                       "nul": b'{"model": "\x00"}'}.items():
        for path in (CHAT, COMPL, RESP, CONV, "/tokenize", "/detokenize"):
            yield Case(f"{path} body {label}", "POST", path, raw)
    body = _dumps(chat)
    for ct in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
               "application/json; charset=latin-1", "", "application/xml", "image/png"):
        yield Case(f"{CHAT} content-type {ct or 'none'}", "POST", CHAT, body, {"Content-Type": ct})
    yield Case(f"{CHAT} form body", "POST", CHAT, b"model=x&messages=y",
               {"Content-Type": "application/x-www-form-urlencoded"})
    yield Case(f"{CHAT} gzip junk", "POST", CHAT, b"\x1f\x8b\x08\x00junkjunk", {"Content-Encoding": "gzip"})
    yield Case(f"{CHAT} gzip bomb", "POST", CHAT, gzip.compress(b"0" * (max_body_bytes * 4)),
               {"Content-Encoding": "gzip"})
    yield Case(f"{CHAT} deflate junk", "POST", CHAT, b"junk", {"Content-Encoding": "deflate"})
    yield Case(f"{CHAT} unknown encoding", "POST", CHAT, body, {"Content-Encoding": "zstd-ish"})
    yield Case(f"{CHAT} over the body limit", "POST", CHAT, b'{"a": "' + b"z" * max_body_bytes + b'"}')
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"):
        for path in (CHAT, COMPL, "/tokenize", "/detokenize"):
            yield Case(f"{method} {path}", method, path, body if method != "GET" else None)
    for method in ("POST", "PUT", "DELETE"):
        for path in ("/v1/models", f"/v1/models/{model}", "/health", "/metrics"):
            yield Case(f"{method} {path}", method, path, b"{}")

    # URLs
    for label, mid in {"unknown": "nope", "long": "m" * 5000, "encoded-surrogate": "%ED%A0%80",
                       "bad-utf8": "%FF%FE", "nul": "%00", "dotdot": "..%2F..%2Fetc%2Fpasswd", "bad-escape": "%zz",
                       "slashes": "a/b/c", "space": "a%20b", "unicode": urllib.parse.quote("модель")}.items():
        yield Case(f"GET /v1/models/{label}", "GET", f"/v1/models/{mid}")
    for p in ("/", "/v1", "/v1/", "/v1/chat", "/v1/chat/completions/x", "/v2/models", "//v1/models",
              "/v1/models?x=%zz", "/health?" + "q=1&" * 500, "/v1/embeddings", "/v1/audio/speech",
              "/%ED%A0%80", "/v1/models/" + "%25" * 1000):
        yield Case(f"GET {p[:40]}", "GET", p)

    # headers
    for label, value in {"no-scheme": "sk-x", "basic": "Basic abc", "empty-bearer": "Bearer ",
                         "latin1": b"Bearer \xe9t\xe9", "bad-utf8": b"Bearer \xff\xfe\xfd", "cut-utf8": b"Bearer \xe2\x82",
                         "long": "Bearer " + "k" * 7000, "tab": "Bearer\tsk-x"}.items():
        yield Case(f"{CHAT} authorization {label}", "POST", CHAT, body, {"Authorization": value}, auth=False)
    yield Case(f"{CHAT} accept html", "POST", CHAT, b"{", {"Accept": "text/html"})
    yield Case(f"{CHAT} content-length lies", "POST", CHAT, body, {"X-Junk": b"\xff\xfe"})


def send(host: str, port: int, case: Case, key: str = "", timeout: float = 60.0) -> tuple[int, dict, bytes]:
    """One case over a fresh connection: (status, lower-cased headers, body bytes)."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.putrequest(case.method, case.path, skip_accept_encoding=True)
        headers = dict(case.headers)
        if case.body is not None:
            headers.setdefault("Content-Type", "application/json")
            headers["Content-Length"] = str(len(case.body))
        if case.auth and key:
            headers.setdefault("Authorization", f"Bearer {key}")
        for k, v in headers.items():
            c.putheader(k, v)
        c.endheaders(case.body)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def problems(case: Case, status: int, headers: dict, body: bytes) -> list[str]:
    """What is wrong with the answer to `case` (nothing: [])."""
    out = []
    if status >= 500:
        out.append(f"status {status}")
    if status >= 400 and case.method != "HEAD":
        if not headers.get("content-type", "").startswith("application/json"):
            out.append(f"content-type {headers.get('content-type')!r}")
        try:
            b = json.loads(body)
            ok = (isinstance(b, dict) and set(b) == {"error"} and isinstance(b["error"], dict)
                  and set(b["error"]) == {"message", "type", "param", "code"}
                  and isinstance(b["error"]["message"], str) and "\n" not in b["error"]["message"])
        except ValueError:
            ok = False
        if not ok:
            out.append(f"error body {body[:200]!r}")
    return out
