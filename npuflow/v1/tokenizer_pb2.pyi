from npuflow.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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

class ImageRef(_message.Message):
    __slots__ = ("width", "height", "detail")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    detail: str
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class ContentPart(_message.Message):
    __slots__ = ("text", "image")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: ImageRef
    def __init__(self, text: _Optional[str] = ..., image: _Optional[_Union[ImageRef, _Mapping]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "name", "tool_call_id", "tool_calls", "parts")
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
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    parts: _containers.RepeatedCompositeFieldContainer[ContentPart]
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., name: _Optional[str] = ..., tool_call_id: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., parts: _Optional[_Iterable[_Union[ContentPart, _Mapping]]] = ...) -> None: ...

class ChatInput(_message.Message):
    __slots__ = ("messages", "add_generation_prompt", "tools_json", "template_kwargs_json")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ADD_GENERATION_PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOOLS_JSON_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    add_generation_prompt: bool
    tools_json: str
    template_kwargs_json: str
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., add_generation_prompt: _Optional[bool] = ..., tools_json: _Optional[str] = ..., template_kwargs_json: _Optional[str] = ...) -> None: ...

class EmbedTexts(_message.Message):
    __slots__ = ("texts", "instruction")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    instruction: str
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., instruction: _Optional[str] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("model", "chat", "text", "embed", "add_special_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    EMBED_FIELD_NUMBER: _ClassVar[int]
    ADD_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    chat: ChatInput
    text: str
    embed: EmbedTexts
    add_special_tokens: bool
    def __init__(self, model: _Optional[str] = ..., chat: _Optional[_Union[ChatInput, _Mapping]] = ..., text: _Optional[str] = ..., embed: _Optional[_Union[EmbedTexts, _Mapping]] = ..., add_special_tokens: _Optional[bool] = ...) -> None: ...

class ImageSpan(_message.Message):
    __slots__ = ("start", "end", "placeholders")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PLACEHOLDERS_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    placeholders: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., placeholders: _Optional[int] = ...) -> None: ...

class EncodeResult(_message.Message):
    __slots__ = ("token_ids", "rendered", "images", "template_thinks", "inputs")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    RENDERED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_THINKS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    rendered: str
    images: _containers.RepeatedCompositeFieldContainer[ImageSpan]
    template_thinks: bool
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenIds]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., rendered: _Optional[str] = ..., images: _Optional[_Iterable[_Union[ImageSpan, _Mapping]]] = ..., template_thinks: _Optional[bool] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.TokenIds, _Mapping]]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("model", "token_ids", "skip_special_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SKIP_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    skip_special_tokens: bool
    def __init__(self, model: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., skip_special_tokens: _Optional[bool] = ...) -> None: ...

class DecodeResult(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class TokenizerModel(_message.Message):
    __slots__ = ("model", "vocab_size", "failed_reason", "vision")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    FAILED_REASON_FIELD_NUMBER: _ClassVar[int]
    VISION_FIELD_NUMBER: _ClassVar[int]
    model: str
    vocab_size: int
    failed_reason: str
    vision: bool
    def __init__(self, model: _Optional[str] = ..., vocab_size: _Optional[int] = ..., failed_reason: _Optional[str] = ..., vision: _Optional[bool] = ...) -> None: ...

class ListTokenizerModels(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadTokenizerModel(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class TokenizerModels(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[TokenizerModel]
    def __init__(self, models: _Optional[_Iterable[_Union[TokenizerModel, _Mapping]]] = ...) -> None: ...

class TokenizerRequest(_message.Message):
    __slots__ = ("request_id", "encode", "decode", "list_models", "load_model")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENCODE_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    LIST_MODELS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MODEL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    encode: EncodeRequest
    decode: DecodeRequest
    list_models: ListTokenizerModels
    load_model: LoadTokenizerModel
    def __init__(self, request_id: _Optional[str] = ..., encode: _Optional[_Union[EncodeRequest, _Mapping]] = ..., decode: _Optional[_Union[DecodeRequest, _Mapping]] = ..., list_models: _Optional[_Union[ListTokenizerModels, _Mapping]] = ..., load_model: _Optional[_Union[LoadTokenizerModel, _Mapping]] = ...) -> None: ...

class TokenizerResponse(_message.Message):
    __slots__ = ("request_id", "encoded", "decoded", "error", "models", "loaded")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    DECODED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    encoded: EncodeResult
    decoded: DecodeResult
    error: _common_pb2.Error
    models: TokenizerModels
    loaded: TokenizerModel
    def __init__(self, request_id: _Optional[str] = ..., encoded: _Optional[_Union[EncodeResult, _Mapping]] = ..., decoded: _Optional[_Union[DecodeResult, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., models: _Optional[_Union[TokenizerModels, _Mapping]] = ..., loaded: _Optional[_Union[TokenizerModel, _Mapping]] = ...) -> None: ...
