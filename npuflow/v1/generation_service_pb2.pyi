from npuflow.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResponseFormat(_message.Message):
    __slots__ = ("type", "json_schema")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[ResponseFormat.Type]
        TYPE_TEXT: _ClassVar[ResponseFormat.Type]
        TYPE_JSON_OBJECT: _ClassVar[ResponseFormat.Type]
        TYPE_JSON_SCHEMA: _ClassVar[ResponseFormat.Type]
    TYPE_UNSPECIFIED: ResponseFormat.Type
    TYPE_TEXT: ResponseFormat.Type
    TYPE_JSON_OBJECT: ResponseFormat.Type
    TYPE_JSON_SCHEMA: ResponseFormat.Type
    class JsonSchema(_message.Message):
        __slots__ = ("name", "description", "schema", "strict")
        NAME_FIELD_NUMBER: _ClassVar[int]
        DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
        SCHEMA_FIELD_NUMBER: _ClassVar[int]
        STRICT_FIELD_NUMBER: _ClassVar[int]
        name: str
        description: str
        schema: str
        strict: bool
        def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., schema: _Optional[str] = ..., strict: _Optional[bool] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    type: ResponseFormat.Type
    json_schema: ResponseFormat.JsonSchema
    def __init__(self, type: _Optional[_Union[ResponseFormat.Type, str]] = ..., json_schema: _Optional[_Union[ResponseFormat.JsonSchema, _Mapping]] = ...) -> None: ...

class GenerateTextRequest(_message.Message):
    __slots__ = ("model", "prompt", "prompt_token_ids", "sampling", "n", "response_format")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    n: int
    response_format: ResponseFormat
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., n: _Optional[int] = ..., response_format: _Optional[_Union[ResponseFormat, _Mapping]] = ...) -> None: ...

