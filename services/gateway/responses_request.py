"""A Responses API request body -> a ResponsesRequest: the chat request it amounts to (its input
items as chat turns, its function tools, text.format as a response_format) and what the
Responses API adds (store, previous_response_id, instructions, metadata, the fields a response
echoes). Errors are 400s naming the Responses API's own field (`input[2].content[0]`,
`text.format`, `tools[1].type`), never the chat field it became.

Input items: messages (`{"role", "content"}` with or without `"type": "message"`; content a
string or `input_text` / `input_image` parts, `output_text` / `refusal` parts in assistant
turns), `function_call` (joined with the assistant turn before it, as chat's `tool_calls`) and
`function_call_output` (a tool turn). `reasoning` items are accepted and left out of the prompt,
as chat templates leave out earlier turns' thinking; a `compaction` item (responses_compaction.py)
is its summary as an assistant turn.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from npuflow.gateway.client import ChatTurn
from npuflow.gateway.errors import ApiError, bad_param
from npuflow.gateway.responses_compaction import listed, replaces_all, summary_turn
from npuflow.gateway.responses_output import item_id
from npuflow.gateway.structured import parse_structured, tools_json
from npuflow.gateway.validation import (ChatRequest, Fields, message_content, parse_sampling, template_kwargs,
                                        type_error)

MIN_OUTPUT_TOKENS = 16            # the API's minimum for max_output_tokens
KEPT = ("system", "developer")    # roles that truncation and compaction never drop
MAX_METADATA = 16
ROLES = ("user", "assistant", "system", "developer")
INCLUDE = ("message.output_text.logprobs", "reasoning.encrypted_content", "message.input_image.image_url",
           "web_search_call.action.sources", "code_interpreter_call.outputs", "computer_call_output.output.image_url",
           "file_search_call.results")
UNSUPPORTED = {   # fields whose feature this server does not have: a 400, never silently dropped
    "prompt": "Reusable prompt templates ('prompt') are not supported: send 'instructions' and 'input'.",
}


@dataclass
class ResponsesRequest:
    chat: ChatRequest                  # the generation: messages = this request's own turns (no history yet)
    store: bool = True
    previous_response_id: str | None = None
    conversation: str | None = None    # a Conversations API conversation it starts from and adds to
    instructions: str | None = None
    metadata: dict = field(default_factory=dict)
    input_items: list[dict] = field(default_factory=list)   # its input as items with ids (input_items)
    echo: dict = field(default_factory=dict)    # the request's settings as a response reports them
    truncate: bool = False             # truncation "auto": drop the oldest turns to fit (responses_prompt.py)
    compact_at: int | None = None      # context_management compaction: its threshold in tokens (0 = the default)
    background: bool = False           # answered at once, generated on (responses_background.py)


def _renamed(e: ApiError, mapping: list[tuple[str, str]]) -> ApiError:
    """e with its param's chat-request prefix replaced by the Responses field it came from."""
    for old, new in mapping:
        if e.param and (e.param == old or e.param.startswith((old + ".", old + "["))):
            e.param = new + e.param[len(old):]
            e.message = e.message.replace(f"'{old}", f"'{new}")
            break
    return e


