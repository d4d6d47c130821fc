"""Embedding packages: tiny random checkpoints made by transformers (BertModel, Qwen3Model) and
encoded by sentence-transformers on torch as the reference (heavy); the package's own checks
(batching, truncation, pooling read from the sentence-transformers files) on checkpoints written
with numpy."""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

import embed_ckpt
from npuflow.convert import ConvertError, convert
from npuflow.convert.embed_source import QWEN3_QUERY_FORMAT
from npuflow.engine.base import EngineError
from npuflow.engine.embed import EmbedEngine, batches

TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog, again and again and again.",
         "cat", "How are you today? Numbers like 12345 appear too.", "a search query about embedding models"]


def _cos(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _randomize(model):
    import torch
    torch.manual_seed(0)
    with torch.no_grad():       # default init is tiny; give every weight a visible scale
        for name, p in model.named_parameters():
            scale = 0.1 if p.ndim == 1 else 1 / np.sqrt(p.shape[-1])
            p.copy_(torch.randn_like(p) * scale + (1.0 if ("norm" in name.lower() and "weight" in name) else 0))


def _bert_folder(folder, pooling, normalize):
    import torch
    import transformers
    tok = embed_ckpt.bert_tokenizer()
    d = embed_ckpt.TINY_BERT
    cfg = embed_ckpt.bert_config(tok.get_vocab_size(), d["hidden"], d["layers"], d["heads"], d["ffn"], d["max_pos"])
    config = transformers.BertConfig(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures")})
    model = transformers.BertModel(config).eval().to(torch.float32)
    _randomize(model)
    model.save_pretrained(folder, safe_serialization=True)
    embed_ckpt.bert_tokenizer_files(folder, tok, d["max_pos"])
    embed_ckpt.write_sentence_transformers(folder, pooling, normalize, d["hidden"], d["max_pos"])
    return tok


def _qwen3_folder(folder):
    import torch
    import transformers
    tok = embed_ckpt.qwen_tokenizer()
    d = embed_ckpt.TINY_QWEN3
    cfg = embed_ckpt.qwen3_config(tok.get_vocab_size(), d["hidden"], d["layers"], d["heads"], d["kv_heads"],
                                  d["head_dim"], d["ffn"], d["max_pos"])
    config = transformers.Qwen3Config(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures")})
    model = transformers.Qwen3Model(config).eval().to(torch.float32)
    _randomize(model)
    model.save_pretrained(folder, safe_serialization=True)
    embed_ckpt.qwen_tokenizer_files(folder, tok, d["max_pos"])
    embed_ckpt.write_sentence_transformers(folder, "last", True, d["hidden"], d["max_pos"])
    return tok


@pytest.mark.heavy
@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False), ("mean", False)])
def test_bert_matches_sentence_transformers(tmp_path, pooling, normalize):
    from sentence_transformers import SentenceTransformer
    tok = _bert_folder(tmp_path / "ckpt", pooling, normalize)
    pkg = convert(tmp_path / "ckpt", tmp_path / "pkg")
    assert pkg.extra["embedding"]["pooling"] == pooling and pkg.extra["embedding"]["normalize"] == normalize
    want = SentenceTransformer(str(tmp_path / "ckpt"), device="cpu").encode(TEXTS, batch_size=len(TEXTS))
    ids = [tok.encode(t).ids for t in TEXTS]
    assert all(i[0] == 2 and i[-1] == 3 for i in ids)       # [CLS] ... [SEP], as BERT's tokenizer adds
    got = EmbedEngine(pkg).embed(ids)                         # one batch, padded to the longest
    assert got.shape == want.shape
    assert _cos(got, want).min() > 0.9999
    assert np.abs(np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1) - 1).max() < 1e-4


@pytest.mark.heavy
def test_qwen3_embedding_matches_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer
    tok = _qwen3_folder(tmp_path / "ckpt")
    pkg = convert(tmp_path / "ckpt", tmp_path / "pkg")
    sec = pkg.extra["embedding"]
    assert (sec["pooling"], sec["normalize"], sec["matryoshka"]) == ("last", True, True)
    st = SentenceTransformer(str(tmp_path / "ckpt"), device="cpu")
    assert st.tokenizer.padding_side == "left"               # the reference pads on the other side
    queries = [QWEN3_QUERY_FORMAT.format(instruction="Find the sentence about animals", text=t) for t in TEXTS[:2]]
    texts = TEXTS + queries
    ids = [tok.encode(t).ids for t in texts]
    assert all(i[-1] == 0 for i in ids)                       # <|endoftext|> closes every input
    eng = EmbedEngine(pkg)
    want = st.encode(texts, batch_size=len(texts))
    got = eng.embed(ids)
    assert _cos(got, want).min() > 0.9999
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() < 1e-5
    short = st.encode(texts, batch_size=len(texts), truncate_dim=8, normalize_embeddings=True)
    got8 = eng.embed(ids, dimensions=8)
    assert got8.shape == (len(texts), 8)
    assert _cos(got8, short).min() > 0.9999
    assert np.abs(np.linalg.norm(got8, axis=1) - 1).max() < 1e-5


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    out = {}
    embed_ckpt.write_bert(root / "bert", pooling="cls", normalize=False)
    embed_ckpt.write_qwen3_embedding(root / "qwen3")
    out["bert"] = convert(root / "bert", root / "bert-pkg")
    out["qwen3"] = convert(root / "qwen3", root / "qwen3-pkg")
    out["bert-int8"] = convert(root / "bert", root / "bert-int8-pkg", int8=True)
    out["root"] = root
    return out


