"""ReasoningSplit: a thinking model's <think> block is told from its answer however the output is
cut into pieces."""
import pytest

from npuflow.gateway.reasoning import ReasoningSplit, opens_reasoning

OUT = "<think>\nThe user greets me. I greet back.\n</think>\n\nHello! <think> stays here."


def split(pieces, in_reasoning=False):
    s = ReasoningSplit(in_reasoning)
    r = c = ""
    for k, p in enumerate(pieces):
        a, b = s.feed(p, final=k == len(pieces) - 1)
        r, c = r + a, c + b
    return r, c, s.seen


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_any_cut_gives_the_same_split(size):
    pieces = [OUT[i:i + size] for i in range(0, len(OUT), size)]
    assert split(pieces) == ("\nThe user greets me. I greet back.\n", "Hello! <think> stays here.", True)


def test_a_block_the_prompt_opened():
    assert split(["Thinking", " hard</th", "ink>\n\nYes."], in_reasoning=True) == ("Thinking hard", "Yes.", True)
    assert split(["all of it is reasoning", "</thi"], in_reasoning=True) == ("all of it is reasoning</thi", "", True)


def test_no_block_is_all_content():
    assert split(["Hello", " world"]) == ("", "Hello world", False)
    assert split(["<th", "e end>"]) == ("", "<the end>", False)      # held while it could be the tag
    assert split(["<thi"]) == ("", "<thi", False)                     # flushed at the end
    assert split(["Sure: <think>", "x</think>"]) == ("", "Sure: <think>x</think>", False)


def test_opens_reasoning():
    assert opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not opens_reasoning("<|im_start|>assistant\n")


def _accepts(grammar: str, text: str) -> bool:
    import llguidance
    from npuflow.gateway.structured import _byte_tokenizer
    m = llguidance.LLMatcher(_byte_tokenizer(), grammar, log_level=0)
    return all(m.consume_token(b) for b in text.encode()) and m.is_accepting()


def test_after_thinking_grammar():
    from npuflow.gateway.structured import _grammar, after_thinking
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    opened = after_thinking(_grammar(schema, "response_format"), opened=True)
    assert _accepts(opened, 'Some thought <b>.</think>\n\n{"a":1}')
    assert not _accepts(opened, 'Some thought.</think>\n\n{"b":1}') and not _accepts(opened, '{"a":1}')
    optional = after_thinking(_grammar(schema, "response_format"), opened=False)
    assert _accepts(optional, '<think>hmm</think>\n{"a":1}') and _accepts(optional, '{"a":2}')
    assert not _accepts(optional, 'hmm</think>{"a":1}') and not _accepts(optional, '<think>x</think>[1]')


def test_may_think():
    from npuflow.gateway.reasoning import may_think
    assert may_think("<|im_start|>assistant\n", True)
    assert not may_think("<|im_start|>assistant\n", False)
    assert not may_think("<|im_start|>assistant\n<think>\n", True)             # the prompt opened it
    assert not may_think("<|im_start|>assistant\n<think>\n\n</think>\n\n", True)   # thinking turned off
