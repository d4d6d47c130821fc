"""AX pieces without a model: package readers, session release on every exit path, start
errors (missing runtime, graphs the runtime cannot load) as one-line errors the worker reports."""
import json
import pathlib
import sys
import types
import weakref

import numpy as np
import pytest

from npuflow.engine.ax import AxEngine
from npuflow.engine.ax_build import AX_START_ERRORS
from npuflow.engine.ax_cmm import CmmError
from npuflow.engine.ax_runtime import AxRuntimeError, AxRuntimeMissing, axengine_factory, factory_for
from npuflow.models.ax_package import read_ax_package, sampling_defaults
from npuflow.models.package import PackageError

CMM = (" total size=3145728KB(3072MB),used=18876KB(18MB + 444KB),remain=3126852KB(3053MB + 612KB),"
       "partition_number=1,block_number=12\n")


def test_missing_axengine_is_one_line(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ax(name, *a, **kw):
        if name == "axengine":
            raise ImportError("No providers found. Please make sure you have installed one of the following: [...]")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_ax)
    with pytest.raises(ImportError) as e:                    # an ImportError, and a start error
        axengine_factory(device_id=0)
    assert isinstance(e.value, AxRuntimeMissing) and isinstance(e.value, AX_START_ERRORS)
    assert "\n" not in str(e.value) and "pyaxengine" in str(e.value) and "No providers found" in str(e.value)
    with pytest.raises(AxRuntimeError):
        factory_for(tmp_path / "qwen2_p128_l0_together.axmodel")


@pytest.fixture
def fake_axengine(monkeypatch):
    """An `axengine` module whose InferenceSession raises what pyaxengine raises when a graph
    cannot be loaded (RuntimeError("Failed to load model."))."""
    made = []
    mod = types.ModuleType("axengine")
    mod.get_available_providers = lambda: ["AxEngineExecutionProvider"]

    def session(path, sess_options=None, providers=None, provider_options=None, **kw):
        made.append((path, providers, provider_options))
        raise RuntimeError("Failed to load model.")
    mod.InferenceSession = session
    monkeypatch.setitem(sys.modules, "axengine", mod)
    return made


def test_graph_the_runtime_cannot_load_is_a_start_error(tmp_path, fake_axengine):
    from npuflow.config import ModelSettings
    from npuflow.llm_worker.run import WorkerStartError, build_engine
    pkg = read_ax_package(_pulsar2_dir(tmp_path / "m"))
    model = ModelSettings(id="m", source=str(pkg.path), engine="ax", max_batch=1, threads=1)
    with pytest.raises(WorkerStartError) as e:
        build_engine(pkg, model)
    assert str(e.value) == ("model 'm': qwen2_p128_l0_together.axmodel: pyaxengine cannot load it on "
                            "AxEngineExecutionProvider (RuntimeError: Failed to load model.)")
    assert fake_axengine[0][1] == ["AxEngineExecutionProvider"] and fake_axengine[0][2] is None
    with pytest.raises(AxRuntimeError, match="AXCLRTExecutionProvider is not available on this host"):
        axengine_factory(provider="AXCLRTExecutionProvider")
    with pytest.raises(AxRuntimeError):
        axengine_factory(device_id=2)(tmp_path / "g.axmodel")
    assert fake_axengine[-1][2] == [{"device_id": 2}]


