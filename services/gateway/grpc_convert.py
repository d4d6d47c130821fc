"""gRPC messages <-> the gateway's request types, at the edge.

Requests go through the same checks as the HTTP API's JSON (validation.py, structured.py): the
request's fields are handed to the shared parsers as a dict, with the field path as the error's
param (`sampling.temperature`, `messages[0].role`), so both front doors accept and reject the
same, and response_format becomes the same llguidance grammar the worker enforces.
"""
from __future__ import annotations

import dataclasses
import json

from npuflow.gateway import images
from npuflow.gateway.client import ChatTurn, Delta, ModelInfo
from npuflow.gateway.embeddings import MAX_INPUTS, EmbedInput, EmbedOutput
from npuflow.gateway.errors import bad_param
from npuflow.gateway.structured import Structured, parse_structured, response_format_grammar
from npuflow.gateway.structured import tools_json as tools_json_of
from npuflow.gateway.validation import (MAX_N, ChatRequest, Fields, GenRequest, parse_logprobs, parse_messages,
                                        parse_sampling, template_kwargs)
from npuflow.v1 import common_pb2, generation_service_pb2 as gs

RF = gs.ResponseFormat
_RF_NAMES = {RF.TYPE_UNSPECIFIED: "text", RF.TYPE_TEXT: "text", RF.TYPE_JSON_OBJECT: "json_object",
             RF.TYPE_JSON_SCHEMA: "json_schema"}


def sampling_dict(sp: common_pb2.SamplingParams) -> dict:
    """The fields the caller set, as JSON-like values (float32 back to the decimal it stands for)."""
    out = {}
    for fd, v in sp.ListFields():
        if isinstance(v, float):
            v = float(f"{v:.7g}")
        elif hasattr(v, "items"):
            v = {str(k): float(f"{x:.7g}") for k, x in v.items()}   # as JSON object keys
        elif not isinstance(v, (int, str, bytes)):
            v = list(v)
        out[fd.name] = v
    return out


def _response_format(rf: gs.ResponseFormat, present: bool) -> dict | None:
    """The OpenAI-shaped response_format (the schema parsed from its JSON text)."""
    if not present:
        return None
    out: dict = {"type": _RF_NAMES.get(rf.type, f"unknown ({rf.type})")}
    if rf.HasField("json_schema"):
        js = rf.json_schema
        try:
            schema = json.loads(js.schema) if js.schema else {}
        except (ValueError, RecursionError) as e:
            name = "response_format.json_schema.schema"
            raise bad_param(name, f"Invalid '{name}': not JSON text ({e}).") from None
        out["json_schema"] = {"name": js.name, "description": js.description, "schema": schema,
                              "strict": js.strict}
    return out


def _grammar(msg) -> Structured:
    rf = _response_format(msg.response_format, msg.HasField("response_format"))
    grammar = response_format_grammar(rf)
    return Structured(grammar=grammar, grammar_param="response_format" if grammar else "")


def _common(msg) -> dict:
    """model, n and sampling of a Generate or Chat request."""
    top = Fields({"model": msg.model or None, "n": msg.n or None})
    model = top.str("model", required=True)
    f = Fields(sampling_dict(msg.sampling), "sampling.")
    sp, max_tokens = parse_sampling(f)
    logprobs, top_logprobs = parse_logprobs(f, sp)
    n = top.int("n", lo=1, hi=MAX_N) or 1
    return dict(model=model, stream=True, include_usage=True, n=n, max_tokens=max_tokens, sampling=sp,
                logprobs=logprobs, top_logprobs=top_logprobs)


def generate_request(msg: gs.GenerateTextRequest) -> tuple[GenRequest, Structured, str | list[int]]:
    """The checked request, its output grammar, and its prompt: text to tokenize, or token ids."""
    req = GenRequest(**_common(msg))
    structured = _grammar(msg)
    return req, structured, _prompt(msg.prompt, list(msg.prompt_token_ids), "prompt", "prompt_token_ids")


