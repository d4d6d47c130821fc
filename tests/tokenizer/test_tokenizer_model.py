"""The tokenizer on the default model's package (fetched and converted on first use)."""

import pytest

from npuflow.tokenizer import MessageIn, ModelTokenizer


@pytest.mark.model
def test_default_model_chat_encoding(default_package):
    tok = ModelTokenizer.from_package(default_package)
    assert tok.encode_text("Hello, world! How are you?", add_special_tokens=True) == \
        [19556, 28, 905, 17, 1073, 359, 346, 47]
    ids, rendered = tok.encode_chat([MessageIn("user", "Hello, world! How are you?")])
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert ids[-17:] == [1, 4093, 198, 19556, 28, 905, 17, 1073, 359, 346, 47, 2, 198, 1, 520, 9531, 198]
    ids, rendered = tok.encode_chat([MessageIn("developer", "Be brief."), MessageIn("user", "Hi")])
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>") and ids.count(1) == 3
