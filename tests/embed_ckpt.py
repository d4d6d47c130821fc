"""Embedding checkpoints for tests and bench/embeddings.py, written without torch: a BERT-family
sentence encoder and a Qwen3-Embedding-shaped decoder, random weights (numpy, safetensors), each
with a tokenizer built here and the sentence-transformers files (modules.json, the Pooling
config, Normalize) that say how it pools."""
from __future__ import annotations

import json
import pathlib

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from bpe_tokenizer import build_bpe_tokenizer

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the quick brown fox jumps over lazy dog hello world how are you today numbers small models useful "
         "tests converters embedding search query document retrieval sentence vector cat sat on mat").split()
CORPUS = ("The quick brown fox jumps over the lazy dog. Hello, world! How are you today? Embeddings of "
          "queries and documents. Numbers like 12345 and 678 appear too. ") * 20
TINY_BERT = dict(hidden=32, layers=2, heads=4, ffn=64, max_pos=128)
TINY_QWEN3 = dict(hidden=32, layers=2, heads=4, kv_heads=2, head_dim=16, ffn=64, max_pos=128)


def bert_tokenizer(vocab_size: int | None = None) -> Tokenizer:
    """A WordPiece tokenizer as BERT's ([CLS] text [SEP], lower case); `vocab_size` pads the
    vocabulary with unused ids (e.g. 30522 for all-MiniLM-L6-v2's shape)."""
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"))
    vocab = BERT_SPECIALS + WORDS + chars + ["##" + c for c in chars]
    vocab = list(dict.fromkeys(vocab))
    if vocab_size:
        vocab += [f"[unused{i}]" for i in range(vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    return tok


def qwen_tokenizer() -> Tokenizer:
    """A byte-level BPE whose encoding ends with <|endoftext|>, as Qwen3-Embedding's does."""
    tok = build_bpe_tokenizer(None, [CORPUS], 300)
    tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", pair="$A $B <|endoftext|>",
                                                       special_tokens=[("<|endoftext|>", 0)])
    return tok


def write_sentence_transformers(folder: pathlib.Path, pooling: str, normalize: bool, hidden: int,
                                max_seq_length: int) -> None:
    """modules.json, 1_Pooling/config.json (and 2_Normalize) as sentence-transformers saves them."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": pooling == "last", "include_prompt": True}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                  "do_lower_case": False}))


def bert_config(vocab: int, hidden: int, layers: int, heads: int, ffn: int, max_pos: int) -> dict:
    return {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": ffn,
            "vocab_size": vocab, "max_position_embeddings": max_pos, "type_vocab_size": 2,
            "hidden_act": "gelu", "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "position_embedding_type": "absolute", "pad_token_id": 0,
            "torch_dtype": "float32"}


def bert_tokenizer_files(folder: pathlib.Path, tok: Tokenizer, max_len: int) -> None:
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]", "model_max_length": max_len}))


def write_bert(folder: pathlib.Path, *, pooling: str = "mean", normalize: bool = True, seed: int = 0,
               vocab_size: int | None = None, **dims) -> pathlib.Path:
    """A BertModel checkpoint folder (tensor names as sentence-transformers models save them)."""
    from safetensors.numpy import save_file
    d = {**TINY_BERT, **dims}
    folder.mkdir(parents=True, exist_ok=True)
    tok = bert_tokenizer(vocab_size)
    V, H, F = tok.get_vocab_size(), d["hidden"], d["ffn"]
    rng = np.random.default_rng(seed)
    mat = lambda n, k: rng.normal(0, 1 / np.sqrt(k), (n, k)).astype(np.float32)  # noqa: E731
    vec = lambda n, c=0.0: (c + 0.1 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    w = {"embeddings.word_embeddings.weight": rng.normal(0, 1, (V, H)).astype(np.float32),
         "embeddings.position_embeddings.weight": rng.normal(0, 0.5, (d["max_pos"], H)).astype(np.float32),
         "embeddings.token_type_embeddings.weight": rng.normal(0, 0.5, (2, H)).astype(np.float32),
         "embeddings.LayerNorm.weight": vec(H, 1.0), "embeddings.LayerNorm.bias": vec(H)}
    for i in range(d["layers"]):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            w[p + f"attention.self.{n}.weight"], w[p + f"attention.self.{n}.bias"] = mat(H, H), vec(H)
        w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"] = mat(H, H), vec(H)
        w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"] = vec(H, 1.0), vec(H)
        w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"] = mat(F, H), vec(F)
        w[p + "output.dense.weight"], w[p + "output.dense.bias"] = mat(H, F), vec(H)
        w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"] = vec(H, 1.0), vec(H)
    w["pooler.dense.weight"], w["pooler.dense.bias"] = mat(H, H), vec(H)
    save_file(w, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(bert_config(V, H, d["layers"], d["heads"], F, d["max_pos"])))
    bert_tokenizer_files(folder, tok, d["max_pos"])
    write_sentence_transformers(folder, pooling, normalize, H, d["max_pos"])
    return folder


def qwen3_config(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int, ffn: int,
                 max_pos: int) -> dict:
    return {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "head_dim": head_dim, "intermediate_size": ffn, "vocab_size": vocab, "max_position_embeddings": max_pos,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": True,
            "attention_bias": False, "bos_token_id": 0, "eos_token_id": 0, "torch_dtype": "float32",
            "use_sliding_window": False}


def qwen_tokenizer_files(folder: pathlib.Path, tok: Tokenizer, max_len: int) -> None:
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "padding_side": "left", "model_max_length": max_len}))


def write_qwen3_embedding(folder: pathlib.Path, *, seed: int = 0, **dims) -> pathlib.Path:
    """A Qwen3-Embedding-shaped folder: Qwen3Model tensors (no `model.` prefix), last-token
    pooling and Normalize, a tokenizer that appends <|endoftext|>."""
    from safetensors.numpy import save_file
    d = {**TINY_QWEN3, **dims}
    folder.mkdir(parents=True, exist_ok=True)
    tok = qwen_tokenizer()
    V, H, F, hd, nh, nkv = tok.get_vocab_size(), d["hidden"], d["ffn"], d["head_dim"], d["heads"], d["kv_heads"]
    rng = np.random.default_rng(seed)
    mat = lambda n, k: rng.normal(0, 1 / np.sqrt(k), (n, k)).astype(np.float32)  # noqa: E731
    norm = lambda n: (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    w = {"embed_tokens.weight": rng.normal(0, 1, (V, H)).astype(np.float32), "norm.weight": norm(H)}
    for i in range(d["layers"]):
        p = f"layers.{i}."
        w[p + "input_layernorm.weight"], w[p + "post_attention_layernorm.weight"] = norm(H), norm(H)
        w[p + "self_attn.q_proj.weight"], w[p + "self_attn.k_proj.weight"] = mat(nh * hd, H), mat(nkv * hd, H)
        w[p + "self_attn.v_proj.weight"], w[p + "self_attn.o_proj.weight"] = mat(nkv * hd, H), mat(H, nh * hd)
        w[p + "self_attn.q_norm.weight"], w[p + "self_attn.k_norm.weight"] = norm(hd), norm(hd)
        w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"] = mat(F, H), mat(F, H)
        w[p + "mlp.down_proj.weight"] = mat(H, F)
    save_file(w, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(qwen3_config(V, H, d["layers"], nh, nkv, hd, F, d["max_pos"])))
    qwen_tokenizer_files(folder, tok, d["max_pos"])
    write_sentence_transformers(folder, "last", True, H, d["max_pos"])
    return folder
