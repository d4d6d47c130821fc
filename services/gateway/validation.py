"""Request bodies -> typed requests, with OpenAI-style 400s that name the `param` at fault.

Unset or null optional fields stay unset in SamplingParams so the worker applies the model's
defaults. Unknown fields are ignored, as OpenAI does. Integers are range-checked against the
protobuf fields they travel in (`proto_range`), so no value makes the conversion fail later.
Image content parts are read here into ImageParts (images.py decodes data: URLs and checks them).
"""
from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from google.protobuf.descriptor import FieldDescriptor

from npuflow.gateway import images
from npuflow.gateway.client import ChatTurn, ImagePart
from npuflow.gateway.errors import ApiError, bad_param, one_line
from npuflow.gateway.json_checks import check_tree
from npuflow.gateway.state import STATE
from npuflow.gateway.structured import Structured, parse_structured, tools_json
from npuflow.v1 import common_pb2, tokenizer_pb2, worker_pb2

MAX_N = 16
MAX_STOP = 4
ROLES = ("system", "developer", "user", "assistant", "tool", "function")

_FD = FieldDescriptor
_INT_RANGES = {_FD.TYPE_UINT32: (0, 2 ** 32 - 1), _FD.TYPE_INT32: (-2 ** 31, 2 ** 31 - 1),
               _FD.TYPE_UINT64: (0, 2 ** 64 - 1), _FD.TYPE_INT64: (-2 ** 63, 2 ** 63 - 1)}
FLOAT32_MAX = 3.4028234663852886e38


def proto_range(message, name: str) -> tuple[int, int]:
    """(lowest, highest) integer the field `name` of protobuf `message` holds (a map: its key)."""
    fd = message.DESCRIPTOR.fields_by_name[name]
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        fd = fd.message_type.fields_by_name["key"]
    return _INT_RANGES[fd.type]


_SP = common_pb2.SamplingParams
MAX_TOKENS_MAX = proto_range(_SP, "max_tokens")[1]
TOP_K_MAX = proto_range(_SP, "top_k")[1]
SEED_RANGE = proto_range(_SP, "seed")
# every field a token id travels in: the narrowest bounds them all
TOKEN_ID_MAX = min(proto_range(m, f)[1] for m, f in (
    (_SP, "stop_token_ids"), (_SP, "logit_bias"), (worker_pb2.GenerateRequest, "prompt_token_ids"),
    (tokenizer_pb2.DecodeRequest, "token_ids")))

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string", list: "an array",
               dict: "an object"}


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a decimal"
    if isinstance(v, str):
        return "a string"
    return "an array" if isinstance(v, list) else "an object"


def type_error(param: str, want: str, got: Any) -> ApiError:
    return bad_param(param, f"Invalid type for '{param}': expected {want}, but got {_json_type(got)} instead.",
                     code="invalid_type")


def _end_connection(request: web.Request) -> None:
    """Read no more of this connection: it closes once the error is sent, without aiohttp
    waiting (lingering) for the rest of a body that is late or broken."""
    request.protocol.close()
    request.content.feed_eof()


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


async def read_json(request: web.Request) -> dict:
    """The body as a JSON object: 413 (from aiohttp's client_max_size), 408 when it does not
    arrive within server.body_timeout_s, 400 for anything but a JSON object (NaN and Infinity are
    not JSON), nesting deeper than json_checks.MAX_DEPTH or a string with a lone surrogate."""
    timeout = request.app[STATE].settings.server.body_timeout_s
    try:
        raw = await asyncio.wait_for(request.read(), timeout if timeout > 0 else None)
    except (HttpProcessingError, web.RequestPayloadError) as e:   # bad chunks or compression, found reading
        _end_connection(request)
        why = e.message if isinstance(e, HttpProcessingError) else str(e).split(", message:", 1)[-1]
        raise ApiError(400, f"The request body is malformed: {one_line(why, 200)}",
                       code="invalid_http_request") from None
    except asyncio.TimeoutError:
        _end_connection(request)
        raise ApiError(408, f"The request body did not arrive within {timeout:g} seconds.",
                       code="request_timeout") from None
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)")
    if not isinstance(body, dict):
        raise ApiError(400, f"The request body must be a JSON object, but got {_json_type(body)}.")
    check_tree(body)
    return body


