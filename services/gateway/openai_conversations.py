"""The Conversations API (`client.conversations`): POST /v1/conversations, GET, POST (metadata)
and DELETE /v1/conversations/{id}, and its items: POST and GET /v1/conversations/{id}/items, GET
and DELETE /v1/conversations/{id}/items/{item_id}.

A conversation holds items in the Responses API's shapes (conversations.py); a response made
with `conversation` starts from them and, once it has completed (or stopped at
max_output_tokens), adds its input and output items to them. Items given here are checked as a
response's input would be, so a conversation can always be continued.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from npuflow.gateway.conversations import Conversation
from npuflow.gateway.errors import ApiError, bad_param
from npuflow.gateway.item_pages import item_page, list_object
from npuflow.gateway.responses_prompt import conversation_of
from npuflow.gateway.responses_request import check_include, input_items, metadata_of, parse_input
from npuflow.gateway.state import STATE, GatewayState
from npuflow.gateway.validation import read_json, type_error

MAX_ITEMS_AT_ONCE = 20     # the API's bound on the items of one create or add


def _body(body: dict, accepted: tuple[str, ...]) -> dict:
    unknown = next((k for k in body if k not in accepted), None)
    if unknown is not None:
        raise bad_param(unknown, f"Unknown parameter: '{unknown[:60]}'.", code="unknown_parameter")
    return body


def _items(st: GatewayState, v: Any, param: str) -> list[dict]:
    """Items to add, checked as a response's input items (each given an id and a status)."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise type_error(param, "an array of items", v)
    if len(v) > MAX_ITEMS_AT_ONCE:
        raise bad_param(param, f"Invalid '{param}': array too long. Expected an array with maximum length "
                               f"{MAX_ITEMS_AT_ONCE}, but got an array with length {len(v)} instead.",
                        code="array_above_max_length")
    parse_input(v, st.settings.server.max_image_bytes, param)
    return input_items(v)


def _include(request: web.Request) -> None:
    check_include(request.query.getall("include", []) + request.query.getall("include[]", []), "include")


def _saved(st: GatewayState, conv: Conversation, param: str) -> None:
    if not st.conversations.save(conv):
        raise bad_param(param, "The conversation cannot be kept: its items are over the server's "
                               "conversations_max_bytes, or the server keeps no conversations "
                               "(conversations_max = 0).", code="conversation_full")


def _conversation(request: web.Request) -> Conversation:
    return conversation_of(request.app[STATE], request.match_info["conversation_id"], "conversation_id")


async def create_conversation(request: web.Request) -> web.Response:
    st = request.app[STATE]
    body = _body(await read_json(request), ("metadata", "items"))
    conv = st.conversations.new(metadata_of(body.get("metadata")), _items(st, body.get("items"), "items"))
    _saved(st, conv, "items")
    return web.json_response(conv.resource())


async def get_conversation(request: web.Request) -> web.Response:
    return web.json_response(_conversation(request).resource())


async def update_conversation(request: web.Request) -> web.Response:
    """POST /v1/conversations/{id}: its metadata replaced."""
    body = _body(await read_json(request), ("metadata",))
    if body.get("metadata") is None:
        raise bad_param("metadata", "Missing required parameter: 'metadata'.", code="missing_required_parameter")
    conv = _conversation(request)
    conv.metadata = metadata_of(body["metadata"])
    _saved(request.app[STATE], conv, "metadata")
    return web.json_response(conv.resource())


async def delete_conversation(request: web.Request) -> web.Response:
    conv = _conversation(request)
    request.app[STATE].conversations.delete(conv.id)
    return web.json_response({"id": conv.id, "object": "conversation.deleted", "deleted": True})


async def add_items(request: web.Request) -> web.Response:
    """POST /v1/conversations/{id}/items: the items added, as a list."""
    st = request.app[STATE]
    _include(request)
    body = _body(await read_json(request), ("items",))
    if body.get("items") is None:
        raise bad_param("items", "Missing required parameter: 'items'.", code="missing_required_parameter")
    conv = _conversation(request)
    items = _items(st, body["items"], "items")
    if not st.conversations.add(conv.id, items):
        raise bad_param("items", f"Conversation '{conv.id}' is full: with these items it would be over the server's "
                                 "conversations_max_bytes.", code="conversation_full")
    return web.json_response(list_object(items, False))


async def list_items(request: web.Request) -> web.Response:
    _include(request)
    return web.json_response(item_page(_conversation(request).items, request.query, "in this conversation"))


def _item(request: web.Request) -> tuple[Conversation, dict]:
    conv = _conversation(request)
    iid = request.match_info["item_id"]
    item = conv.item(iid)
    if item is None:
        raise ApiError(404, f"Item with id '{iid[:80]}' not found in conversation '{conv.id}'.", param="item_id",
                       code="not_found")
    return conv, item


async def get_item(request: web.Request) -> web.Response:
    _include(request)
    return web.json_response(_item(request)[1])


async def delete_item(request: web.Request) -> web.Response:
    """DELETE /v1/conversations/{id}/items/{item_id}: the conversation, without that item."""
    conv, item = _item(request)
    conv.remove(item)
    _saved(request.app[STATE], conv, "item_id")
    return web.json_response(conv.resource())
