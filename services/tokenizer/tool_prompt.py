"""Tools for chat templates that do not take them: the definitions go into the system prompt.

A template "takes tools" when its source mentions `tools`; otherwise the conversation is
rewritten before rendering, in the widely trained `<tool_call>` convention that the gateway's
tool-call parser reads back:

- the system turn (the first system/developer message, or a new one in front) gets a "# Tools"
  section listing each definition as one JSON line inside <tools></tools>, and the instruction to
  answer a call as <tool_call>{"name": ..., "arguments": {...}}</tool_call>;
- an assistant turn with tool_calls gets those calls appended to its text in the same form;
- a tool result (role "tool") becomes a user turn holding <tool_response>...</tool_response>,
  since such templates know no "tool" role.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from .chat_template import MessageIn

TOOLS_HEADER = """# Tools

You may call one or more functions to help with the user's request. The functions you can call are
listed inside <tools></tools>, one JSON definition per line:
<tools>
{defs}
</tools>

To call a function, answer with one block per call, each holding a JSON object with the function's
name and its arguments:
<tool_call>
{{"name": "<function name>", "arguments": {{<arguments as a JSON object>}}}}
</tool_call>"""


def template_takes_tools(source: str) -> bool:
    return "tools" in source


def tools_section(tools: Sequence[Any]) -> str:
    return TOOLS_HEADER.format(defs="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def call_block(name: str, arguments: str) -> str:
    try:
        args = json.loads(arguments) if arguments else {}
    except ValueError:
        args = arguments
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>"


def with_tools_in_prompt(messages: Sequence[MessageIn], tools: Sequence[Any] | None) -> list[MessageIn]:
    """The conversation rewritten for a template without tool support (see the module doc)."""
    out: list[MessageIn] = []
    for m in messages:
        if m.role == "tool":
            out.append(MessageIn("user", f"<tool_response>\n{m.content}\n</tool_response>"))
        elif m.role == "assistant" and m.tool_calls:
            blocks = "\n".join(call_block(c.name, c.arguments) for c in m.tool_calls)
            out.append(MessageIn("assistant", f"{m.content}\n{blocks}" if m.content else blocks, name=m.name))
        else:
            out.append(m)
    if tools:
        section = tools_section(tools)
        if out and out[0].role in ("system", "developer"):
            first = out[0]
            out[0] = MessageIn(first.role, f"{first.content}\n\n{section}" if first.content else section,
                               name=first.name, parts=(*first.parts, f"\n\n{section}") if first.parts else ())
        else:
            out.insert(0, MessageIn("system", section))
    return out