class Fields:
    """Typed, range-checked access to the fields of one JSON object."""

    def __init__(self, body: dict, prefix: str = ""):
        self.body = body
        self.prefix = prefix

    def _name(self, key: str) -> str:
        return self.prefix + key

    def required(self, key: str) -> Any:
        if self.body.get(key) is None:
            raise bad_param(self._name(key), f"Missing required parameter: '{self._name(key)}'.",
                            code="missing_required_parameter")
        return self.body[key]

    def str(self, key: str, required: bool = False) -> str | None:
        v = self.required(key) if required else self.body.get(key)
        if v is not None and not isinstance(v, str):
            raise type_error(self._name(key), "a string", v)
        return v

    def bool(self, key: str, default: bool = False) -> bool:
        v = self.body.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise type_error(self._name(key), "a boolean", v)
        return v

    def number(self, key: str, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, required: bool = False) -> float | None:
        """A finite number within [lo, hi] (at most a float32's range); None when unset, unless
        `required` (then null is a type error)."""
        v = self.body.get(key)
        if v is None and not required:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            raise type_error(self._name(key), "a decimal", v)
        self._range(key, v, -FLOAT32_MAX if lo is None else lo, FLOAT32_MAX if hi is None else hi,
                    lo_open, "decimal")
        return float(v)

    def int(self, key: str, lo: int | None = None, hi: int | None = None) -> int | None:
        v = self.body.get(key)
        if v is None:
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise type_error(self._name(key), "an integer", v)
        self._range(key, v, lo, hi, False, "integer")
        return v

    def _range(self, key, v, lo, hi, lo_open, kind) -> None:
        check_range(self._name(key), v, lo, hi, lo_open, kind)


def _shown(v: Any) -> str:
    s = f"{v:g}" if isinstance(v, float) and abs(v) >= 1e16 else str(v)
    return s if len(s) <= 24 else f"{s[:12]}... ({len(s)} digits)"


def check_range(name: str, v, lo=None, hi=None, lo_open: bool = False, kind: str = "integer") -> None:
    """400 naming `name` when v is below lo (at or below, when lo_open) or above hi."""
    if lo is not None and (v <= lo if lo_open else v < lo):
        op = ">" if lo_open else ">="
        raise bad_param(name, f"Invalid '{name}': {kind} below minimum value. Expected a value {op} {_shown(lo)}, "
                              f"but got {_shown(v)} instead.", code=f"{kind}_below_min_value")
    if hi is not None and v > hi:
        raise bad_param(name, f"Invalid '{name}': {kind} above maximum value. Expected a value <= {_shown(hi)}, "
                              f"but got {_shown(v)} instead.", code=f"{kind}_above_max_value")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def token_ids(v: Any, name: str, what: str = "an array of token ids") -> list[int]:
    """A list of token ids, each within 0..TOKEN_ID_MAX (errors name `name[i]`)."""
    if not isinstance(v, list) or not all(_is_int(t) for t in v):
        raise type_error(name, what, v)
    for i, t in enumerate(v):
        check_range(f"{name}[{i}]", t, 0, TOKEN_ID_MAX)
    return list(v)


@dataclass
class GenRequest:
    """What chat and completions requests share."""
    model: str
    stream: bool
    include_usage: bool
    n: int
    max_tokens: int | None
    sampling: common_pb2.SamplingParams
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class ChatRequest(GenRequest):
    messages: list[ChatTurn] = field(default_factory=list)
    tools_json: str = ""
    structured: Structured = field(default_factory=Structured)   # response_format, tools, tool_choice
    template_kwargs_json: str = ""   # chat_template_kwargs, with reasoning_effort's enable_thinking


