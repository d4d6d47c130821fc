"""Render a conversation through a model's Jinja chat template, the way Hugging Face does.

Sandboxed (ImmutableSandboxedEnvironment), trim_blocks and lstrip_blocks, the loopcontrols
extension, the `raise_exception` and `strftime_now` globals and a `tojson` filter that keeps
non-ASCII text as it is. Messages reach the template as OpenAI-shaped dicts; the "developer"
role is OpenAI's name for the system role, so templates see "system".
"""
from __future__ import annotations

import datetime
import json
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
class MessageIn:
    role: str
    content: str = ""
    name: str = ""
    tool_call_id: str = ""
    tool_calls: Sequence[ToolCallIn] = field(default_factory=tuple)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def message_dict(m: MessageIn) -> dict[str, Any]:
    """The dict a template sees: role and content always; name, tool_call_id and tool_calls
    only when set, so `is defined` / `in message` checks in templates behave as with HF."""
    d: dict[str, Any] = {"role": ROLE_ALIASES.get(m.role, m.role), "content": m.content}
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

    def render(self, messages: Sequence[MessageIn], *, add_generation_prompt: bool = True,
               tools: list[Any] | None = None) -> str:
        try:
            return self._template.render(messages=[message_dict(m) for m in messages],
                                         add_generation_prompt=add_generation_prompt, tools=tools,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError:
            raise
        except jinja2.TemplateError as e:
            raise TemplateError(f"chat template failed: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None


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
