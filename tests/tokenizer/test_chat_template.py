import pytest

from npuflow.tokenizer import ChatTemplate, MessageIn, TemplateError, ToolCallIn

from tok_helpers import CHATML

TOOL_TEMPLATE = """\
{% if tools %}<tools>{{ tools | tojson }}</tools>
{% endif %}
{% for m in messages %}
<|im_start|>{{ m.role }}
{% if m.tool_calls is defined %}
{% for c in m.tool_calls %}<call id="{{ c.id }}">{{ c.function.name }}({{ c.function.arguments }})</call>{% endfor %}
{% elif m.role == 'tool' %}
<result for="{{ m.tool_call_id }}">{{ m.content }}</result>
{% else %}
{% if m.name is defined %}[{{ m.name }}] {% endif %}{{ m.content }}
{% endif %}
<|im_end|>
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_chatml_adds_default_system_prompt():
    t = ChatTemplate(CHATML)
    out = t.render([MessageIn("user", "Hi")], add_generation_prompt=True)
    assert out == ("<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n"
                   "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_developer_role_is_system():
    t = ChatTemplate(CHATML)
    out = t.render([MessageIn("developer", "Be brief."), MessageIn("user", "Hi")], add_generation_prompt=False)
    assert out == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_all_roles_and_tools():
    t = ChatTemplate(TOOL_TEMPLATE)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    msgs = [MessageIn("system", "sys"), MessageIn("user", "Wetter in Zürich?", name="anna"),
            MessageIn("assistant", "", tool_calls=(ToolCallIn("call_1", "get_weather", '{"city": "Zürich"}'),)),
            MessageIn("tool", "12°C", tool_call_id="call_1"), MessageIn("assistant", "It is 12°C.")]
    out = t.render(msgs, add_generation_prompt=True, tools=tools)
    assert '<tools>[{"type": "function", "function": {"name": "get_weather"' in out
    assert "[anna] Wetter in Zürich?" in out  # tojson and text keep non-ASCII
    assert '<call id="call_1">get_weather({"city": "Zürich"})</call>' in out
    assert '<result for="call_1">12°C</result>' in out
    assert out.endswith("<|im_start|>assistant\n")
    assert "{%" not in out and "\n\n" not in out  # trim_blocks / lstrip_blocks


def test_raise_exception_becomes_template_error():
    t = ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}x")
    assert t.render([MessageIn("user", "a")]) == "x"
    with pytest.raises(TemplateError, match="first must be user"):
        t.render([MessageIn("assistant", "a")])


def test_helpers_and_sandbox():
    t = ChatTemplate("{{ strftime_now('%Y') | length }}|{{ bos_token }}|{{ eos_token }}", bos_token="<s>", eos_token="</s>")
    assert t.render([MessageIn("user", "a")]) == "4|<s>|</s>"
    evil = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(TemplateError):
        evil.render([MessageIn("user", "a")])
    with pytest.raises(TemplateError):
        ChatTemplate("{% for x in %}")