@dataclass
class CompletionRequest(GenRequest):
    prompts: list[str | list[int]] = field(default_factory=list)
    echo: bool = False


def _common(f: Fields, max_tokens_keys: tuple[str, ...]) -> dict:
    model = f.str("model", required=True)
    stream = f.bool("stream")
    include_usage = False
    so = f.body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise type_error("stream_options", "an object", so)
        if not stream:
            raise bad_param("stream_options", "The 'stream_options' parameter is only allowed when 'stream' "
                                              "is enabled.")
        include_usage = Fields(so, "stream_options.").bool("include_usage")
    sp, max_tokens = parse_sampling(f, max_tokens_keys)
    n = f.int("n", lo=1, hi=MAX_N) or 1
    return dict(model=model, stream=stream, include_usage=include_usage, n=n, max_tokens=max_tokens, sampling=sp)


def parse_sampling(f: Fields, max_tokens_keys: tuple[str, ...] = ("max_tokens",)
                   ) -> tuple[common_pb2.SamplingParams, int | None]:
    """The sampling fields of `f` (JSON body or the gRPC request's sampling, as a dict) checked into
    SamplingParams; errors name f.prefix + the field. Returns the params and max_tokens."""
    sp = common_pb2.SamplingParams()
    max_tokens = None
    for key in max_tokens_keys:
        v = f.int(key, lo=1, hi=MAX_TOKENS_MAX)
        if v is not None:
            max_tokens = v
    if max_tokens is not None:
        sp.max_tokens = max_tokens
    for key, lo, hi, lo_open in (("temperature", 0, 2, False), ("top_p", 0, 1, True),
                                 ("presence_penalty", -2, 2, False), ("frequency_penalty", -2, 2, False),
                                 ("min_p", 0, 1, False), ("repetition_penalty", 0, None, True)):
        v = f.number(key, lo, hi, lo_open)
        if v is not None:
            setattr(sp, key, v)
    top_k = f.int("top_k", lo=-1, hi=TOP_K_MAX)
    if top_k is not None:
        sp.top_k = max(top_k, 0)
    seed = f.int("seed", lo=SEED_RANGE[0], hi=SEED_RANGE[1])
    if seed is not None:
        sp.seed = seed
    sp.stop.extend(_stop(f.body.get("stop"), f._name("stop")))
    bias_name = f._name("logit_bias")
    bias = f.body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict):
            raise type_error(bias_name, "an object", bias)
        for k in bias:
            if not isinstance(k, str) or not _DIGITS.fullmatch(k) or len(k) > 12:
                raise bad_param(bias_name, f"Invalid key in '{bias_name}': {str(k)[:40]!r} is not a token id.")
            check_range(f"{bias_name}.{k}", int(k), 0, TOKEN_ID_MAX)
            sp.logit_bias[int(k)] = Fields(bias, bias_name + ".").number(k, -100, 100, required=True)
    ignore_eos = f.bool("ignore_eos")
    if ignore_eos:
        sp.ignore_eos = True
    ids = f.body.get("stop_token_ids")
    if ids is not None:
        sp.stop_token_ids.extend(token_ids(ids, f._name("stop_token_ids")))
    return sp, max_tokens


def parse_logprobs(f: Fields, sp: common_pb2.SamplingParams) -> tuple[bool, int]:
    """Chat-style `logprobs` (bool) and `top_logprobs` (0-20, only with logprobs) into `sp`."""
    logprobs = f.bool("logprobs")
    top = f.int("top_logprobs", lo=0, hi=20)
    if top is not None and not logprobs:
        name = f._name("top_logprobs")
        raise bad_param(name, f"Invalid value for '{name}': '{f._name('logprobs')}' must be set to true "
                              f"when '{name}' is used.")
    if logprobs:
        sp.logprobs = True
        sp.top_logprobs = top or 0
    return logprobs, top or 0


_DIGITS = re.compile("[0-9]+")


