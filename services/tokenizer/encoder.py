"""One model's tokenizer: chat rendering, encoding and decoding, without any sockets.

    tok = ModelTokenizer.from_package(package)
    ids, rendered = tok.encode_chat(messages, add_generation_prompt=True)
    enc = tok.encode_conversation(messages)   # ids, rendered and the images' spans
    ids = tok.encode_text("hello", add_special_tokens=True)
    text = tok.decode(ids, skip_special_tokens=True)

Errors are TokenizeError(code, message, param) with a common_pb2.ErrorCode value.

A package with a "vision" manifest section (a vision-language model) sets `vision` (its
VisionSpec); its messages' ImageIn parts are expanded and located as images.py describes. Images
sent to a text-only model are refused (INVALID_ARGUMENT naming messages[i].content[j]).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from tokenizers import Tokenizer

from npuflow.models.package import ModelPackage
from npuflow.v1 import common_pb2

from .chat_template import ChatTemplate, ImageIn, MessageIn, TemplateError, parse_template_kwargs, parse_tools
from .images import ImageText, ImageTextError, Span
from .tool_prompt import template_takes_tools, with_tools_in_prompt


class TokenizeError(Exception):
    def __init__(self, code: int, message: str, param: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


# From this length on a text is encoded with encode_batch_fast, which releases the GIL (encode
# holds it: 4 s for 3 MB) and computes no offsets (about 3x faster on long texts, with the same
# ids, and its result is freed in milliseconds rather than most of a second), so the service's
# I/O thread keeps answering liveness probes meanwhile.
GIL_FREE_CHARS = 4096


def _invalid(message: str, param: str) -> TokenizeError:
    return TokenizeError(common_pb2.ERROR_CODE_INVALID_ARGUMENT, message, param)


@dataclass
class Encoded:
    """A rendered and encoded conversation: its ids, the template's text and each image's span."""
    ids: list[int]
    rendered: str
    images: list[Span] = field(default_factory=list)


class ModelTokenizer:
    def __init__(self, model_id: str, tokenizer: Tokenizer, *, chat_template: str, vocab_size: int,
                 bos_token_id: int | None = None, eos_token_ids: Sequence[int] = (), vision: Any = None,
                 embedding: dict | None = None):
        self.model_id = model_id
        # an embedding model (its manifest's "embedding" section): texts are encoded with the
        # tokenizer's own special tokens (its post-processor), and its query format, if any
        self.embedding = embedding
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        bos = tokenizer.id_to_token(bos_token_id) if bos_token_id is not None else None
        eos = tokenizer.id_to_token(eos_token_ids[0]) if eos_token_ids else None
        self._template_source = chat_template
        self._template: ChatTemplate | None = None
        self._template_error = ""
        try:
            self._template = ChatTemplate(chat_template, bos_token=bos or "", eos_token=eos or "")
        except TemplateError as e:  # served anyway: text encode/decode still work
            self._template_error = str(e)
        self.vision = vision   # npuflow.vision.VisionSpec of a vision-language model, else None
        self._images = ImageText(tokenizer, vision, self._ids) if vision is not None else None

    @classmethod
    def from_package(cls, package: ModelPackage) -> "ModelTokenizer":
        tok = Tokenizer.from_file(str(package.tokenizer_path))
        vocab = max(package.dims.vocab, tok.get_vocab_size(with_added_tokens=True))
        vision = None
        if package.extra.get("vision"):
            from npuflow.vision import VisionSpec
            vision = VisionSpec.from_manifest(package.extra["vision"])
        embedding = package.extra.get("embedding")
        if isinstance(embedding, dict):   # an input over the context is refused, never cut, nor padded here
            tok.no_truncation()
            tok.no_padding()
        return cls(package.id, tok, chat_template=package.chat_template, vocab_size=vocab,
                   bos_token_id=package.bos_token_id, eos_token_ids=package.eos_token_ids, vision=vision,
                   embedding=embedding if isinstance(embedding, dict) else None)

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    @property
    def template_thinks(self) -> bool:
        """The chat template writes or reads <think> blocks: the model may think before answering."""
        return "</think>" in (self._template_source or "")

    def render_chat(self, messages: Sequence[MessageIn], *, add_generation_prompt: bool = True,
                    tools: list[Any] | None = None, extra: dict[str, Any] | None = None) -> str:
        """The template's text (with one placeholder per image for a vision model)."""
        if self._template is None:
            raise _invalid(f"model '{self.model_id}' cannot render chat: {self._template_error}", "messages")
        if not messages:
            raise _invalid("messages must not be empty", "messages")
        try:
            return self._template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                         vision=self.vision is not None, extra=extra,
                                         image_token=self.vision.image_token if self.vision is not None else "")
        except TemplateError as e:
            raise _invalid(str(e), "messages") from None

    def encode_chat(self, messages: Sequence[MessageIn], *, add_generation_prompt: bool = True,
                    tools_json: str = "") -> tuple[list[int], str]:
        """(token ids, rendered text): encode_conversation without the image spans."""
        enc = self.encode_conversation(messages, add_generation_prompt=add_generation_prompt, tools_json=tools_json)
        return enc.ids, enc.rendered

    def encode_conversation(self, messages: Sequence[MessageIn], *, add_generation_prompt: bool = True,
                            tools_json: str = "", template_kwargs_json: str = "") -> Encoded:
        """The template places BOS and other special tokens itself, so the rendered text is
        encoded without adding any; special tokens the template wrote become their ids (for a
        vision model, those in the client's text stay text: images.py). Templates without tool
        support get the tools in the system prompt (tool_prompt.py)."""
        try:
            tools = parse_tools(tools_json)
        except ValueError as e:
            raise _invalid(str(e), "tools") from None
        try:
            extra = parse_template_kwargs(template_kwargs_json)
        except ValueError as e:
            raise _invalid(str(e), "chat_template_kwargs") from None
        images = self._check_images(messages)
        if not template_takes_tools(self._template_source) and (
                tools or any(m.role == "tool" or m.tool_calls for m in messages)):
            messages, tools = with_tools_in_prompt(messages, tools), None
        if self._images is None:
            rendered = self.render_chat(messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                        extra=extra)
            return Encoded(self._ids(rendered), rendered)
        marked = [self._images.mark_message(m) for m in messages]
        rendered = self.render_chat(marked, add_generation_prompt=add_generation_prompt,
                                    tools=self._images.mark(tools) if tools else tools, extra=extra)
        try:
            ids, rendered, spans = self._images.encode(rendered, images)
        except ImageTextError as e:
            raise _invalid(str(e), "messages") from None
        return Encoded(ids, rendered, spans)

    def _check_images(self, messages: Sequence[MessageIn]) -> list[ImageIn]:
        """The conversation's images in order; refused for a text-only model or when malformed."""
        images = []
        for i, m in enumerate(messages):
            for j, p in enumerate(m.parts):
                if not isinstance(p, ImageIn):
                    continue
                if self.vision is None:
                    raise _invalid(f"The model '{self.model_id}' does not take images: content parts of "
                                   f"type 'image_url' are not supported.", f"messages[{i}].content[{j}]")
                if p.width <= 0 or p.height <= 0:
                    raise _invalid(f"The image has no size ({p.width} x {p.height}).", f"messages[{i}].content[{j}]")
                if p.detail not in ("", "auto", "low", "high"):
                    raise _invalid(f"Unknown image detail {p.detail!r}: use 'auto', 'low' or 'high'.",
                                   f"messages[{i}].content[{j}]")
                images.append(p)
        return images

    def encode_text(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        if self.embedding is not None:      # as embeddings see it: the tokenizer's own special tokens
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        ids = self._ids(text)
        if add_special_tokens and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        return ids

    def _ids(self, text: str) -> list[int]:
        if len(text) >= GIL_FREE_CHARS:
            batch = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
            return batch([text], add_special_tokens=False)[0].ids
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_embed(self, texts: Sequence[str], instruction: str = "") -> list[list[int]]:
        """Each text's ids as the embedding model sees it: with the tokenizer's special tokens
        (BERT's [CLS] ... [SEP], Qwen3-Embedding's trailing <|endoftext|>), written as a query in
        the model's query format when `instruction` is given. Encoded as one batch (the tokenizers
        library spreads it over its threads, without the GIL)."""
        if self.embedding is None:
            raise _invalid(f"model '{self.model_id}' is not an embedding model", "model")
        if instruction:
            fmt = str(self.embedding.get("query_format") or "")
            if not fmt:
                raise _invalid(f"model '{self.model_id}' has no instruction format (instruction is for models "
                               f"such as Qwen3-Embedding)", "instruction")
            texts = [fmt.replace("{instruction}", instruction).replace("{text}", t) for t in texts]
        batch = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        return [e.ids for e in batch(list(texts), add_special_tokens=True)]

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        bad = next((t for t in token_ids if t >= self.vocab_size), None)
        if bad is not None:
            raise _invalid(f"token id {bad} is outside the vocabulary (size {self.vocab_size})", "token_ids")
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