class ChatTurn(_message.Message):
    __slots__ = ("role", "content", "name", "tool_call_id", "tool_calls", "parts")
    class Image(_message.Message):
        __slots__ = ("data", "mime_type", "detail")
        DATA_FIELD_NUMBER: _ClassVar[int]
        MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
        DETAIL_FIELD_NUMBER: _ClassVar[int]
        data: bytes
        mime_type: str
        detail: str
        def __init__(self, data: _Optional[bytes] = ..., mime_type: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...
    class Part(_message.Message):
        __slots__ = ("text", "image")
        TEXT_FIELD_NUMBER: _ClassVar[int]
        IMAGE_FIELD_NUMBER: _ClassVar[int]
        text: str
        image: ChatTurn.Image
        def __init__(self, text: _Optional[str] = ..., image: _Optional[_Union[ChatTurn.Image, _Mapping]] = ...) -> None: ...
    class ToolCall(_message.Message):
        __slots__ = ("id", "type", "function_name", "arguments")
        ID_FIELD_NUMBER: _ClassVar[int]
        TYPE_FIELD_NUMBER: _ClassVar[int]
        FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
        ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
        id: str
        type: str
        function_name: str
        arguments: str
        def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., function_name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    name: str
    tool_call_id: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ChatTurn.ToolCall]
    parts: _containers.RepeatedCompositeFieldContainer[ChatTurn.Part]
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., name: _Optional[str] = ..., tool_call_id: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ChatTurn.ToolCall, _Mapping]]] = ..., parts: _Optional[_Iterable[_Union[ChatTurn.Part, _Mapping]]] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("model", "messages", "sampling", "n", "response_format", "tools_json", "tool_choice", "chat_template_kwargs_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TOOLS_JSON_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatTurn]
    sampling: _common_pb2.SamplingParams
    n: int
    response_format: ResponseFormat
    tools_json: str
    tool_choice: str
    chat_template_kwargs_json: str
    def __init__(self, model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatTurn, _Mapping]]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., n: _Optional[int] = ..., response_format: _Optional[_Union[ResponseFormat, _Mapping]] = ..., tools_json: _Optional[str] = ..., tool_choice: _Optional[str] = ..., chat_template_kwargs_json: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("id", "choices", "usage", "model")
    class ToolCallDelta(_message.Message):
        __slots__ = ("index", "id", "type", "function_name", "arguments")
        INDEX_FIELD_NUMBER: _ClassVar[int]
        ID_FIELD_NUMBER: _ClassVar[int]
        TYPE_FIELD_NUMBER: _ClassVar[int]
        FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
        ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
        index: int
        id: str
        type: str
        function_name: str
        arguments: str
        def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., type: _Optional[str] = ..., function_name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...
    class Choice(_message.Message):
        __slots__ = ("index", "text", "token_ids", "logprobs", "finish_reason", "stop_reason", "tool_calls", "reasoning_text")
        INDEX_FIELD_NUMBER: _ClassVar[int]
        TEXT_FIELD_NUMBER: _ClassVar[int]
        TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
        LOGPROBS_FIELD_NUMBER: _ClassVar[int]
        FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
        STOP_REASON_FIELD_NUMBER: _ClassVar[int]
        TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
        REASONING_TEXT_FIELD_NUMBER: _ClassVar[int]
        index: int
        text: str
        token_ids: _containers.RepeatedScalarFieldContainer[int]
        logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprob]
        finish_reason: _common_pb2.FinishReason
        stop_reason: str
        tool_calls: _containers.RepeatedCompositeFieldContainer[GenerateResponse.ToolCallDelta]
        reasoning_text: str
        def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprob, _Mapping]]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., stop_reason: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[GenerateResponse.ToolCallDelta, _Mapping]]] = ..., reasoning_text: _Optional[str] = ...) -> None: ...
    class Usage(_message.Message):
        __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_prompt_tokens", "reasoning_tokens")
        PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
        COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
        TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
        CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
        REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
        prompt_tokens: int
        completion_tokens: int
        total_tokens: int
        cached_prompt_tokens: int
        reasoning_tokens: int
        def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    choices: _containers.RepeatedCompositeFieldContainer[GenerateResponse.Choice]
    usage: GenerateResponse.Usage
    model: str
    def __init__(self, id: _Optional[str] = ..., choices: _Optional[_Iterable[_Union[GenerateResponse.Choice, _Mapping]]] = ..., usage: _Optional[_Union[GenerateResponse.Usage, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("model", "text", "messages", "add_special_tokens", "tools_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ADD_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    text: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatTurn]
    add_special_tokens: bool
    tools_json: str
    def __init__(self, model: _Optional[str] = ..., text: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatTurn, _Mapping]]] = ..., add_special_tokens: _Optional[bool] = ..., tools_json: _Optional[str] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("token_ids", "context_length")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    context_length: int
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., context_length: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    class Model(_message.Message):
        __slots__ = ("id", "ready", "context_length", "max_batch", "created", "state", "state_reason", "vision", "footprint_bytes", "memory_pool", "embedding")
        ID_FIELD_NUMBER: _ClassVar[int]
        READY_FIELD_NUMBER: _ClassVar[int]
        CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
        MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
        CREATED_FIELD_NUMBER: _ClassVar[int]
        STATE_FIELD_NUMBER: _ClassVar[int]
        STATE_REASON_FIELD_NUMBER: _ClassVar[int]
        VISION_FIELD_NUMBER: _ClassVar[int]
        FOOTPRINT_BYTES_FIELD_NUMBER: _ClassVar[int]
        MEMORY_POOL_FIELD_NUMBER: _ClassVar[int]
        EMBEDDING_FIELD_NUMBER: _ClassVar[int]
        id: str
        ready: bool
        context_length: int
        max_batch: int
        created: int
        state: _common_pb2.ModelState
        state_reason: str
        vision: bool
        footprint_bytes: int
        memory_pool: str
        embedding: bool
        def __init__(self, id: _Optional[str] = ..., ready: _Optional[bool] = ..., context_length: _Optional[int] = ..., max_batch: _Optional[int] = ..., created: _Optional[int] = ..., state: _Optional[_Union[_common_pb2.ModelState, str]] = ..., state_reason: _Optional[str] = ..., vision: _Optional[bool] = ..., footprint_bytes: _Optional[int] = ..., memory_pool: _Optional[str] = ..., embedding: _Optional[bool] = ...) -> None: ...
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ListModelsResponse.Model]
    def __init__(self, models: _Optional[_Iterable[_Union[ListModelsResponse.Model, _Mapping]]] = ...) -> None: ...

class EmbedTextRequest(_message.Message):
    __slots__ = ("model", "input", "input_token_ids", "dimensions", "instruction")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    input: _containers.RepeatedScalarFieldContainer[str]
    input_token_ids: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenIds]
    dimensions: int
    instruction: str
    def __init__(self, model: _Optional[str] = ..., input: _Optional[_Iterable[str]] = ..., input_token_ids: _Optional[_Iterable[_Union[_common_pb2.TokenIds, _Mapping]]] = ..., dimensions: _Optional[int] = ..., instruction: _Optional[str] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("data", "usage", "model")
    class Embedding(_message.Message):
        __slots__ = ("index", "values")
        INDEX_FIELD_NUMBER: _ClassVar[int]
        VALUES_FIELD_NUMBER: _ClassVar[int]
        index: int
        values: _containers.RepeatedScalarFieldContainer[float]
        def __init__(self, index: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...
    class Usage(_message.Message):
        __slots__ = ("prompt_tokens", "total_tokens")
        PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
        TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
        prompt_tokens: int
        total_tokens: int
        def __init__(self, prompt_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...
    DATA_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    data: _containers.RepeatedCompositeFieldContainer[EmbedResponse.Embedding]
    usage: EmbedResponse.Usage
    model: str
    def __init__(self, data: _Optional[_Iterable[_Union[EmbedResponse.Embedding, _Mapping]]] = ..., usage: _Optional[_Union[EmbedResponse.Usage, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...
