"""The AX engine under the model lifecycle: `npuflow serve` with the default model on the CPU
engine (preloaded) and the same weights in the AX layout on the AX engine's PC stand-in (loaded
on demand), on a memory budget that holds one of them: each request for the other model unloads
the idle one first, and both answer."""
import json
import pathlib
import sys
import urllib.request

import openai
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from e2e_stack import DEFAULT_ID, Stack  # noqa: E402

from npuflow.config import ModelSettings  # noqa: E402
from npuflow.models.footprint import footprint  # noqa: E402

pytestmark = pytest.mark.e2e
AX = "smollm2-ax"


def _states(stack: Stack) -> dict:
    with urllib.request.urlopen(f"{stack.base_url}/models", timeout=10) as r:
        return {m["id"]: (m["status"]["state"], m["memory"]["pool"]) for m in json.load(r)["data"]}


def test_cpu_and_ax_models_take_turns_on_a_budget_of_one(tmp_path, ax_dir, default_package):
    cache = str(pathlib.Path(default_package.path).parents[1])
    cpu = footprint(ModelSettings(id=DEFAULT_ID, context_length=256, max_batch=1), cache)
    ax = footprint(ModelSettings(id=AX, source=str(ax_dir), engine="ax", context_length=256, max_batch=1), cache)
    budget = int(max(cpu.bytes, ax.bytes) * 1.5)      # one at a time
    assert budget < cpu.bytes + ax.bytes
    config = f"""
[server]
port = {{port}}
grpc_port = 0
run_dir = "{{run_dir}}"
cache_dir = "{cache}"
memory_budget = "{budget}"
[[models]]
id = "{DEFAULT_ID}"
context_length = 256
max_batch = 1
threads = 1
[[models]]
id = "{AX}"
source = "{ax_dir}"
engine = "ax"
context_length = 256
max_batch = 1
threads = 1
preload = false
"""
    stack = Stack(tmp_path, config).start()
    try:
        assert _states(stack) == {DEFAULT_ID: ("loaded", "ram"), AX: ("unloaded", "ram")}
        client = openai.OpenAI(base_url=stack.base_url, api_key="none", max_retries=0, timeout=120)
        ask = [{"role": "user", "content": "What is the capital of France?"}]
        texts = {}
        for model in (AX, DEFAULT_ID, AX):
            r = client.chat.completions.create(model=model, messages=ask, max_tokens=8, temperature=0)
            texts.setdefault(model, r.choices[0].message.content)
            other = DEFAULT_ID if model == AX else AX
            assert _states(stack) == {model: ("loaded", "ram"), other: ("unloaded", "ram")}
        assert texts[AX] and texts[DEFAULT_ID]
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert f'npuflow_model_unloads_total{{model="{AX}",reason="evicted"}} 1.0' in metrics
        assert f'npuflow_model_unloads_total{{model="{DEFAULT_ID}",reason="evicted"}} 2.0' in metrics
    finally:
        stack.stop()