def _tools(v: Any) -> list[dict]:
    """Function tools ({"type": "function", "name", "parameters", ...}) in chat's nested shape."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise type_error("tools", "an array", v)
    out = []
    for i, t in enumerate(v):
        if not isinstance(t, dict):
            raise type_error(f"tools[{i}]", "an object", t)
        kind = t.get("type")
        if kind != "function":
            raise bad_param(f"tools[{i}].type", f"Tools of type {str(kind)[:40]!r} are not supported: this server "
                                                "runs function tools only ({\"type\": \"function\", \"name\", "
                                                "\"parameters\"}).", code="unsupported_value")
        Fields(t, f"tools[{i}].").str("name", required=True)
        fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(v: Any) -> Any:
    if v is None or isinstance(v, str):
        return v
    if not isinstance(v, dict):
        raise type_error("tool_choice", "a string or an object", v)
    if v.get("type") == "function":
        return {"type": "function", "function": {"name": v.get("name")}}
    raise bad_param("tool_choice.type", f"tool_choice of type {str(v.get('type'))[:40]!r} is not supported: "
                                        "use 'none', 'auto', 'required' or {\"type\": \"function\", \"name\"}.",
                    code="unsupported_value")


def _response_format(text: Any) -> Any:
    """text.format as chat's response_format."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise type_error("text", "an object", text)
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise type_error("text.format", "an object", fmt)
    if fmt.get("type") == "json_schema":
        Fields(fmt, "text.format.").str("name", required=True)
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema", "strict", "description")
                                                       if k in fmt}}
    return fmt


def _echo_format(fmt: Any) -> dict:
    return fmt if isinstance(fmt, dict) else {"type": "text"}


def parse_input(v: Any, max_image_bytes: int | None = None, param: str = "input") -> list[ChatTurn]:
    """The input (a string, or a list of items) as chat turns."""
    if isinstance(v, str):
        return [ChatTurn(role="user", content=v)]
    if not isinstance(v, list):
        raise type_error(param, "a string or an array of input items", v)
    turns: list[ChatTurn] = []
    for i, item in enumerate(v):
        p = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise type_error(p, "an object", item)
        kind = item.get("type", "message")
        f = Fields(item, p + ".")
        if kind == "message":
            role = f.str("role", required=True)
            if role not in ROLES:
                raise bad_param(p + ".role", f"Invalid value: '{role[:40]}'. Supported values are: 'user', "
                                             "'assistant', 'system', and 'developer'.")
            content, parts = message_content(item.get("content"), p + ".content", role, max_image_bytes)
            turns.append(ChatTurn(role=role, content=content, parts=parts))
        elif kind == "function_call":
            call = (f.str("call_id", required=True), "function", f.str("name", required=True),
                    f.str("arguments", required=True))
            last = turns[-1] if turns else None
            if last is not None and last.role == "assistant" and not last.parts:
                turns[-1] = ChatTurn(role="assistant", content=last.content, tool_calls=last.tool_calls + (call,))
            else:
                turns.append(ChatTurn(role="assistant", content="", tool_calls=(call,)))
        elif kind == "function_call_output":
            call_id = f.str("call_id", required=True)
            out = f.required("output")
            if not isinstance(out, str):
                out, _ = message_content(out, p + ".output", "tool")
            turns.append(ChatTurn(role="tool", content=out, tool_call_id=call_id))
        elif kind == "reasoning":
            continue
        elif kind == "compaction":
            turns[:] = with_compaction(turns, summary_turn(item, p), replaces_all(item))
        else:
            raise bad_param(p + ".type", f"Input items of type {str(kind)[:40]!r} are not supported: items are "
                                         "'message', 'function_call', 'function_call_output', 'reasoning' and "
                                         "'compaction'.",
                            code="unsupported_value")
    return turns


def with_compaction(turns: list[ChatTurn], summary: ChatTurn, replaces_all: bool) -> list[ChatTurn]:
    """turns followed by a compaction item's summary turn. One made by context_management stands
    for every turn before the last user turn (system and developer turns stay, ahead of it): the
    prompt it was made in, [kept, summary, the last user turn and what followed it], is rebuilt."""
    if not replaces_all:
        return turns + [summary]
    last = max((j for j, t in enumerate(turns) if t.role == "user"), default=len(turns))
    return [t for t in turns[:last] if t.role in KEPT] + [summary] + turns[last:]


