"""OpenAI response shapes, checked with the official `openai` package's own pydantic types.

    check("CreateChatCompletionResponse", body) -> list of error strings (empty: the body conforms)

The names are the OpenAPI component names of the responses. Each body is validated in pydantic's
strict mode (no coercion: "1" is no integer, 1.5 is no integer, an unknown finish_reason or object
is refused). The SDK types are laxer than the API in one way, null against absent: KEEP lists the
keys that the API always sends even when null (the types default them to None), NOT_NULL those
that it may leave out but never sends as null (the types accept None for them).
"""
from __future__ import annotations

from typing import Any, List, Literal

import pydantic
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.shared import ErrorObject


class _ListModels(pydantic.BaseModel):
    object: Literal["list"]
    data: List[Model]


class _ErrorResponse(pydantic.BaseModel):
    error: ErrorObject


try:       # openai >= 2 (the lowest version the tests run with, 1.108, has no input_tokens resource)
    from openai.types.responses import InputTokenCountResponse as _TokenCounts
except ImportError:
    class _TokenCounts(pydantic.BaseModel):
        object: Literal["response.input_tokens"]
        input_tokens: int


class _StreamEvent(pydantic.RootModel):
    root: ResponseStreamEvent


TYPES: dict[str, type[pydantic.BaseModel]] = {
    "ListModelsResponse": _ListModels,
    "Model": Model,
    "CreateChatCompletionResponse": ChatCompletion,
    "CreateChatCompletionStreamResponse": ChatCompletionChunk,
    "CreateCompletionResponse": Completion,
    "ErrorResponse": _ErrorResponse,
    "CreateEmbeddingResponse": CreateEmbeddingResponse,
    "Response": Response,
    "ResponseStreamEvent": _StreamEvent,
    "TokenCountsResource": _TokenCounts,
}

_TOKEN_LOGPROB = ("bytes", "top_logprobs[].bytes")     # under each entry of logprobs.content / .refusal
_USAGE_DETAILS = ("usage.completion_tokens_details", "usage.completion_tokens_details.*",
                  "usage.prompt_tokens_details", "usage.prompt_tokens_details.*")

# Paths: "a.b" walks into an object, "a[]" into each element of a list, a final "*" stands for every
# key of the object; a path whose parent is absent or null is not checked.
# KEEP: keys that must be present, though their value may be null.
KEEP: dict[str, tuple[str, ...]] = {
    "CreateChatCompletionResponse": (
        "choices[].logprobs", "choices[].message.content", "choices[].message.refusal",
        "choices[].logprobs.content", "choices[].logprobs.refusal",
        *(f"choices[].logprobs.{k}[].{p}" for k in ("content", "refusal") for p in _TOKEN_LOGPROB)),
    "CreateChatCompletionStreamResponse": (
        "choices[].finish_reason", "choices[].logprobs.content", "choices[].logprobs.refusal",
        *(f"choices[].logprobs.{k}[].{p}" for k in ("content", "refusal") for p in _TOKEN_LOGPROB)),
    "CreateCompletionResponse": ("choices[].logprobs",),
    "ErrorResponse": ("error.code", "error.param"),
    "Response": ("error", "incomplete_details", "instructions", "metadata", "temperature", "top_p"),
}
# NOT_NULL: keys that may be left out but, when sent, must not be null (the SDK types accept None).
NOT_NULL: dict[str, tuple[str, ...]] = {
    "CreateChatCompletionResponse": (
        "system_fingerprint", "usage", *_USAGE_DETAILS,
        "choices[].message.tool_calls", "choices[].message.annotations", "choices[].message.function_call"),
    "CreateChatCompletionStreamResponse": (
        "system_fingerprint", "obfuscation", *_USAGE_DETAILS,
        "choices[].delta.role", "choices[].delta.tool_calls", "choices[].delta.tool_calls[].*",
        "choices[].delta.tool_calls[].function.*", "choices[].delta.function_call",
        "choices[].delta.function_call.*"),
    "CreateCompletionResponse": ("system_fingerprint", "usage", *_USAGE_DETAILS, "choices[].logprobs.*"),
    "Response": ("usage",),     # absent while a response is queued or in progress
}


def _slots(inst: Any, path: str, where: str = ""):
    """(where, object, key) for the path's last key in every object the path reaches."""
    if not isinstance(inst, dict):
        return
    head, _, rest = path.partition(".")
    if head == "*":
        for k in inst:
            yield where, inst, k
        return
    many = head.endswith("[]")
    key = head[:-2] if many else head
    if not rest and not many:
        yield where, inst, key
    elif key in inst:
        if not many:
            yield from _slots(inst[key], rest, f"{where}{key}/")
        elif isinstance(inst[key], list):
            for i, v in enumerate(inst[key]):
                yield from _slots(v, rest, f"{where}{key}/{i}/")


def check(name: str, inst: Any) -> list[str]:
    try:
        TYPES[name].model_validate(inst, strict=True)
        errors = []
    except pydantic.ValidationError as e:
        errors = [f"{'/'.join(map(str, err['loc'])) or '<root>'}: {err['msg'][:200]}" for err in e.errors()]
    for path in KEEP.get(name, ()):
        errors += [f"{w}{k}: required key missing (null is allowed, absence is not)"
                   for w, obj, k in _slots(inst, path) if k not in obj]
    for path in NOT_NULL.get(name, ()):
        errors += [f"{w}{k}: None is not allowed here" for w, obj, k in _slots(inst, path) if k in obj and obj[k] is None]
    return errors
