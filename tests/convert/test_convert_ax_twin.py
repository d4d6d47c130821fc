"""Every architecture exported with --layout ax computes, through the AX engine on the PC mirror,
bit-identical logits to the CPU engine built with --bf16-boundaries: prompts shorter than, equal
to and longer than a prefill chunk, decode to the end of the KV cache, and the CPU twin's batched
decode of two slots equal to each slot alone."""
import numpy as np
import pytest

from npuflow.convert import convert
from npuflow.engine.ax import AxEngine
from npuflow.engine.cpu import CpuEngine

P, KV = 8, 32


def _run(engine, prompt, steps, slot=0):
    engine.release(slot)
    rows = [engine.prefill(slot, prompt)]
    for i in range(steps):
        rows.append(engine.decode([slot], [int(np.argmax(rows[-1])) or 3 + i])[0])
    engine.release(slot)
    return rows


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_ax_export_and_cpu_twin_agree_to_the_bit(tiny_gguf, tmp_path, arch):
    src = tiny_gguf(arch, "Q8_0")
    ax = AxEngine(convert(src, tmp_path / "ax", model_id="t", layout="ax", prefill_len=P, kv_cache_len=KV))
    cpu = CpuEngine(convert(src, tmp_path / "cpu", model_id="t", bf16_boundaries=True), max_slots=2,
                    context_length=KV)
    try:
        for n in (5, P, P + 3):
            prompt = list(range(10, 10 + n))
            a, c = _run(ax, prompt, KV - n), _run(cpu, prompt, KV - n)
            assert all(np.array_equal(x, y) for x, y in zip(a, c)), (arch, n)
        prompts = [list(range(20, 26)), list(range(40, 51))]
        alone = [_run(cpu, p, 4) for p in prompts]           # prefill logits, then 4 decode steps
        toks = [int(np.argmax(cpu.prefill(s, p))) or 3 for s, p in enumerate(prompts)]
        for step in range(4):
            rows = cpu.decode([0, 1], toks)
            for s in (0, 1):
                assert np.array_equal(rows[s], alone[s][step + 1]), (arch, s, step)
            toks = [int(np.argmax(r)) or 4 + step for r in rows]
    finally:
        ax.close()
        cpu.close()
