"""Tools for templates without tool support: definitions in the system prompt, calls and results
rewritten in the <tool_call> convention; templates that take tools get them as they are."""
import json

from npuflow.tokenizer import MessageIn, ModelTokenizer, ToolCallIn
from npuflow.tokenizer.tool_prompt import with_tools_in_prompt

from test_chat_template import TOOL_TEMPLATE
from tok_helpers import CHATML

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}, "required": ["city"]}}}]


def _render(tok_json_or_pkg, template, messages, tools):
    from tokenizers import Tokenizer
    tok = ModelTokenizer("m", Tokenizer.from_file(str(tok_json_or_pkg)), chat_template=template, vocab_size=400)
    return tok.encode_chat(messages, tools_json=json.dumps(tools) if tools else "")[1]


def test_fallback_puts_tools_in_a_new_system_turn(tokenizer_json):
    out = _render(tokenizer_json, CHATML, [MessageIn("user", "Weather in Paris?")], TOOLS)
    assert out.startswith("<|im_start|>system\n# Tools\n")
    assert json.dumps(TOOLS[0]) in out and "<tool_call>" in out
    assert "You are a helpful AI assistant." not in out   # the template's default system turn is replaced
    assert out.endswith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n")


def test_fallback_appends_to_an_existing_system_turn_and_rewrites_history():
    msgs = [MessageIn("developer", "Be brief."), MessageIn("user", "Weather in Paris?"),
            MessageIn("assistant", "", tool_calls=(ToolCallIn("call_1", "get_weather", '{"city": "Paris"}'),)),
            MessageIn("tool", "sunny, 21 C", tool_call_id="call_1")]
    out = with_tools_in_prompt(msgs, TOOLS)
    assert out[0].role == "developer" and out[0].content.startswith("Be brief.\n\n# Tools")
    assert out[2] == MessageIn("assistant", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
                                            '\n</tool_call>')
    assert out[3] == MessageIn("user", "<tool_response>\nsunny, 21 C\n</tool_response>")


def test_templates_that_take_tools_get_them_unchanged(tokenizer_json):
    msgs = [MessageIn("user", "Weather in Paris?")]
    out = _render(tokenizer_json, TOOL_TEMPLATE, msgs, TOOLS)
    assert out.startswith("<tools>") and "# Tools" not in out
