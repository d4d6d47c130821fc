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


THINKING_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n"
                     "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
                     "{% else %}<think>\n{% endif %}{% endif %}")


def test_template_kwargs_reach_the_template(tokenizer_json):
    """chat_template_kwargs become template variables (Qwen3's enable_thinking), under the fixed
    ones (messages cannot be replaced); a value that is not a JSON object is a clear error."""
    tok = ModelTokenizer.from_package(make_package(tokenizer_json, template=THINKING_TEMPLATE))
    hi = [MessageIn("user", "hi")]
    assert tok.template_thinks and not ModelTokenizer.from_package(make_package(tokenizer_json)).template_thinks
    assert tok.encode_conversation(hi).rendered.endswith("<|im_start|>assistant\n<think>\n")
    off = tok.encode_conversation(hi, template_kwargs_json='{"enable_thinking": false}').rendered
    assert off.endswith("<think>\n\n</think>\n\n")
    same = tok.encode_conversation(hi, template_kwargs_json='{"messages": [], "enable_thinking": false}')
    assert same.rendered == off
    for bad in ("[1]", "{nope"):
        with pytest.raises(TokenizeError) as e:
            tok.encode_conversation(hi, template_kwargs_json=bad)
        assert e.value.param == "chat_template_kwargs" and e.value.code == common_pb2.ERROR_CODE_INVALID_ARGUMENT