def _stop(v: Any, name: str = "stop") -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise type_error(name, "a string or an array of strings", v)
    if len(v) > MAX_STOP:
        raise bad_param(name, f"Invalid '{name}': array too long. Expected an array with maximum length "
                                f"{MAX_STOP}, but got an array with length {len(v)} instead.",
                        code="array_above_max_length")
    return [s for s in v if s]


def parse_chat(body: dict, max_image_bytes: int | None = None) -> ChatRequest:
    f = Fields(body)
    common = _common(f, ("max_tokens", "max_completion_tokens"))
    logprobs, top = parse_logprobs(f, common["sampling"])
    check_unsupported_chat(body)
    structured = parse_structured(body)
    messages = parse_messages(f.required("messages"), max_image_bytes)
    return ChatRequest(**common, logprobs=logprobs, top_logprobs=top, messages=messages,
                       tools_json=tools_json(structured), structured=structured,
                       template_kwargs_json=template_kwargs(body))


THINKING_OFF = ("none", "minimal")    # reasoning_effort values that turn a template's thinking off


def template_kwargs(body: dict) -> str:
    """chat_template_kwargs (an object) as JSON; reasoning_effort "none" / "minimal" adds
    enable_thinking false unless the kwargs set it (the other efforts leave thinking as it is)."""
    kwargs = body.get("chat_template_kwargs")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise type_error("chat_template_kwargs", "an object", kwargs)
    effort = body.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):
        raise type_error("reasoning_effort", "a string", effort)
    if effort in THINKING_OFF and "enable_thinking" not in kwargs:
        kwargs = {**kwargs, "enable_thinking": False}
    return json.dumps(kwargs) if kwargs else ""


def check_unsupported_chat(body: dict) -> None:
    """Output this server cannot give is a clear 400, never silently dropped."""
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities)):
        raise type_error("modalities", "an array of strings", modalities)
    if body.get("audio") is not None or "audio" in (modalities or []):
        raise bad_param("audio" if body.get("audio") is not None else "modalities",
                        "Audio output is not supported: the models here produce text only.",
                        code="unsupported_value")
    for key in ("functions", "function_call"):
        if body.get(key) is not None:
            raise bad_param(key, f"'{key}' (the deprecated function-calling API) is not supported; use "
                                 "'tools' and 'tool_choice'.", code="unsupported_parameter")


def parse_messages(v: Any, max_image_bytes: int | None = None) -> list[ChatTurn]:
    """The checked turns; a turn with an image gets `parts` (images.py), each image's file at
    most `max_image_bytes` (server.max_image_bytes; None = its default) long."""
    if not isinstance(v, list):
        raise type_error("messages", "an array", v)
    if not v:
        raise bad_param("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                                    "but got an empty array instead.", code="empty_array")
    out = []
    for i, m in enumerate(v):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise type_error(p, "an object", m)
        mf = Fields(m, p + ".")
        role = mf.str("role", required=True)
        if role not in ROLES:
            raise bad_param(p + ".role", f"Invalid value: '{role}'. Supported values are: 'system', 'developer', "
                                         "'user', 'assistant', and 'tool'.", code="invalid_value")
        content, parts = message_content(m.get("content"), p + ".content", role, max_image_bytes)
        calls = []
        tc = m.get("tool_calls")
        if tc is not None:
            if not isinstance(tc, list):
                raise type_error(p + ".tool_calls", "an array", tc)
            for j, c in enumerate(tc):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict):
                    raise bad_param(f"{p}.tool_calls[{j}]", "Each tool call needs a 'function' object.")
                args = fn.get("arguments", "")
                calls.append((str(c.get("id", "")), str(c.get("type", "function")), str(fn.get("name", "")),
                              args if isinstance(args, str) else json.dumps(args)))
        out.append(ChatTurn(role=role, content=content, name=mf.str("name") or "",
                            tool_call_id=mf.str("tool_call_id") or "", tool_calls=tuple(calls), parts=parts))
    return out


