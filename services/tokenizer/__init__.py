"""The tokenizer service: chat templates, encode and decode for every configured model.

    run_tokenizer(settings)            # the process entry
    ModelTokenizer.from_package(pkg)   # the same logic without sockets
"""
from .chat_template import ChatTemplate, ImageIn, MessageIn, TemplateError, ToolCallIn
from .encoder import Encoded, ModelTokenizer, TokenizeError
from .images import Span
from .run import run_tokenizer
from .service import TokenizerService

__all__ = ["ChatTemplate", "Encoded", "ImageIn", "MessageIn", "ModelTokenizer", "Span", "TemplateError", "TokenizeError",
           "TokenizerService", "ToolCallIn", "run_tokenizer"]
