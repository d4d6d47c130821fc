"""A small byte-level BPE tokenizer and package for the tokenizer tests."""
import pathlib

from tokenizers import Tokenizer

from bpe_tokenizer import build_bpe_tokenizer
from npuflow.models.package import Dims, ModelPackage

CORPUS = ["Hello, world! How are you?", "The quick brown fox jumps over the lazy dog.",
          "héllo wörld, naïve café", "日本語のテキスト", "emoji 😀 🚀 ok", "def f(x):\n    return x + 1\n"] * 20

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tokenizer(path: pathlib.Path) -> Tokenizer:
    return build_bpe_tokenizer(path, CORPUS, vocab_size=400)


def make_package(tokenizer_json: pathlib.Path, *, template: str = CHATML, bos: int | None = None) -> ModelPackage:
    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
    return ModelPackage(path=tokenizer_json.parent, id="tiny", architecture="llama", engine="cpu",
                        dims=Dims(hidden=8, layers=1, heads=1, kv_heads=1, head_dim=8, ffn=8, vocab=vocab),
                        context_length=256, eos_token_ids=(2,), bos_token_id=bos, chat_template=template,
                        files={"tokenizer": tokenizer_json.name})