def input_items(v: Any) -> list[dict]:
    """The (checked) input as the API lists it back: each item with an id and a status, a
    message's string content as one input_text (an assistant's: output_text) part."""
    items = [{"type": "message", "role": "user", "content": v}] if isinstance(v, str) else v
    out = []
    for it in items:
        kind = it.get("type", "message")
        if kind == "message":
            role, c = it["role"], it.get("content")
            text = "output_text" if role == "assistant" else "input_text"
            parts = [{"type": text, "text": c}] if isinstance(c, str) else [dict(p) for p in c or []]
            for p in parts:
                if p.get("type") == "output_text":
                    p.setdefault("annotations", [])
            d = {"id": it.get("id") or item_id("msg"), "type": "message", "role": role, "content": parts}
        elif kind == "function_call":
            d = {"id": it.get("id") or item_id("fc"), "type": kind, "call_id": it["call_id"], "name": it["name"],
                 "arguments": it["arguments"]}
        elif kind == "function_call_output":
            d = {"id": it.get("id") or item_id("fco"), "type": kind, "call_id": it["call_id"], "output": it["output"]}
        elif kind == "compaction":
            out.append(listed(it))
            continue
        else:
            d = {"id": it.get("id") or item_id("rs"), "type": "reasoning", "summary": it.get("summary") or []}
        out.append(dict(d, status="completed"))
    return out


def metadata_of(v: Any, param: str = "metadata") -> dict:
    """Metadata as the API bounds it: at most 16 string values, keys of at most 64 characters,
    values of at most 512."""
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise type_error(param, "an object of strings", v)
    if len(v) > MAX_METADATA:
        raise bad_param(param, f"Invalid '{param}': at most {MAX_METADATA} keys.")
    for k, x in v.items():
        if len(k) > 64:
            raise bad_param(param, f"Invalid '{param}': key {k[:70]!r}... is longer than 64 characters.")
        if len(x) > 512:
            raise bad_param(f"{param}.{k}", f"Invalid '{param}.{k}': a value is at most 512 characters "
                                            f"(got {len(x)}).")
    return v


def _conversation(v: Any) -> str | None:
    """`conversation`: its id, or {"id": ...}."""
    if v is None or isinstance(v, str):
        return v
    if not isinstance(v, dict):
        raise type_error("conversation", "a string or an object with an 'id'", v)
    return Fields(v, "conversation.").str("id", required=True)


def _context_management(v: Any) -> int | None:
    """context_management: [{"type": "compaction", "compact_threshold": N >= 1000 or null}] ->
    the threshold (0 for null: responses_context.py's default), or None when absent."""
    if v is None:
        return None
    if not isinstance(v, list) or not v:
        raise type_error("context_management", "a non-empty array", v)
    at = None
    for i, entry in enumerate(v):
        if not isinstance(entry, dict):
            raise type_error(f"context_management[{i}]", "an object", entry)
        f = Fields(entry, f"context_management[{i}].")
        kind = f.str("type", required=True)
        if kind != "compaction":
            raise bad_param(f"context_management[{i}].type", f"Invalid value: {kind[:40]!r}. Supported values "
                                                             "are: 'compaction'.", code="invalid_value")
        at = f.int("compact_threshold", lo=1000) or 0
    return at


def _include(v: Any) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise type_error("include", "an array of strings", v)
    check_include(v)
    return v


def check_include(values: list[str], param: str | None = None) -> None:
    """A 400 for the first value that is not one of INCLUDE, naming `param` (else include[i])."""
    for i, x in enumerate(values):
        if x not in INCLUDE:
            raise bad_param(param or f"include[{i}]", f"Invalid value: {x[:60]!r}. Supported values are: "
                                                      + ", ".join(f"'{k}'" for k in INCLUDE) + ".")


