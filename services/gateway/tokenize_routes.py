"""POST /tokenize and POST /detokenize (the llama.cpp / vLLM extension), per model.

    {"model", "prompt": "text"}          -> {"tokens": [...], "count", "max_model_len"}
    {"model", "messages": [...], "tools"} -> the same, through the chat template exactly as a chat
                                             request renders it (with the assistant header); an
                                             image counts the tokens it takes
    {"model", "tokens": [...]}           -> {"prompt": "text"}
`add_special_tokens` (default true) adds the model's BOS to a text prompt, as /v1/completions does.
"""
from __future__ import annotations

from aiohttp import web

from npuflow.gateway.errors import bad_param
from npuflow.gateway.generation import chat_prompt, check_model
from npuflow.gateway.state import STATE
from npuflow.gateway.structured import parse_structured, tools_json
from npuflow.gateway.validation import Fields, parse_messages, read_json, token_ids


async def tokenize(request: web.Request) -> web.Response:
    st = request.app[STATE]
    body = await read_json(request)
    f = Fields(body)
    model = f.str("model", required=True)
    check_model(st, model, load=False)
    if body.get("messages") is not None:
        tools = tools_json(parse_structured({"tools": body.get("tools")}))
        turns = parse_messages(body["messages"], st.settings.server.max_image_bytes)
        tokens = (await chat_prompt(st, model, turns, tools)).token_ids
    else:
        prompt = f.str("prompt", required=True)
        tokens = await st.tokenizer.encode_text(model, prompt, f.bool("add_special_tokens", True))
    info = next(m for m in st.models.models() if m.id == model)
    return web.json_response({"tokens": tokens, "count": len(tokens), "max_model_len": info.context_length})


async def detokenize(request: web.Request) -> web.Response:
    st = request.app[STATE]
    body = await read_json(request)
    model = Fields(body).str("model", required=True)
    check_model(st, model, load=False)
    ids = body.get("tokens")
    if ids is None:
        raise bad_param("tokens", "Missing required parameter: 'tokens'.", code="missing_required_parameter")
    ids = token_ids(ids, "tokens")
    return web.json_response({"prompt": await st.tokenizer.decode(model, ids)})
