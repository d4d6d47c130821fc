"""A small byte-level BPE tokenizer trained on a given corpus, for test folders that need a real one."""
import pathlib
from typing import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]   # ids 0, 1, 2


def build_bpe_tokenizer(path: pathlib.Path | None, corpus: Sequence[str], vocab_size: int) -> Tokenizer:
    """Trains it on `corpus` up to `vocab_size` ids, saves it as tokenizer.json at `path` (unless
    None) and returns it."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    if path is not None:
        tok.save(str(path))
    return tok
