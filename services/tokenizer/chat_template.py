"""Render a conversation through a model's Jinja chat template, the way Hugging Face does.

Sandboxed (ImmutableSandboxedEnvironment), trim_blocks and lstrip_blocks, the loopcontrols
extension, the `raise_exception` and `strftime_now` globals and a `tojson` filter that keeps
non-ASCII text as it is. Messages reach the template as OpenAI-shaped dicts; the "developer"
role is OpenAI's name for the system role, so templates see "system".

Vision-language templates (those that look at `{"type": "image"}` parts) get every message's
content as a list of parts, `{"type": "text", "text": ...}` and `{"type": "image"}`, the way
Hugging Face processors pass them; a turn without parts becomes one text part. A template that
only knows string content gets images as `image_token` + "\n" in the text instead.
"""
from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLE_ALIASES = {"developer": "system"}


class TemplateError(Exception):
    """The template refused the conversation or failed; the message is shown to the client."""


@dataclass(frozen=True)
class ToolCallIn:
    id: str
    name: str
    arguments: str
    type: str = "function"


@dataclass(frozen=True)
class ImageIn:
    """An image of a message as the template and the tokenizer see it: its size and detail."""
    width: int
    height: int
    detail: str = "auto"


@dataclass(frozen=True)
class MessageIn:
    role: str
    content: str = ""
    name: str = ""
    tool_call_id: str = ""
    tool_calls: Sequence[ToolCallIn] = field(default_factory=tuple)
    # Text (str) and ImageIn parts in order, for a turn with images; `content` is then unused.
    parts: Sequence["str | ImageIn"] = field(default_factory=tuple)

    @property
    def images(self) -> list[ImageIn]:
        return [p for p in self.parts if isinstance(p, ImageIn)]


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def takes_content_lists(source: str) -> bool:
    """The template reads content parts of type "image" (HF processor templates do)."""
    return re.search(r"""['"]image['"]""", source) is not None


def _content(m: MessageIn, lists: bool, image_token: str) -> Any:
    if lists:
        if not m.parts:
            return [{"type": "text", "text": m.content}]
        return [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image"} for p in m.parts]
    if m.parts:
        return "".join(p if isinstance(p, str) else image_token + "\n" for p in m.parts)
    return m.content


def message_dict(m: MessageIn, *, content_lists: bool = False, image_token: str = "") -> dict[str, Any]:
    """The dict a template sees: role and content always; name, tool_call_id and tool_calls
    only when set, so `is defined` / `in message` checks in templates behave as with HF."""
    d: dict[str, Any] = {"role": ROLE_ALIASES.get(m.role, m.role),
                         "content": _content(m, content_lists, image_token)}
    if m.name:
        d["name"] = m.name
    if m.tool_call_id:
        d["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        d["tool_calls"] = [{"id": c.id, "type": c.type or "function",
                            "function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls]
    return d


class ChatTemplate:
    """A compiled chat template; `render` is safe to call from one thread at a time or many."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = ""):
        if not source:
            raise TemplateError("the model has no chat template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"chat template does not compile: {e}") from None
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.content_lists = takes_content_lists(source)

    def render(self, messages: Sequence[MessageIn], *, add_generation_prompt: bool = True,
               tools: list[Any] | None = None, vision: bool = False, image_token: str = "",
               extra: dict[str, Any] | None = None) -> str:
        """vision: the model takes images (its messages go in as content lists when the template
        reads them); image_token: the placeholder a string-content template gets per image;
        extra: more variables for the template (chat_template_kwargs), under the fixed ones."""
        lists = vision and self.content_lists
        try:
            return self._template.render(**{**(extra or {}), "messages": [
                message_dict(m, content_lists=lists, image_token=image_token) for m in messages],
                "add_generation_prompt": add_generation_prompt, "tools": tools,
                "bos_token": self.bos_token, "eos_token": self.eos_token})
        except TemplateError:
            raise
        except jinja2.TemplateError as e:
            raise TemplateError(f"chat template failed: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None


def parse_template_kwargs(kwargs_json: str) -> dict[str, Any]:
    """The chat_template_kwargs object ({} when empty); ValueError when it is not a JSON object."""
    if not kwargs_json:
        return {}
    try:
        kwargs = json.loads(kwargs_json)
    except json.JSONDecodeError as e:
        raise ValueError(f"chat_template_kwargs is not valid JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise ValueError("chat_template_kwargs must be an object")
    return kwargs


def parse_tools(tools_json: str) -> list[Any] | None:
    """The tools list from its JSON text; None when empty. Raises ValueError when malformed."""
    if not tools_json:
        return None
    try:
        tools = json.loads(tools_json)
    except ValueError as e:
        raise ValueError(f"tools is not valid JSON: {e}") from None
    if not isinstance(tools, list):
        raise ValueError("tools must be a JSON array")
    return tools or None
