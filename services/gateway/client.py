"""The narrow interface the OpenAI layer talks to; the ZMQ links implement it.

Handlers never see sockets: they tokenize through a `TokenizerClient` and generate through a
`ModelClient`, whose `generate` is an async iterator of merged `Delta` batches. Fakes of these
two protocols are enough to exercise every route.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol, Sequence

from npuflow.v1 import common_pb2

FR = common_pb2.FinishReason


@dataclass
class Delta:
    """New output of one choice since the consumer last looked (deltas already merged)."""
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)       # npuflow.v1.TokenLogprob, one per token
    finish: int = FR.FINISH_REASON_UNSPECIFIED           # FinishReason; != UNSPECIFIED on the last
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0                               # prompt tokens the worker's KV already held
    stop_reason: str = ""
    error: tuple[int, str, str] | None = None             # (ErrorCode, message, param) when ERROR


@dataclass(frozen=True)
class ModelInfo:
    id: str
    ready: bool
    context_length: int
    max_batch: int
    created: int
    worker_id: str = ""
    state: str = ""     # "loaded", "loading" (starting, restarting) or "failed" ("" = by `ready`)
    reason: str = ""    # with "failed": why the model cannot start
    vision: bool = False   # the model takes images (its worker's Hello says it has a vision encoder)
    footprint_bytes: int = 0          # the memory it holds when loaded (its memory budget share)
    memory_pool: str = ""             # the budget it counts against: "ram" or "cmm" (NPU memory)
    footprint_estimated: bool = False
    keep_alive_s: float | None = None  # idle seconds before it is unloaded; None = never
    last_load: tuple[float, float, float] | None = None   # its last load on demand: seconds in all (request to
                                      # Hello), of them the worker's process start and its model's load
    required: bool = True             # it should be loaded now (preloaded, not unloaded on purpose):
                                      # /health is 503 while it is not
    embedding: bool = False           # an embedding model (/v1/embeddings; chat and completions refuse it)
    embedding_dimensions: int = 0     # its vectors' length (0 = not known until its worker said Hello)
    matryoshka: bool = False          # it allows `dimensions` below embedding_dimensions

    @property
    def status(self) -> str:
        """loaded, loading, unloaded or failed."""
        return self.state or ("loaded" if self.ready else "loading")


@dataclass(frozen=True)
class GenerateParams:
    request_id: str
    model: str
    prompt_token_ids: Sequence[int]
    sampling: common_pb2.SamplingParams
    n: int = 1
    deadline_unix_ms: int = 0
    grammar: str = ""          # llguidance grammar the output must match ("" = free)
    grammar_param: str = ""    # the request field it came from
    images: Sequence["ImageInput"] = ()   # the prompt's images, in prompt order


@dataclass(frozen=True)
class ImagePart:
    """An image of a chat turn. Parsing fills `data` (a data: URL's bytes) or `url` (an http(s)
    URL, fetched later if the config allows); once resolved, `data` holds the file and
    width/height its decoded size."""
    param: str                 # where it came from, e.g. "messages[1].content[2]"
    detail: str = "auto"       # auto | low | high
    data: bytes = b""
    url: str = ""
    mime_type: str = ""
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str
    name: str = ""
    tool_call_id: str = ""
    tool_calls: tuple[tuple[str, str, str, str], ...] = ()   # (id, type, function name, arguments)
    # Set when the turn holds an image: its text (str) and ImagePart parts in order; `content`
    # then holds the text parts joined, for code that only reads text.
    parts: tuple["str | ImagePart", ...] = ()


@dataclass(frozen=True)
class ImageSpan:
    """Where one image sits in an encoded prompt: tokens [start, end) are its whole layout, and
    `placeholders` of them are the model's image token (the tokenizer's EncodeResult.images)."""
    start: int
    end: int
    placeholders: int


@dataclass(frozen=True)
class ChatTokens:
    """An encoded conversation: its token ids (image placeholders expanded), per image in order
    its span, the text the chat template rendered, and whether that template knows <think> blocks."""
    token_ids: list[int]
    images: tuple[ImageSpan, ...] = ()
    rendered: str = ""
    template_thinks: bool = False


@dataclass(frozen=True)
class ImageInput:
    """An image as the worker gets it (GenerateRequest.images): the file once, its span."""
    data: bytes
    detail: str
    start: int
    end: int
    param: str = ""            # the request part it came from, for the worker's errors


@dataclass(frozen=True)
class EmbedParams:
    """One embeddings request as the worker gets it (worker.proto EmbedRequest)."""
    request_id: str
    model: str
    inputs: Sequence[Sequence[int]]
    dimensions: int = 0                # 0 = the model's
    deadline_unix_ms: int = 0


@dataclass(frozen=True)
class Embeddings:
    """The worker's answer: `vectors` float32 little-endian [len(inputs), dimensions]."""
    dimensions: int
    vectors: bytes
    prompt_tokens: int


class ModelClient(Protocol):
    def models(self) -> list[ModelInfo]:
        """Every configured model, ready or not."""

    async def wait_ready(self, model: str, timeout: float, sequences: int = 1) -> ModelInfo:
        """The model's info once its worker said Hello (loading it first when it is unloaded);
        ApiError 503 after `timeout` seconds. `sequences`: the caller's admitted sequences."""

    def generate(self, params: GenerateParams) -> AsyncIterator[list[Delta]]:
        """Stream merged deltas until every choice finished. Closing the iterator early (client
        gone, cancellation, deadline) aborts the request on the worker."""

    async def embed(self, params: EmbedParams) -> Embeddings:
        """Every input's vector (an embedding model's worker); ApiError when it failed. Cancelling
        the call (client gone) or the deadline passing aborts the request on the worker."""

    def abort(self, model: str, request_id: str) -> None:
        """Tell the worker to stop a request (the generate iterator does this itself)."""

    def in_flight(self, model: str) -> int:
        """Requests of this model the gateway is waiting on."""

    def health(self) -> dict[str, bool]:
        """Model id -> ready."""

    def stats(self) -> dict[str, dict[str, int]]:
        """Model id -> {"in_flight", "queued", "restarts"} for metrics."""


class TokenizerClient(Protocol):
    ready: bool

    async def encode_chat(self, model: str, messages: Sequence[ChatTurn], tools_json: str = "",
                          template_kwargs_json: str = "") -> ChatTokens:
        """Render the model's chat template (with the generation prompt, and the extra template
        variables of template_kwargs_json) and tokenize it; images (resolved ImageParts) go as
        their size and detail and come back as spans."""

    async def encode_text(self, model: str, text: str, add_special_tokens: bool = True) -> list[int]:
        """Tokenize plain text."""

    async def encode_embed(self, model: str, texts: Sequence[str], instruction: str = "") -> list[list[int]]:
        """Each text's ids as an embedding model sees it (its tokenizer's special tokens, the
        model's query format around `instruction` when given), encoded as one batch."""

    async def decode(self, model: str, token_ids: Sequence[int]) -> str:
        """Token ids back to text."""

    async def load_model(self, model: str, timeout: float) -> None:
        """Have the tokenizer load the model's tokenizer now (the model manager asks when it
        starts loading the model, so both load at once); ApiError 503 with the reason if it cannot."""


class Clients(Protocol):
    """What create_app needs: both clients plus their start/stop."""
    models: ModelClient
    tokenizer: TokenizerClient

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
