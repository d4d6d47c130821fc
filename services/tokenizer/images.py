"""Images in an encoded chat: placeholders expanded, spans found from token ids, no forgery.

A vision model's template writes one placeholder (VisionSpec.image_token, e.g. `<image>` or
`<IMG_CONTEXT>`) per image part; each is replaced, in order, by the image's whole layout
(`npuflow.vision.image_prompt`: tile markers and image_token x N), and the text is encoded.

Forgery: a client's text must not be able to become the image token (or the family's tile
markers, or any special token), or it could make the worker overwrite text positions with image
embeddings, or shift every image after it. Before rendering, each control token found in the
client's strings (message text, names, tool calls, tool definitions) is wrapped in two
private-use markers; after rendering, a marked token is encoded as plain text (by a copy of the
tokenizer that matches no added token), unmarked text normally. Only the template's own
placeholders are unmarked, so they alone are counted and expanded. Markers the client sent are
removed first; a marker the template split from its token is dropped. Text without control
tokens encodes exactly as before (one piece, the same ids Hugging Face gives). Last, the image
token ids in the result must be exactly the expanded ones, or the request is refused.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tokenizers import Tokenizer

from .chat_template import ImageIn, MessageIn, ToolCallIn

M_START, M_END = "\U0010FFF0", "\U0010FFF1"   # private use (plane 16): never in a vocabulary


@dataclass(frozen=True)
class Span:
    """Tokens [start, end) are one image's layout; `placeholders` of them are the image token."""
    start: int
    end: int
    placeholders: int


class ImageTextError(ValueError):
    """The conversation's images and the template's placeholders do not match (the message is
    shown to the client)."""


def _strip_markers(s: str) -> str:
    return s.replace(M_START, "").replace(M_END, "")


def plain_text_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of `tokenizer` that encodes every added token's text as ordinary text."""
    data = json.loads(tokenizer.to_str())
    for t in data.get("added_tokens") or []:
        t["special"] = True
    plain = Tokenizer.from_str(json.dumps(data))
    plain.encode_special_tokens = True
    return plain


class ImageText:
    """One vision model's placeholder handling; `encode_ids` is the tokenizer's plain encode."""

    def __init__(self, tokenizer: Tokenizer, spec: Any, encode_ids: Callable[[str], list[int]]):
        from npuflow.vision import image_prompt
        self.spec = spec
        self.image_token: str = spec.image_token
        self.image_token_id: int = int(spec.image_token_id)
        self._prompt = image_prompt
        self._ids = encode_ids
        self._plain = plain_text_tokenizer(tokenizer)
        control = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        control |= {self.image_token, *(v for v in (getattr(spec, "tokens", None) or {}).values()
                                        if isinstance(v, str) and v)}
        control |= self._layout_tokens(tokenizer)
        alternatives = "|".join(re.escape(t) for t in sorted(control, key=len, reverse=True))
        self._control = re.compile(alternatives)
        self._split = re.compile(f"{M_START}({alternatives}){M_END}|[{M_START}{M_END}]")

    def _layout_tokens(self, tokenizer: Tokenizer) -> set[str]:
        """The added tokens an image's layout uses (e.g. idefics3's <row_i_col_j> of a big grid)."""
        size = int(getattr(self.spec, "tile_size", 0) or 512)
        added = {i: t.content for i, t in tokenizer.get_added_tokens_decoder().items()}
        found: set[str] = set()
        for w, h, detail in ((size, size, "low"), (8 * size, 8 * size, "high"), (8 * size, size, "high")):
            try:
                ids = tokenizer.encode(self._prompt(self.spec, w, h, detail), add_special_tokens=False).ids
            except Exception:   # a size the family refuses: the other sizes still name its tokens
                continue
            found |= {added[i] for i in set(ids) if i in added}
        return found

    # before rendering ------------------------------------------------------------------------
    def mark(self, obj: Any) -> Any:
        """`obj` (a string, or lists/dicts of them) with its control tokens wrapped in markers."""
        if isinstance(obj, str):
            return self._control.sub(lambda m: M_START + m.group(0) + M_END, _strip_markers(obj))
        if isinstance(obj, dict):
            return {k: self.mark(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.mark(v) for v in obj]
        return obj

    def mark_message(self, m: MessageIn) -> MessageIn:
        return dataclasses.replace(
            m, content=self.mark(m.content), name=self.mark(m.name), tool_call_id=self.mark(m.tool_call_id),
            tool_calls=tuple(ToolCallIn(id=self.mark(c.id), name=self.mark(c.name), arguments=self.mark(c.arguments),
                                        type=c.type) for c in m.tool_calls),
            parts=tuple(self.mark(p) if isinstance(p, str) else p for p in m.parts))

    # after rendering -------------------------------------------------------------------------
    def encode(self, rendered: str, images: Sequence[ImageIn]) -> tuple[list[int], str, list[Span]]:
        """(token ids, the rendered text without markers, one Span per image). Raises
        ImageTextError when the template placed more or fewer placeholders than there are images."""
        pieces = self._split.split(rendered)
        texts, marked = pieces[0::2], pieces[1::2]
        placed = sum(t.count(self.image_token) for t in texts)
        if placed != len(images):
            raise ImageTextError(f"The chat template placed {placed} image placeholder(s) for the "
                                 f"{len(images)} image(s) of the conversation.")
        prompts = [self._prompt(self.spec, im.width, im.height, im.detail or "auto") for im in images]
        nxt = iter(prompts)
        token = re.compile(re.escape(self.image_token))
        texts = [token.sub(lambda _: next(nxt), t) if self.image_token in t else t for t in texts]
        if not marked:
            ids = self._ids(texts[0])
        else:
            ids = []
            for k, text in enumerate(texts):
                if text:
                    ids.extend(self._ids(text))
                if k < len(marked) and marked[k]:
                    ids.extend(self._plain.encode(marked[k], add_special_tokens=False).ids)
        return ids, _strip_markers(rendered), self.spans(ids, prompts)

    def spans(self, ids: Sequence[int], prompts: Sequence[str]) -> list[Span]:
        """Each image's span, from the positions of the image token in `ids`: image k owns the
        next `placeholders_k` of them (the count in its own layout's encoding), and its span is its
        layout around them when the ids there are that layout's ids (else first to last
        placeholder). The image token ids must be exactly the layouts' ones."""
        tid = self.image_token_id
        where = [i for i, t in enumerate(ids) if t == tid]
        layouts = [self._ids(p) for p in prompts]
        counts = [lay.count(tid) for lay in layouts]
        if len(where) != sum(counts) or any(c == 0 for c in counts):
            raise ImageTextError(f"The prompt holds {len(where)} image tokens where its images take "
                                 f"{sum(counts)}; image tokens can come only from images.")
        out, k0, prev_end = [], 0, 0
        for lay, n in zip(layouts, counts):
            first, last = where[k0], where[k0 + n - 1]
            start = first - lay.index(tid)
            end = start + len(lay)
            if start < prev_end or list(ids[start:end]) != lay:
                start, end = first, last + 1
            out.append(Span(start, end, n))
            k0, prev_end = k0 + n, end
        return out