def _prompt(text: str, ids: list[int], text_name: str, ids_name: str):
    if text and ids:
        raise bad_param(text_name, f"Set either '{text_name}' or '{ids_name}', not both.")
    if not text and not ids:
        raise bad_param(text_name, f"Missing required parameter: '{text_name}' (or '{ids_name}').",
                        code="missing_required_parameter")
    return text or ids


def _turns(turns) -> list[dict]:
    return [{"role": t.role or None, "content": t.content, "name": t.name or None,
             "tool_call_id": t.tool_call_id or None,
             "tool_calls": [{"id": c.id, "type": c.type or "function",
                             "function": {"name": c.function_name, "arguments": c.arguments}}
                            for c in t.tool_calls] or None}
            for t in turns]


def chat_turns(turns, max_image_bytes: int | None = None) -> list[ChatTurn]:
    """The checked turns; a turn's `parts` (text and images, in order) become ChatTurn.parts,
    each image as the HTTP API's image_url parts are (images.py), named `messages[i].parts[j]`."""
    for i, t in enumerate(turns):
        if t.parts and t.content:
            name = f"messages[{i}].content"
            raise bad_param(name, f"Invalid '{name}': a turn with 'parts' has its text in them; leave "
                                  "'content' empty.")
    out = parse_messages(_turns(turns), max_image_bytes)
    for i, t in enumerate(turns):
        if t.parts:
            out[i] = _with_parts(out[i], t.parts, f"messages[{i}].parts", max_image_bytes)
    return out


def _with_parts(turn: ChatTurn, parts, p: str, max_image_bytes: int | None) -> ChatTurn:
    pieces: list = []
    for j, part in enumerate(parts):
        pj = f"{p}[{j}]"
        kind = part.WhichOneof("part")
        if kind == "text":
            pieces.append(part.text)
        elif kind == "image":
            images.check_role(turn.role, pj)
            img = part.image
            detail = images.detail_of(img.detail or None, f"{pj}.image.detail")
            pieces.append(images.from_bytes(img.data, img.mime_type, detail, pj, max_image_bytes))
        else:
            raise bad_param(pj, f"Invalid '{pj}': the part holds neither 'text' nor 'image'.")
    content, kept = images.turn_content(pieces)
    return dataclasses.replace(turn, content=content, parts=kept)


def _tools(text: str) -> list:
    """The tool definitions of a `tools_json` field ([] when empty)."""
    if not text:
        return []
    try:
        tools = json.loads(text)
    except (ValueError, RecursionError):
        tools = None
    if not isinstance(tools, list):
        raise bad_param("tools_json", "Invalid 'tools_json': expected a JSON array of tool definitions.")
    return tools


def tools_json(text: str) -> str:
    tools = _tools(text)
    return json.dumps(tools) if tools else ""


def chat_request(msg: gs.ChatRequest, max_image_bytes: int | None = None) -> ChatRequest:
    """The checked request; response_format, tools and tool_choice go through the HTTP API's
    parse_structured, so both front doors accept and refuse the same things. Images are parsed
    (chat_turns), not yet resolved: images.resolve_images does that, as for the HTTP API."""
    common = _common(msg)
    tools = _tools(msg.tools_json)
    body: dict = {"response_format": _response_format(msg.response_format, msg.HasField("response_format"))}
    if tools:
        body["tools"] = tools
    tc = msg.tool_choice
    if tc:
        body["tool_choice"] = tc if tc in ("none", "auto", "required") else {"type": "function", "function": {"name": tc}}
    structured = parse_structured(body)
    kwargs = None
    if msg.chat_template_kwargs_json:
        try:
            kwargs = json.loads(msg.chat_template_kwargs_json)
        except ValueError:
            kwargs = None
        if not isinstance(kwargs, dict):
            raise bad_param("chat_template_kwargs_json", "chat_template_kwargs_json must be a JSON object.")
    return ChatRequest(**common, messages=chat_turns(msg.messages, max_image_bytes),
                       tools_json=tools_json_of(structured), structured=structured,
                       template_kwargs_json=template_kwargs({"chat_template_kwargs": kwargs}))