@pytest.mark.parametrize("kind", ["bert", "qwen3"])
def test_batched_equals_one_by_one(packages, kind):
    """Inputs of different lengths in one call: padding changes nothing and the order is kept."""
    tok = Tokenizer.from_file(str(packages["root"] / kind / "tokenizer.json"))
    ids = [tok.encode(t).ids for t in TEXTS]
    eng = EmbedEngine(packages[kind])
    together = eng.embed(ids)
    alone = np.stack([eng.embed([x])[0] for x in ids])
    assert np.abs(together - alone).max() < 1e-5
    assert _cos(together[0], together[1]) < 0.999            # different texts, different vectors
    small = EmbedEngine(packages[kind], batch_tokens=16).embed(ids)   # several runs
    assert np.abs(small - together).max() < 1e-5


def test_batches_cover_every_input_once():
    lengths = [5, 30, 2, 2, 17, 40, 3]
    groups = batches(lengths, 40)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 40 for g in groups)


def test_int8_package_is_close(packages):
    tok = Tokenizer.from_file(str(packages["root"] / "bert" / "tokenizer.json"))
    ids = [tok.encode(t).ids for t in TEXTS]
    assert packages["bert-int8"].extra["embedding"]["weights"] == "int8"
    a = EmbedEngine(packages["bert"]).embed(ids)
    b = EmbedEngine(packages["bert-int8"]).embed(ids)
    assert not np.array_equal(a, b)
    assert _cos(a, b).min() > 0.99


def test_dimensions_only_where_the_package_allows(packages):
    bert, qwen = EmbedEngine(packages["bert"]), EmbedEngine(packages["qwen3"])
    assert not bert.matryoshka and qwen.matryoshka
    with pytest.raises(EngineError, match="dimensions"):
        bert.embed([[2, 10, 3]], dimensions=8)
    with pytest.raises(EngineError, match="between 1 and 32"):
        qwen.embed([[5, 6, 0]], dimensions=33)
    full = qwen.embed([[5, 6, 0]])
    cut = qwen.embed([[5, 6, 0]], dimensions=4)
    assert np.allclose(cut, full[:, :4] / np.linalg.norm(full[:, :4]), atol=1e-6)


def test_engine_refuses_bad_inputs(packages):
    eng = EmbedEngine(packages["bert"])
    with pytest.raises(EngineError, match="input 1 is empty"):
        eng.embed([[2, 3], []])
    with pytest.raises(EngineError, match="over the model's context"):
        eng.embed([[5] * (eng.context_length + 1)])
    with pytest.raises(EngineError, match="outside the vocabulary"):
        eng.embed([[eng.vocab_size]])


def test_pooling_read_from_sentence_transformers_files(tmp_path):
    folder = embed_ckpt.write_bert(tmp_path / "b", pooling="mean", normalize=True)
    pool = json.loads((folder / "1_Pooling" / "config.json").read_text())
    pool["pooling_mode_max_tokens"] = True
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pool))
    with pytest.raises(ConvertError, match="unsupported sentence-transformers pooling"):
        convert(folder, tmp_path / "pkg")
    pool["pooling_mode_max_tokens"] = False
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pool))
    (folder / "modules.json").unlink()          # a bare BERT checkpoint: mean pooling, as sentence-transformers does
    sec = convert(folder, tmp_path / "pkg").extra["embedding"]
    assert (sec["pooling"], sec["normalize"], sec["matryoshka"], sec["query_format"]) == ("mean", False, False, "")


def test_int8_refused_for_language_models(tmp_path):
    import tinymodels
    tinymodels.write_hf(tmp_path / "llm", "llama")
    with pytest.raises(ConvertError, match="--int8 is for embedding models"):
        convert(tmp_path / "llm", tmp_path / "pkg", int8=True)


def test_footprint_has_no_kv_cache(packages):
    """An embedding model's memory: its weights and one batch's activations, no KV for max_batch x context."""
    from npuflow.config import ModelSettings
    from npuflow.models.footprint import footprint
    for source in (packages["root"] / "bert", packages["bert"].path):
        f = footprint(ModelSettings(id="e", source=str(source), max_batch=8), packages["root"] / "cache")
        assert f.parts["kv"] == 0 and f.parts["activations"] > 0 and f.parts["weights"] > 0
