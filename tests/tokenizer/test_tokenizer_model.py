"""The tokenizer on the default model's package (skipped unless it is already in the cache)."""
import pathlib

import pytest

from npuflow.config import load_settings
from npuflow.tokenizer import MessageIn, ModelTokenizer


def _package():
    cache = pathlib.Path(load_settings().server.cache_dir)
    if not any(cache.glob("models/smollm2-135m-instruct-*/manifest.json")):
        return None
    from npuflow.models.resolve import resolve_model
    return resolve_model("default", cache, "smollm2-135m-instruct")


@pytest.mark.model
def test_default_model_chat_encoding():
    pkg = _package()
    if pkg is None:
        pytest.skip("the default model is not in the cache (run `npuflow models` first)")
    tok = ModelTokenizer.from_package(pkg)
    assert tok.encode_text("Hello, world! How are you?", add_special_tokens=True) == \
        [19556, 28, 905, 17, 1073, 359, 346, 47]
    ids, rendered = tok.encode_chat([MessageIn("user", "Hello, world! How are you?")])
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert ids[-17:] == [1, 4093, 198, 19556, 28, 905, 17, 1073, 359, 346, 47, 2, 198, 1, 520, 9531, 198]
    ids, rendered = tok.encode_chat([MessageIn("developer", "Be brief."), MessageIn("user", "Hi")])
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>") and ids.count(1) == 3
