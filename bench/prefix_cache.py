"""What reusing a finished prompt's KV saves over a multi-turn conversation.

A conversation with a long system prompt runs turn by turn through the worker's scheduler and the
default model's CPU engine in this process (the gateway adds the same on both sides). Each turn's
prompt is the whole conversation so far in the model's chat format, as an OpenAI client sends
it; the answer (greedy, --max-tokens) becomes part of the next turn. The same conversation runs
with the prefix cache on and off, alternating, and the script reports per turn the time to first
token and the prompt tokens the engine computed.

    .venv/bin/python bench/prefix_cache.py [--turns 6] [--rounds 3] [--max-tokens 24] [--threads 2]
    .venv/bin/python bench/prefix_cache.py --ax ax630c [--prefill 128 --kv 1024]

With --ax the AX engine runs the default model's AX export on the onnxruntime mirror with a
board's simulated per-graph time (npuflow/engine/ax_timing.py), as a board would see it: there
prefill is the slow part (the published figure: about 1.1 s to first token for a 0.5B model on an AX630C),
and reuse saves whole prefill chunks.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYSTEM = ("You are the help desk of a small bakery. Opening hours: Monday to Friday 7:00-18:00, "
          "Saturday 8:00-14:00, closed on Sunday. Breads: sourdough, rye, spelt, baguette, brioche. "
          "Cakes are ordered two days ahead. Prices: sourdough 4.50, rye 4.00, spelt 4.80, baguette "
          "2.20, brioche 3.60. Delivery within 5 km for orders over 30. Answer briefly and politely. ") * 3
QUESTIONS = ["When do you open on Saturday?", "How much is a rye bread?", "Can I order a cake for tomorrow?",
             "Do you deliver?", "What breads do you have?", "Are you open on Sunday?", "What does a brioche cost?",
             "How far do you deliver?"]


def chatml(turns: list[tuple[str, str]]) -> str:
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"


def conversation(engine, table, limits, tokenizer, turns: int, max_tokens: int, cache: bool) -> list[tuple[float, int]]:
    """(time to first token, prompt tokens computed) per turn, on a fresh scheduler (whatever the
    engine's slots hold from an earlier run is not reused: the scheduler knows none of it)."""
    from npuflow.llm_worker.scheduler import Scheduler
    from npuflow.v1 import common_pb2, worker_pb2
    sched = Scheduler(engine, table, limits, max_queue=8, prefix_cache=cache)
    history: list[tuple[str, str]] = [("system", SYSTEM)]
    out = []
    for t in range(turns):
        history.append(("user", QUESTIONS[t % len(QUESTIONS)]))
        ids = tokenizer.encode(chatml(history)).ids
        sched.submit(worker_pb2.GenerateRequest(request_id=f"t{t}", prompt_token_ids=ids, sampling=common_pb2.SamplingParams(
            temperature=0.0, max_tokens=max_tokens)), b"bench")
        t0, ttft, answer, last = time.perf_counter(), None, [], None
        while sched.has_work:
            for _, ev in sched.step():
                if ev.token_ids and ttft is None:
                    ttft = time.perf_counter() - t0
                answer.append(ev.text)
                last = ev
        history.append(("assistant", "".join(answer).strip()))
        out.append((ttft, last.prompt_tokens - last.cached_prompt_tokens))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ax", default="", help="ax650n | ax630c: the AX engine with that chip's simulated timing")
    p.add_argument("--prefill", type=int, default=128, help="--ax: prefill chunk of the export")
    p.add_argument("--kv", type=int, default=1024, help="--ax: KV cache length of the export")
    args = p.parse_args()

    from tokenizers import Tokenizer

    from npuflow.config import load_settings
    from npuflow.engine.cpu import CpuEngine
    from npuflow.llm_worker.detok import load_token_table
    from npuflow.llm_worker.request import ModelLimits
    from npuflow.logs import setup_logging
    from npuflow.models.resolve import DEFAULT_MODEL_ID, resolve_model
    setup_logging("warning")
    cache = pathlib.Path(load_settings().server.cache_dir)
    if args.ax:
        from default_ax import export_default
        from npuflow.engine.ax import AxEngine
        from npuflow.models.ax_package import read_ax_package
        pkg = read_ax_package(export_default(cache, args.prefill, args.kv))
        engine = AxEngine(pkg, max_slots=4, simulate_timing=args.ax, threads=args.threads)
    else:
        pkg = resolve_model("default", cache, DEFAULT_MODEL_ID)
        engine = CpuEngine(pkg, max_slots=4, context_length=2048, threads=args.threads)
    limits = ModelLimits(pkg.id, engine.vocab_size, engine.context_length, tuple(pkg.eos_token_ids), {})
    table = load_token_table(pkg.tokenizer_path, engine.vocab_size)
    tokenizer = Tokenizer.from_file(str(pkg.tokenizer_path))

    runs: dict[bool, list[list[tuple[float, int]]]] = {True: [], False: []}
    for _ in range(args.rounds):                                  # alternating, so drift hits both
        for cache in (False, True):
            runs[cache].append(conversation(engine, table, limits, tokenizer, args.turns, args.max_tokens, cache))
    where = f"AX engine, simulated {args.ax}" if args.ax else "CPU engine"
    print(f"model {pkg.id} on the {where}, {args.turns} turns, {args.max_tokens} tokens per answer, {args.rounds} rounds, "
          f"threads {args.threads}; medians over rounds")
    print("turn | prompt tokens computed: off    on | TTFT ms: off      on   on/off")
    ratios = []
    for t in range(args.turns):
        off = statistics.median(r[t][0] for r in runs[False]) * 1e3
        on = statistics.median(r[t][0] for r in runs[True]) * 1e3
        n_off, n_on = runs[False][0][t][1], runs[True][0][t][1]
        ratios.append(on / off)
        print(f"{t + 1:4d} | {n_off:27d} {n_on:5d} | {off:12.1f} {on:7.1f} {on / off:7.2f}")
    later = ratios[1:] or ratios
    print(f"turns 2-{args.turns}: TTFT with reuse / without, median {statistics.median(later):.2f}")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
