"""Splitting a thinking model's output into its reasoning and its answer.

Models whose chat template thinks (Qwen3, DeepSeek-R1 style) write `<think>...</think>` before
the answer: either the answer starts with `<think>`, or the template's generation prompt opens
the block itself and the output starts inside it. ReasoningSplit takes the output piece by piece
as it streams (a tag may be cut anywhere between tokens) and returns, per piece, the text that
belongs to the reasoning and the text that belongs to the answer. Only a block at the start of
the answer counts: a `<think>` later in an answer is content. The blank lines a model puts
between `</think>` and its answer are dropped.
"""
from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def opens_reasoning(rendered_prompt: str) -> bool:
    """Whether a rendered prompt ends inside an open think block (the template opened it)."""
    return rendered_prompt.rfind(OPEN) > rendered_prompt.rfind(CLOSE)


def may_think(rendered_prompt: str, template_thinks: bool) -> bool:
    """Whether the answer may open a think block itself: the template knows them (Qwen3's hybrid
    models write `<think>` first), the prompt did not open one and does not end with an empty
    closed one (what such a template renders when thinking is turned off)."""
    return (template_thinks and not opens_reasoning(rendered_prompt)
            and not rendered_prompt.rstrip().endswith(CLOSE))


def _held_prefix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag` (kept for the next piece)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


class ReasoningSplit:
    def __init__(self, in_reasoning: bool = False):
        self.in_reasoning = in_reasoning
        self.seen = in_reasoning       # a block was seen: the model thinks (reasoning_content is reported)
        self._start = not in_reasoning  # nothing of the answer yet: a <think> here opens the block
        self._after_close = False       # drop the blank lines between </think> and the answer
        self._held = ""

    @property
    def inside(self) -> bool:
        """In the block, or in the blank lines right after it (which belong to it)."""
        return self.in_reasoning or self._after_close

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """(reasoning, content) of this piece; final flushes what was held back."""
        buf, reasoning, content = self._held + text, [], []
        self._held = ""
        while buf:
            if self.in_reasoning:
                i = buf.find(CLOSE)
                if i >= 0:
                    reasoning.append(buf[:i])
                    buf = buf[i + len(CLOSE):]
                    self.in_reasoning, self._after_close = False, True
                    continue
                keep = 0 if final else _held_prefix(buf, CLOSE)
                reasoning.append(buf[:len(buf) - keep])
                self._held = buf[len(buf) - keep:]
                break
            if self._start:
                lead = buf.lstrip()
                if lead.startswith(OPEN):
                    buf = lead[len(OPEN):]
                    self.in_reasoning = self.seen = True
                    self._start = False
                    continue
                if OPEN.startswith(lead) and not final:     # maybe the tag, cut short: wait
                    self._held = buf
                    break
                self._start = False
            if self._after_close:
                buf = buf.lstrip("\n")
                if not buf:
                    break
                self._after_close = False
            content.append(buf)
            break
        return "".join(reasoning), "".join(content)


class Reasoning:
    """A ReasoningSplit for each choice of an answer, and the tokens each spent thinking. A
    piece's tokens and logprobs go with what its text turned out to be: the reasoning's (and the
    blank lines after it) are counted as reasoning tokens and their logprobs dropped, so the
    logprobs' tokens still spell the content; a piece held back waits for the next one."""

    def __init__(self, choices: int, opens: bool):
        self.splits = [ReasoningSplit(opens) for _ in range(choices)]
        self.tokens = [0] * choices
        self._pending: list[tuple[int, list]] = [(0, []) for _ in range(choices)]

    def feed(self, c: int, text: str, tokens: int, logprobs: list, final: bool) -> tuple[str, str, list]:
        """(reasoning, content, the content's logprobs) of choice c's next piece."""
        s = self.splits[c]
        inside = s.inside
        reasoning, content = s.feed(text, final)
        held_tokens, held_lps = self._pending[c]
        tokens, logprobs = held_tokens + tokens, held_lps + list(logprobs)
        self._pending[c] = (0, [])
        if content or (final and not (reasoning or inside or s.in_reasoning)):
            return reasoning, content, logprobs
        if reasoning or inside or s.inside:       # the piece went to the block
            self.tokens[c] += tokens
            return reasoning, "", []
        self._pending[c] = (tokens, logprobs)       # held back whole: decided by what follows
        return reasoning, "", []

    def seen(self, c: int) -> bool:
        return self.splits[c].seen

    def usage_details(self) -> dict:
        """usage.completion_tokens_details, when any choice thought ({} otherwise)."""
        if not any(s.seen for s in self.splits):
            return {}
        return {"completion_tokens_details": {"reasoning_tokens": sum(self.tokens)}}
