"""One page of a list of items, as the Responses and Conversations APIs list them: `order` desc
(the default) or asc, `limit` 1-100 (20), starting after the item `after`."""
from __future__ import annotations

from typing import Mapping, Sequence

from npuflow.gateway.errors import bad_param


def item_page(items: Sequence[dict], query: Mapping[str, str], where: str) -> dict:
    """The list object of the page of `items` (oldest first) that `query` asks for; `where` ends
    the message of an unknown `after` ("in this response")."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise bad_param("limit", "Invalid 'limit': expected an integer from 1 to 100.")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_param("order", f"Invalid value: {order[:40]!r}. Supported values are: 'asc' and 'desc'.")
    ordered = list(items)[::-1 if order == "desc" else 1]
    start = 0
    if "after" in query:
        start = next((i + 1 for i, it in enumerate(ordered) if it["id"] == query["after"]), None)
        if start is None:
            raise bad_param("after", f"No item with id '{query['after'][:80]}' {where}.")
    return list_object(ordered[start:start + limit], start + limit < len(ordered))


def list_object(page: Sequence[dict], has_more: bool) -> dict:
    """The API's list of items: the page, its first and last ids ("" when empty), has_more."""
    return {"object": "list", "data": list(page), "first_id": page[0]["id"] if page else "",
            "last_id": page[-1]["id"] if page else "", "has_more": has_more}
