"""Embeddings throughput: npuflow's /v1/embeddings against sentence-transformers on torch.

    python bench/embeddings.py [--rounds 7] [--threads 2] [--dir ~/.cache/npuflow-bench/minilm]

A random-weight BERT with all-MiniLM-L6-v2's dimensions (6 layers, hidden 384, 12 heads,
intermediate 1536, vocab 30522, 512 positions, mean pooling and Normalize, as its
sentence-transformers files say) is written locally (no downloads; tests/embed_ckpt.py) and
converted twice, float32 (the default) and with --int8. `npuflow serve` serves both packages, each
worker with `threads` onnxruntime threads; the same checkpoint is loaded by sentence-transformers
on torch with torch.set_num_threads(threads), in this process. Each round times, for each
package, one POST /v1/embeddings of 64 texts of 32 tokens each ([CLS] + 30 words + [SEP]; the
stack tokenizes them) with encoding_format base64, its vectors decoded into a numpy array
(http.client: the server's time plus the least a client must do), and the same request through
the official openai client (which also turns every vector into a list of Python floats and
validates it with pydantic); then one SentenceTransformer.encode of the same texts (batch_size
64, tokenization included, numpy out). Rounds alternate, so the machine's drift hits all alike, with a pause
before each timed call (PAUSE_S).
Printed: inputs/s of each per round, medians and their ratio to sentence-transformers, and the
cosine of npuflow's vectors to the reference.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]

import embed_ckpt  # noqa: E402
from e2e_stack import SERVER_SECTION, Stack  # noqa: E402

MINILM = dict(hidden=384, layers=6, heads=12, ffn=1536, max_pos=512)
VOCAB = 30522
INPUTS, TOKENS = 64, 32
# before each timed call: onnxruntime's threads spin for a while after a run, and the last worker's
# would otherwise take CPU from whatever runs next (the other package's worker, or torch)
PAUSE_S = 0.3
VERSION = "1"        # bump when the checkpoint below changes: the cached one is written again

CONFIG = SERVER_SECTION + """
[[models]]
id = "minilm-float32"
source = "%s"
threads = %d

[[models]]
id = "minilm-int8"
source = "%s"
threads = %d
"""


def build(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """(checkpoint folder, float32 package, int8 package), made once per VERSION."""
    from npuflow.convert import convert
    ckpt, f32, i8 = root / "ckpt", root / "pkg-float32", root / "pkg-int8"
    stamp = root / f"version-{VERSION}"
    if not stamp.exists():
        embed_ckpt.write_bert(ckpt, pooling="mean", normalize=True, vocab_size=VOCAB, **MINILM)
        convert(ckpt, f32, model_id="minilm-float32", overwrite=True)
        convert(ckpt, i8, model_id="minilm-int8", overwrite=True, int8=True)
        stamp.write_text("")
    return ckpt, f32, i8


def texts(ckpt: pathlib.Path) -> list[str]:
    """INPUTS texts of exactly TOKENS tokens each, different words in each."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    rng = np.random.default_rng(0)
    out = [" ".join(rng.choice(embed_ckpt.WORDS, TOKENS - 2)) for _ in range(INPUTS)]
    assert all(len(tok.encode(t).ids) == TOKENS for t in out)
    return out


def post(port: int, model: str, inputs: list[str]) -> np.ndarray:
    """One /v1/embeddings request (base64), its vectors as a float32 array."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", "/v1/embeddings", body=json.dumps({"model": model, "input": inputs, "encoding_format": "base64"}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    body = json.loads(r.read())
    c.close()
    assert r.status == 200, body
    assert body["usage"]["prompt_tokens"] == INPUTS * TOKENS
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dir", default=str(pathlib.Path.home() / ".cache" / "npuflow-bench" / "minilm"))
    a = p.parse_args()
    root = pathlib.Path(a.dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    ckpt, f32, i8 = build(root)
    inputs = texts(ckpt)

    import openai
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(a.threads)
    st = SentenceTransformer(str(ckpt), device="cpu")

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-embed-"))
    stack = Stack(tmp, CONFIG % (f32, a.threads, i8, a.threads)).start()
    try:
        client = openai.OpenAI(api_key="sk-", base_url=stack.base_url, max_retries=0, timeout=120)
        ref = st.encode(inputs, batch_size=INPUTS)
        for model in ("minilm-float32", "minilm-int8"):          # warm-up, and the vectors' agreement
            got = np.array([d.embedding for d in client.embeddings.create(model=model, input=inputs).data])
            cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
            print(f"{model}: cosine to sentence-transformers min {cos.min():.6f}")
        st.encode(inputs, batch_size=INPUTS)
        names = ("minilm-float32", "minilm-int8")
        rates: dict[str, list[float]] = {**{m: [] for m in names}, **{m + " (openai client)": [] for m in names},
                                         "sentence-transformers": []}
        for r in range(a.rounds):
            for model in names:
                time.sleep(PAUSE_S)
                t = time.perf_counter()
                assert post(stack.port, model, inputs).shape == (INPUTS, 384)
                rates[model].append(INPUTS / (time.perf_counter() - t))
                time.sleep(PAUSE_S)
                t = time.perf_counter()
                out = client.embeddings.create(model=model, input=inputs)
                rates[model + " (openai client)"].append(INPUTS / (time.perf_counter() - t))
                assert len(out.data) == INPUTS and out.usage.prompt_tokens == INPUTS * TOKENS
            time.sleep(PAUSE_S)
            t = time.perf_counter()
            st.encode(inputs, batch_size=INPUTS)
            rates["sentence-transformers"].append(INPUTS / (time.perf_counter() - t))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()))
        base = statistics.median(rates["sentence-transformers"])
        print(f"\n{INPUTS} inputs of {TOKENS} tokens, one request; {a.threads} threads each; median of {a.rounds} rounds")
        for k, v in rates.items():
            print(f"  {k:38s} {statistics.median(v):7.1f} inputs/s   {statistics.median(v) / base:5.2f}x")
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
