"""Greedy output of the AX engine (the default model exported with --layout ax, run on the
onnxruntime mirror of pyaxengine) is token-identical to the CPU engine's, for prompts shorter than,
equal to and longer than one prefill chunk, up to the end of the KV cache.

The AX signature hands the residual stream, the KV cache and the embeddings over in bf16. Any
difference before a bf16 rounding, however small, moves values across rounding boundaries, so the
bf16 interface amplifies kernel-level differences to logit differences of about 1. The CPU
engine is therefore compared in its bf16-boundaries build (`npuflow convert --bf16-boundaries`:
the same graph, rounding where the AX graphs do, the same GroupQueryAttention kernel), and the
two agree to the bit: identical logits at every step. That proves the AX engine's host side
(chunking through the shape groups, indices, masks, KV writes, decode through group 0) computes
the same model as the CPU engine. The served CPU engine (float32 boundaries) is then checked to
be close to the AX engine, the bf16 interface being the only difference.
"""
import numpy as np
import pytest

from ax_shapes import KV, PREFILL
from npuflow.engine.base import EngineError

pytestmark = pytest.mark.model

SHORT = "What is the capital of France?"                                      # 16 tokens
ONE_CHUNK = ("What is the largest planet in our solar system? Please answer in one short sentence "
             "and then stop writing, thank you")                              # 32 tokens
LONG = ("Tell me a long story about a dragon who learns to code in Python and builds a web server "
        "for the village bakery.")                                           # 33 tokens
EOS = 2
TEXT = ("The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon, and Neil "
        "Armstrong became the first person to walk on its surface. Water boils at 100 degrees Celsius "
        "at sea level. def add(a, b):\n    return a + b\nprint(add(2, 3))")


def greedy(engine, prompt, limit, slot=0):
    """Greedy tokens and the logits each was chosen from."""
    engine.release(slot)
    logits = engine.prefill(slot, prompt)
    out, steps = [], []
    while True:
        steps.append(logits)
        out.append(int(np.argmax(logits)))
        if out[-1] == EOS or len(out) == limit:
            break
        logits = engine.decode([slot], [out[-1]])[0]
    engine.release(slot)
    return out, steps


@pytest.mark.parametrize("text,n_prompt,n_out", [(SHORT, 16, 8), (ONE_CHUNK, PREFILL, 27)])
def test_greedy_identical_to_eos(ax_engine, cpu_engine, chat, text, n_prompt, n_out):
    prompt = chat(text)
    assert len(prompt) == n_prompt
    ax, ax_logits = greedy(ax_engine, prompt, KV - len(prompt))
    cpu, cpu_logits = greedy(cpu_engine, prompt, KV - len(prompt))
    assert ax == cpu
    assert len(ax) == n_out and ax[-1] == EOS
    assert all(np.array_equal(a, c) for a, c in zip(ax_logits, cpu_logits))