def parse_responses(body: dict, max_image_bytes: int | None = None) -> ResponsesRequest:
    f = Fields(body)
    model = f.str("model", required=True)
    for key, why in UNSUPPORTED.items():
        if body.get(key) not in (None, False):
            raise bad_param(key, why, code="unsupported_parameter")
    truncation = body.get("truncation")
    if truncation not in (None, "disabled", "auto"):
        raise bad_param("truncation", f"Invalid value: {str(truncation)[:40]!r}. Supported values are: 'auto' and "
                                      "'disabled'.", code="invalid_value")
    stream = f.bool("stream")
    background = f.bool("background")
    if background and not f.bool("store", True):
        raise bad_param("background", "Background responses must be stored: 'background' requires 'store' to be "
                                      "true.", code="invalid_value")
    if body.get("stream_options") is not None and not stream:
        raise bad_param("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled.")
    previous = f.str("previous_response_id")
    conversation = _conversation(body.get("conversation"))
    if previous is not None and conversation is not None:
        raise bad_param("conversation", "Mutually exclusive parameters: send either 'previous_response_id' or "
                                        "'conversation', not both.", code="mutually_exclusive_parameters")
    if body.get("input") is None and previous is None and conversation is None:
        raise bad_param("input", "Missing required parameter: 'input'.", code="missing_required_parameter")
    turns = parse_input(body["input"], max_image_bytes) if body.get("input") is not None else []
    instructions = f.str("instructions")
    sampling, max_tokens = parse_sampling(f, ("max_output_tokens",))
    if max_tokens is not None and max_tokens < MIN_OUTPUT_TOKENS:
        f.int("max_output_tokens", lo=MIN_OUTPUT_TOKENS)
    top = f.int("top_logprobs", lo=0, hi=20)
    logprobs = "message.output_text.logprobs" in _include(body.get("include")) or bool(top)
    if logprobs:
        sampling.logprobs = True
        sampling.top_logprobs = top or 0
    tools = _tools(body.get("tools"))
    chat_like = {"tools": tools or None, "tool_choice": _tool_choice(body.get("tool_choice")),
                 "parallel_tool_calls": body.get("parallel_tool_calls"),
                 "response_format": _response_format(body.get("text"))}
    try:
        structured = parse_structured(chat_like)
    except ApiError as e:
        raise _renamed(e, [("response_format", "text.format")]) from None
    if structured.grammar_param == "response_format":    # the worker's errors name the field
        structured.grammar_param = "text.format"
    effort = body.get("reasoning")
    if effort is not None and not isinstance(effort, dict):
        raise type_error("reasoning", "an object", effort)
    effort = (effort or {}).get("effort")
    try:
        kwargs = template_kwargs({"chat_template_kwargs": body.get("chat_template_kwargs"),
                                  "reasoning_effort": effort})
    except ApiError as e:
        raise _renamed(e, [("reasoning_effort", "reasoning.effort")]) from None
    chat = ChatRequest(model=model, stream=stream, include_usage=True, n=1, max_tokens=max_tokens, sampling=sampling,
                       logprobs=logprobs, top_logprobs=top or 0, messages=turns, tools_json=tools_json(structured),
                       structured=structured, template_kwargs_json=kwargs)
    echo = {"max_output_tokens": max_tokens, "parallel_tool_calls": f.bool("parallel_tool_calls", True),
            "reasoning": {"effort": effort, "summary": None},
            "temperature": f.number("temperature"), "top_p": f.number("top_p"),
            "text": {"format": _echo_format((body.get("text") or {}).get("format"))},
            "tool_choice": body.get("tool_choice") or ("auto" if tools else "none"),
            "tools": [dict(t["function"], type="function", strict=t["function"].get("strict", True),
                           parameters=t["function"].get("parameters"))
                      for t in tools],
            "top_logprobs": top or 0, "truncation": truncation or "disabled"}
    if f.str("user") is not None:
        echo["user"] = body["user"]
    return ResponsesRequest(chat=chat, store=f.bool("store", True), previous_response_id=previous,
                            conversation=conversation,
                            truncate=truncation == "auto", background=background,
                            compact_at=_context_management(body.get("context_management")),
                            instructions=instructions, metadata=metadata_of(body.get("metadata")), echo=echo,
                            input_items=input_items(body["input"]) if body.get("input") is not None else [])
