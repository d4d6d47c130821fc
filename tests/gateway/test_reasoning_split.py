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