def message_content(c: Any, p: str, role: str, max_image_bytes: int | None = None
             ) -> tuple[str, tuple[str | ImagePart, ...]]:
    """(text, parts) of a message's content: parts only when it holds an image (images.py)."""
    if c is None:
        if role in ("assistant", "tool", "function"):
            return "", ()
        raise bad_param(p, f"Missing required parameter: '{p}'.", code="missing_required_parameter")
    if isinstance(c, str):
        return c, ()
    if not isinstance(c, list):
        raise type_error(p, "a string or an array of content parts", c)
    pieces: list[str | ImagePart] = []
    for j, part in enumerate(c):
        pj = f"{p}[{j}]"
        if not isinstance(part, dict):
            raise type_error(pj, "an object", part)
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text", "refusal"):
            t = part.get("text") if kind != "refusal" else part.get("refusal")
            if not isinstance(t, str):
                raise type_error(f"{pj}.text", "a string", t)
            pieces.append(t)
        elif kind in ("image_url", "input_image"):
            images.check_role(role, pj)
            pieces.append(_image_part(part, kind, pj, max_image_bytes))
        else:
            raise bad_param(f"{pj}.type", f"Content parts of type {str(kind)[:40]!r} are not supported: messages "
                                          "take parts of type 'text' and 'image_url'.", code="unsupported_value")
    return images.turn_content(pieces)


def _image_part(part: dict, kind: str, p: str, max_image_bytes: int | None) -> ImagePart:
    """{"type": "image_url", "image_url": {"url", "detail"}} (or "image_url" a plain string, as
    some clients send), or the Responses API's {"type": "input_image", "image_url", "detail"}."""
    v = part.get("image_url")
    name = f"{p}.image_url"
    if v is None:
        if kind == "input_image" and part.get("file_id") is not None:
            raise bad_param(f"{p}.file_id", "Images given by 'file_id' are not supported: this server has no "
                                            "files API; send the image as a data: URL.", code="unsupported_value")
        raise bad_param(name, f"Missing required parameter: '{name}'.", code="missing_required_parameter")
    if isinstance(v, dict):
        f = Fields(v, name + ".")
        url, detail = f.str("url", required=True), images.detail_of(v.get("detail"), f"{name}.detail")
    elif isinstance(v, str):
        url, detail = v, images.detail_of(part.get("detail"), f"{p}.detail")
    else:
        raise type_error(name, "an object with a 'url'", v)
    return images.from_url(url, p, detail, max_image_bytes)


def parse_completion(body: dict) -> CompletionRequest:
    f = Fields(body)
    common = _common(f, ("max_tokens",))
    if body.get("max_tokens") is None:   # the legacy endpoint's default is 16 tokens (null too)
        common["max_tokens"] = 16
        common["sampling"].max_tokens = 16
    lp = f.int("logprobs", lo=0, hi=5)
    if lp is not None:
        common["sampling"].logprobs = True
        common["sampling"].top_logprobs = lp
    if f.str("suffix"):
        raise bad_param("suffix", "The 'suffix' parameter is not supported by this server.",
                        code="unsupported_value")
    best_of = f.int("best_of", lo=1, hi=MAX_N)
    if best_of is not None and best_of != common["n"] and best_of != 1:
        raise bad_param("best_of", "'best_of' other than 'n' is not supported by this server.",
                        code="unsupported_value")
    return CompletionRequest(**common, logprobs=lp is not None, top_logprobs=lp or 0,
                             prompts=_prompts(f.required("prompt")), echo=f.bool("echo"))


def _is_ids(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(t) for t in v)


def _prompts(v: Any) -> list[str | list[int]]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v:
        if all(isinstance(s, str) for s in v):
            return list(v)
        if _is_ids(v):
            return [token_ids(v, "prompt")]
        if all(_is_ids(s) and s for s in v):
            return [token_ids(s, f"prompt[{i}]") for i, s in enumerate(v)]
    if isinstance(v, list) and not v:
        raise bad_param("prompt", "Invalid 'prompt': empty array.", code="empty_array")
    raise type_error("prompt", "a string, an array of strings, an array of token ids or an array of arrays "
                               "of token ids", v)