def _pulsar2_dir(root: pathlib.Path, layers=3, cmm_kb=None) -> pathlib.Path:
    root.mkdir()
    for i in range(layers):
        (root / f"qwen2_p128_l{i}_together.axmodel").write_bytes(b"\0" * 4096)
    (root / "qwen2_post.axmodel").write_bytes(b"\0" * 2048)
    (root / "model.embed_tokens.weight.bfloat16.bin").write_bytes(b"\0" * (16 * 8 * 2))
    (root / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1,
        "vocab_size": 16, "eos_token_id": 7, "max_position_embeddings": 32768}))
    (root / "post_config.json").write_text(json.dumps({
        "enable_temperature": True, "temperature": 0.9, "enable_top_k_sampling": True, "top_k": 10,
        "enable_top_p_sampling": False, "top_p": 0.8, "enable_repetition_penalty": False,
        "repetition_penalty": 1.2, "penalty_window": 20}))
    (root / "tokenizer.json").write_text("{}")
    (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return root


def test_pulsar2_reader(tmp_path):
    pkg = read_ax_package(_pulsar2_dir(tmp_path / "Qwen2.5-0.5B-Instruct"))
    ax = pkg.extra["ax"]
    assert (pkg.id, pkg.engine, pkg.dims.layers, pkg.dims.vocab, pkg.dims.head_dim) == \
        ("Qwen2.5-0.5B-Instruct", "ax", 3, 16, 4)
    assert ax["layer_files"] == [f"qwen2_p128_l{i}_together.axmodel" for i in range(3)]
    assert (ax["post_file"], ax["prefill_len"], ax["cmm_kb"], ax["layout"]) == ("qwen2_post.axmodel", 128, 14, "pulsar2")
    assert pkg.eos_token_ids == (7,) and pkg.chat_template == "{{ messages }}"
    assert pkg.sampling_defaults == {"temperature": 0.9, "top_k": 10}
    assert pkg.tokenizer_path == tmp_path / "Qwen2.5-0.5B-Instruct" / "tokenizer.json"


def test_stackflow_reader_and_resolve(tmp_path):
    from npuflow.models.resolve import resolve_model
    mid = "qwen2.5-0.5B-p256-ax630c"
    root = tmp_path / "data" / mid
    root.mkdir(parents=True)
    for i in range(2):
        (root / f"qwen2.5_p256_l{i}_together.axmodel").write_bytes(b"\0" * 10)
    (root / "qwen2.5_post.axmodel").write_bytes(b"\0" * 10)
    (root / "model.embed_tokens.weight.bfloat16.bin").write_bytes(b"\0" * 64)
    (tmp_path / "data" / "models").mkdir()
    (tmp_path / "data" / "models" / f"mode_{mid}.json").write_text(json.dumps({
        "mode": mid, "type": "llm", "cmm_size": 593920, "mode_param": {
            "filename_tokens_embed": "model.embed_tokens.weight.bfloat16.bin",
            "filename_post_axmodel": "qwen2.5_post.axmodel", "template_filename_axmodel": "qwen2.5_p256_l%d_together.axmodel",
            "axmodel_num": 2, "tokens_embed_num": 8, "tokens_embed_size": 4, "max_token_len": 256,
            "enable_temperature": False, "enable_top_k_sampling": False, "enable_top_p_sampling": False}}))
    with pytest.raises(PackageError, match="no tokenizer.json; copy the base model's tokenizer.json"):
        read_ax_package(root)
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text(json.dumps({"added_tokens": [{"id": 5, "content": "<|im_end|>"}]}))
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "chat_template": "t"}))
    pkg = resolve_model(str(root), tmp_path / "cache", mid)
    assert (pkg.id, pkg.engine, pkg.context_length, pkg.eos_token_ids, pkg.chat_template) == (mid, "ax", 256, (5,), "t")
    assert pkg.extra["ax"]["cmm_kb"] == 593920 and pkg.extra["ax"]["prefill_len"] == 256
    assert pkg.sampling_defaults == {"temperature": 0.0}          # the vendor runtime's argmax
    assert pkg.files["tokenizer"] == "tokenizer/tokenizer.json"


def test_sampling_defaults_mapping():
    assert sampling_defaults({}) == {}
    assert sampling_defaults({"enable_top_p_sampling": True, "top_p": 0.8, "enable_repetition_penalty": True,
                              "repetition_penalty": 1.1}) == {"top_p": 0.8, "repetition_penalty": 1.1}


class _Fail(Exception):
    pass


def test_cmm_refusal_loads_nothing(tmp_path):
    pkg = read_ax_package(_pulsar2_dir(tmp_path / "m"))
    proc = tmp_path / "cmm"
    proc.write_text(CMM.replace("remain=3126852KB", "remain=10KB"))
    made = []
    with pytest.raises(CmmError, match="needs about 1 MiB of NPU memory .*an estimate"):
        AxEngine(pkg, session_factory=lambda p: made.append(p), cmm_info=str(proc))
    assert made == []


def test_sessions_released_when_loading_fails(tmp_path):
    """pyaxengine sessions have no close(): the engine drops every reference to those it made."""
    pkg = read_ax_package(_pulsar2_dir(tmp_path / "m"))
    made = []

    class Sess:
        def __init__(self, path):
            if len(made) == 2:
                raise _Fail("out of CMM")
            made.append(weakref.ref(self))
    with pytest.raises(_Fail):
        AxEngine(pkg, session_factory=Sess, cmm_info=str(tmp_path / "absent"))
    assert len(made) == 2 and all(r() is None for r in made)


def test_mirror_refuses_masks_it_cannot_compute():
    """The PC mirror's attention is causal: it takes the vendor loop's masks and refuses others."""
    from npuflow.engine.ax_ort import check_causal_mask
    M = -65536.0
    P, base = 4, 8                                          # a second prefill chunk: 8 past rows
    mask = np.full((1, P, base + P), M, np.float32)
    for i in range(3):                                      # 3 real tokens, one padding row
        mask[0, i, :base + i + 1] = 0
    check_causal_mask(mask)
    decode = np.zeros((1, 1, 17), np.float32)
    decode[..., 5:16] = M                                   # position 5 of a 16-entry cache
    check_causal_mask(decode)
    future = mask.copy()
    future[0, 1, base + 2] = 0                              # row 1 sees the token after it
    with pytest.raises(ValueError, match="row 1 is not causal"):
        check_causal_mask(future)
    hole = mask.copy()
    hole[0, 2, 3] = M                                       # row 2 misses a past row
    with pytest.raises(ValueError, match="row 2"):
        check_causal_mask(hole)
    with pytest.raises(ValueError, match="values other than"):
        check_causal_mask(np.where(mask == 0, 0, -1.0).astype(np.float32))
