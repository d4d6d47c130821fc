"""CallStream: what a streamed choice with tools sends, piece by piece."""
import json

from npuflow.gateway.tool_calls import CallStream

NAMES = {"get_weather", "f"}
CALL = ['<tool_call>', '\n{"name": "get_weather", ', '"arguments": {"city": ', '"Par', 'is"}}', '\n</tool_call>']


def run(pieces, names=NAMES):
    cs = CallStream(names)
    content, deltas = "", []
    for t in pieces:
        c, d = cs.push(t)
        content, deltas = content + c, deltas + d
    c, d = cs.finish()
    return content + c, deltas + d, cs


def args_of(deltas, index):
    return "".join(d["function"].get("arguments", "") for d in deltas if d["index"] == index)


def test_content_then_a_call_streamed_in_pieces():
    content, deltas, cs = run(["Let me check. "] + CALL)
    assert content == "Let me check. "
    assert deltas[0]["id"].startswith("call_") and deltas[0]["function"]["name"] == "get_weather"
    assert len(deltas) == 3 and all("id" not in d for d in deltas[1:])
    assert json.loads(args_of(deltas, 0)) == {"city": "Paris"} and not cs.cut_short


def test_braces_and_quotes_inside_strings_do_not_end_the_arguments():
    text = '{"name": "f", "arguments": {"a": "x}\\"y{", "b": [1, {"c": 2}]}}'
    _, deltas, _ = run(list(text))
    assert json.loads(args_of(deltas, 0)) == {"a": 'x}"y{', "b": [1, {"c": 2}]}


def test_two_blocks_are_two_calls():
    _, deltas, _ = run(CALL + CALL)
    assert {d["index"] for d in deltas} == {0, 1}
    assert args_of(deltas, 0) == args_of(deltas, 1) == '{"city": "Paris"}'
    assert deltas[0]["id"] != [d for d in deltas if d["index"] == 1][0]["id"]


def test_arguments_before_the_name_come_whole_at_the_end():
    _, deltas, _ = run(list('{"arguments": {"a": 1}, "name": "f"}'))
    assert len(deltas) == 1 and deltas[0]["function"] == {"name": "f", "arguments": '{"a": 1}'}


def test_a_call_cut_short_keeps_what_was_sent():
    _, deltas, cs = run(['<tool_call>{"name": "f", "arguments": {"a": "unfinis', 'hed'])
    assert cs.cut_short and args_of(deltas, 0) == '{"a": "unfinished'


def test_unknown_functions_and_stray_tags_stay_content():
    text = '<tool_call>{"name": "zzz", "arguments": {"a": 1}}</tool_call>'
    assert run([text])[:2] == (text, [])
    assert run(["Hello <tool", "_call> there"])[:2] == ("Hello <tool_call> there", [])