def test_to_the_end_of_the_kv_cache_through_the_scheduler(ax_engine, cpu_engine, chat, ax_package):
    """A prompt longer than one chunk, generated until the cache is full: the scheduler ends it
    with finish_reason length (never an error or wrap-around) and every token matches the CPU's."""
    from npuflow.llm_worker.detok import load_token_table
    from npuflow.llm_worker.request import ModelLimits
    from npuflow.llm_worker.scheduler import Scheduler
    from npuflow.v1 import common_pb2, worker_pb2

    prompt = chat(LONG)
    assert len(prompt) == PREFILL + 1
    limits = ModelLimits("ax", ax_engine.vocab_size, ax_engine.context_length, (EOS,), {"temperature": 0.0})
    sched = Scheduler(ax_engine, load_token_table(ax_package.tokenizer_path, ax_engine.vocab_size), limits, max_queue=4)
    sched.submit(worker_pb2.GenerateRequest(request_id="r", prompt_token_ids=prompt,
                                            sampling=common_pb2.SamplingParams(temperature=0.0)), b"peer")
    events = []
    while sched.has_work:
        events += [ev for _, ev in sched.step()]
    assert events[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH and not events[-1].error.message
    ax = [t for ev in events for t in ev.token_ids]
    assert len(ax) == KV - len(prompt) == events[-1].completion_tokens
    cpu, _ = greedy(cpu_engine, prompt, KV - len(prompt))
    assert ax == cpu


@pytest.mark.ort_kernels
@pytest.mark.parametrize("text", ["Hello, world! How are you?", "Count from 1 to 20.",
                                  "Explain recursion to a five year old, with an example in Python code."])
def test_long_generations_identical(ax_engine, cpu_engine, chat, text):
    """Prompts whose greedy paths split within a few tokens when the CPU side keeps float32
    boundaries run identically to EOS or the end of the cache."""
    prompt = chat(text)
    ax, _ = greedy(ax_engine, prompt, KV - len(prompt))
    cpu, _ = greedy(cpu_engine, prompt, KV - len(prompt))
    assert ax == cpu and len(ax) > 200


def test_close_to_the_served_cpu_engine(ax_engine, served_cpu_engine, chat):
    """Teacher-forced over mixed text, the AX engine's log-probabilities stay close to the served
    CPU engine's (measured: max 0.46, mean 0.07), and both pick the same next token wherever the
    CPU engine's choice is clear."""
    ids = chat(TEXT)
    def logprobs(engine):
        engine.release(0)
        x = engine.prefill(0, ids, all_logits=True).astype(np.float64)
        engine.release(0)
        x -= x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    ax, cpu = logprobs(ax_engine), logprobs(served_cpu_engine)
    rows = np.arange(len(ids) - 1)
    diff = np.abs(ax[rows, ids[1:]] - cpu[rows, ids[1:]])
    assert diff.max() < 0.8 and diff.mean() < 0.1
    top2 = np.sort(cpu, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1.0
    assert clear.sum() > len(ids) // 2
    assert np.array_equal(ax.argmax(-1)[clear], cpu.argmax(-1)[clear])


def test_full_slot_raises(ax_engine):
    ax_engine.release(1)
    ax_engine.prefill(1, [5] * (KV - 1))
    ax_engine.decode([1], [6])
    assert ax_engine.length(1) == KV
    with pytest.raises(EngineError, match="full"):
        ax_engine.decode([1], [7])
    ax_engine.release(1)
    with pytest.raises(EngineError, match="does not fit"):
        ax_engine.prefill(1, [5] * (KV + 1))
    assert ax_engine.length(1) == 0


def test_unaligned_prefill_equals_one_call(ax_engine, chat):
    prompt = chat(LONG) + chat(SHORT)                       # 49 tokens
    ax_engine.release(0)
    whole = ax_engine.prefill(0, prompt)
    step_whole = ax_engine.decode([0], [11])
    ax_engine.release(0)
    ax_engine.prefill(0, prompt[:20])
    ax_engine.prefill(0, prompt[20:45])                    # re-runs rows 0..19 of the first chunk
    parts = ax_engine.prefill(0, prompt[45:])
    assert np.array_equal(whole, parts)
    assert np.array_equal(step_whole, ax_engine.decode([0], [11]))
    ax_engine.release(0)
    rows = ax_engine.prefill(0, prompt, all_logits=True)
    assert rows.shape == (len(prompt), ax_engine.vocab_size) and np.array_equal(rows[-1], whole)
    ax_engine.release(0)


def test_two_slots_do_not_interfere(ax_engine, chat):
    a, b = chat(SHORT), chat(ONE_CHUNK)
    alone, _ = greedy(ax_engine, a, 6)
    ax_engine.prefill(1, b)
    ax_engine.prefill(0, a[:-1])
    logits = ax_engine.prefill(0, a[-1:])
    out = []
    for _ in range(6):
        out.append(int(np.argmax(logits)))
        logits = ax_engine.decode([1, 0], [3, out[-1]])[1]
    assert out == alone and ax_engine.length(1) == len(b) + 6
    ax_engine.release(0)
    ax_engine.release(1)


def test_truncate_then_prefill_equals_one_call(ax_engine, chat):
    """A kept prefix that ends inside a chunk: the rest is prefilled by re-running that chunk's
    kept tokens, and the logits equal a fresh prefill of the whole prompt."""
    prompt = chat(LONG) + chat(SHORT)                       # 49 tokens
    ax_engine.release(0)
    whole = ax_engine.prefill(0, prompt)
    ax_engine.release(0)
    ax_engine.prefill(0, prompt[:40])
    ax_engine.decode([0], [11])
    ax_engine.truncate(0, 37)
    assert np.array_equal(ax_engine.prefill(0, prompt[37:]), whole)
    ax_engine.release(0)