def tokenize_request(msg: gs.TokenizeRequest, max_image_bytes: int | None = None):
    """(model, text or chat turns, add_special_tokens, tools_json)."""
    model = Fields({"model": msg.model or None}).str("model", required=True)
    if msg.messages:
        if msg.text:
            raise bad_param("text", "Set either 'text' or 'messages', not both.")
        return model, chat_turns(msg.messages, max_image_bytes), True, tools_json(msg.tools_json)
    if not msg.text:
        raise bad_param("text", "Missing required parameter: 'text' (or 'messages').",
                        code="missing_required_parameter")
    add = msg.add_special_tokens if msg.HasField("add_special_tokens") else True
    return model, msg.text, add, ""


def choice(d: Delta, text: str | None = None, calls: list[dict] = (), finish: int | None = None,
           reasoning: str = "", logprobs: list | None = None) -> gs.GenerateResponse.Choice:
    """A choice message from a worker delta; text, tool call pieces (tool_calls.CallStream's
    OpenAI-shaped deltas) and finish reason as the tool-call reader decided, when it did;
    reasoning text and the answer's logprobs as the reasoning split decided."""
    c = gs.GenerateResponse.Choice(index=d.index, text=d.text if text is None else text, token_ids=d.token_ids,
                                   finish_reason=d.finish if finish is None else finish, stop_reason=d.stop_reason,
                                   reasoning_text=reasoning)
    c.logprobs.extend(d.logprobs if logprobs is None else logprobs)
    for call in calls:
        fn = call.get("function", {})
        c.tool_calls.add(index=call["index"], id=call.get("id", ""), type=call.get("type", ""),
                         function_name=fn.get("name") or "", arguments=fn.get("arguments") or "")
    return c


def model_card(m: ModelInfo) -> gs.ListModelsResponse.Model:
    return gs.ListModelsResponse.Model(id=m.id, ready=m.ready, context_length=m.context_length,
                                       max_batch=m.max_batch, created=m.created,
                                       state=_MODEL_STATES.get(m.status, common_pb2.MODEL_STATE_UNSPECIFIED),
                                       state_reason=m.reason, footprint_bytes=m.footprint_bytes,
                                       memory_pool=m.memory_pool, embedding=m.embedding)


def embed_request(r: gs.EmbedTextRequest) -> EmbedInput:
    """An Embed call as the shared embeddings path takes it: exactly one of input and
    input_token_ids, at most MAX_INPUTS inputs, none empty (errors name the field, e.g. input[2])."""
    if not r.model:
        raise bad_param("model", "Missing required parameter: 'model'.", code="missing_required_parameter")
    texts, ids = list(r.input), [list(x.ids) for x in r.input_token_ids]
    if bool(texts) == bool(ids):
        raise bad_param("input", "Exactly one of 'input' and 'input_token_ids' must be set.",
                        code="missing_required_parameter" if not texts else "invalid_value")
    param = "input" if texts else "input_token_ids"
    items = texts or ids
    if len(items) > MAX_INPUTS:
        raise bad_param(param, f"Invalid '{param}': at most {MAX_INPUTS} inputs, got {len(items)}.",
                        code="array_above_max_length")
    for k, x in enumerate(items):
        if not x:
            raise bad_param(f"{param}[{k}]", f"'{param}[{k}]' is empty.", code="empty_input")
    return EmbedInput(model=r.model, texts=texts or None, token_ids=ids or None, dimensions=r.dimensions or None,
                      instruction=r.instruction, param=param)


def embed_response(model: str, out: EmbedOutput) -> gs.EmbedResponse:
    resp = gs.EmbedResponse(model=model, usage=gs.EmbedResponse.Usage(prompt_tokens=out.prompt_tokens,
                                                                      total_tokens=out.prompt_tokens))
    for i, v in enumerate(out.vectors):
        resp.data.add(index=i, values=v)
    return resp


_MODEL_STATES = {"loaded": common_pb2.MODEL_STATE_LOADED, "loading": common_pb2.MODEL_STATE_LOADING,
                 "unloaded": common_pb2.MODEL_STATE_UNLOADED, "failed": common_pb2.MODEL_STATE_FAILED}
