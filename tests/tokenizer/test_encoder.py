import pytest

from npuflow.tokenizer import MessageIn, ModelTokenizer, TokenizeError
from npuflow.v1 import common_pb2

from tok_helpers import make_package


def test_chat_special_tokens_are_single_ids(package):
    tok = ModelTokenizer.from_package(package)
    ids, rendered = tok.encode_chat([MessageIn("user", "Hello, world!")])
    assert rendered.startswith("<|im_start|>system\n")
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2
    assert tok.decode(ids, skip_special_tokens=False) == rendered
    assert "<|im_start|>" not in tok.decode(ids, skip_special_tokens=True)


def test_text_encode_bos(tokenizer_json):
    plain = ModelTokenizer.from_package(make_package(tokenizer_json))
    with_bos = ModelTokenizer.from_package(make_package(tokenizer_json, bos=0))
    ids = plain.encode_text("Hello", add_special_tokens=True)
    assert with_bos.encode_text("Hello", add_special_tokens=True) == [0, *ids]
    assert with_bos.encode_text("Hello", add_special_tokens=False) == ids
    assert plain.decode(ids) == "Hello"


def test_template_error_is_invalid_argument(tokenizer_json):
    tok = ModelTokenizer.from_package(make_package(tokenizer_json, template="{{ raise_exception('no system') }}"))
    with pytest.raises(TokenizeError) as e:
        tok.encode_chat([MessageIn("system", "x")])
    assert e.value.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT and e.value.param == "messages"
    assert e.value.message == "no system"


def test_bad_tools_and_ids(package):
    tok = ModelTokenizer.from_package(package)
    with pytest.raises(TokenizeError) as e:
        tok.encode_chat([MessageIn("user", "x")], tools_json="{not json")
    assert e.value.param == "tools"
    with pytest.raises(TokenizeError) as e:
        tok.decode([tok.vocab_size])
    assert e.value.param == "token_ids"
    with pytest.raises(TokenizeError):
        tok.encode_chat([])


def test_no_template_still_encodes_text(tokenizer_json):
    tok = ModelTokenizer.from_package(make_package(tokenizer_json, template=""))
    assert tok.encode_text("ok")
    with pytest.raises(TokenizeError, match="no chat template"):
        tok.encode_chat([MessageIn("user", "x")])
