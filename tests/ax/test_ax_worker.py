"""The exported default model through the worker's engine builder: suffixed input names, the
simulated board timing, the CMM refusal as a one-line start error."""
import dataclasses
import re
import time

import numpy as np
import pytest

from ax_shapes import AX_ID, KV
from npuflow.config import ModelSettings, load_settings
from npuflow.engine.ax import AxEngine
from npuflow.engine.ax_ort import InferenceSession, NodeArg

pytestmark = pytest.mark.model


class Suffixed:
    """A session whose input names carry the shape group (`input_1`), as some builds have."""

    def __init__(self, path):
        self.wrapped = InferenceSession(str(path))

    def get_inputs(self, shape_group=0):
        return [NodeArg(f"{a.name}_{shape_group}", a.dtype, a.shape) for a in self.wrapped.get_inputs(shape_group)]

    def get_outputs(self, shape_group=0):
        return self.wrapped.get_outputs(shape_group)

    def run(self, names, feed, run_options=None, shape_group=0):
        suffix = f"_{shape_group}"
        assert all(k.endswith(suffix) for k in feed)
        return self.wrapped.run(names, {k[:-len(suffix)]: v for k, v in feed.items()}, shape_group=shape_group)


def test_input_names_are_looked_up(ax_package, ax_engine, chat):
    prompt = chat("What is the capital of France?")
    ax_engine.release(0)
    want = ax_engine.prefill(0, prompt)
    ax_engine.release(0)
    eng = AxEngine(ax_package, session_factory=Suffixed)
    try:
        assert np.array_equal(eng.prefill(0, prompt), want)
    finally:
        eng.close()


def _settings(tmp_path, ax_dir, **kw):
    s = load_settings(env={"NPUFLOW_CACHE_DIR": str(tmp_path / "cache"), "NPUFLOW_RUN_DIR": str(tmp_path)})
    return s, ModelSettings(id=AX_ID, source=str(ax_dir), engine="ax", context_length=4096, max_batch=2,
                            threads=1, **kw)


def test_worker_builds_the_ax_engine_with_simulated_timing(tmp_path, ax_dir):
    from npuflow.llm_worker.run import build_engine
    from npuflow.models.resolve import serving_package
    settings, model = _settings(tmp_path, ax_dir, simulate_timing="ax650n")
    package = serving_package(settings, model)
    assert (package.engine, package.context_length, package.id) == ("ax", KV, AX_ID)
    eng = build_engine(package, model)
    try:
        assert (eng.context_length, eng.max_slots, eng.vocab_size) == (KV, 2, 49152)
        eng.prefill(0, [1, 2, 3])
        before, t0 = eng.clock.device_s, time.perf_counter()
        eng.decode([0], [4])
        took, device = time.perf_counter() - t0, eng.clock.device_s - before
        assert device >= 30 * 1.595e-3 + 12.665e-3           # 30 layers + post on AX650N
        assert took >= device
    finally:
        eng.close()
    assert eng._layers == [] and eng._post is None


def test_worker_refuses_a_model_that_does_not_fit(tmp_path, ax_dir, monkeypatch):
    from npuflow.engine import ax_build
    from npuflow.llm_worker.run import WorkerStartError, build_engine
    from npuflow.models.resolve import serving_package
    proc = tmp_path / "mem_cmm_info"
    proc.write_text(" total size=1048576KB(1024MB),used=1040000KB(1015MB),remain=8576KB(8MB),block_number=3\n")
    real = ax_build.build_ax_engine
    monkeypatch.setattr(ax_build, "build_ax_engine", lambda p, m: real(p, m, cmm_info=str(proc)))
    settings, model = _settings(tmp_path, ax_dir)
    with pytest.raises(WorkerStartError) as e:
        build_engine(serving_package(settings, model), model)
    msg = str(e.value)
    assert "\n" not in msg and re.fullmatch(
        rf"model '{AX_ID}': the model needs about \d+ MiB of NPU memory \(CMM; an estimate from the size of its "
        rf"graph files\) but only 8 MiB of 1024 MiB are free; .*", msg)


def test_engine_ax_on_a_cpu_package_is_refused(tmp_path, cpu_package):
    from npuflow.llm_worker.run import WorkerStartError, build_engine
    model = dataclasses.replace(ModelSettings(), engine="ax")
    with pytest.raises(WorkerStartError, match="pulsar2 or StackFlow model directory"):
        build_engine(cpu_package, model)
