"""AX pieces without a model: the onnxruntime session's pyaxengine behaviour, package readers,
the CMM check and session release on every exit path, the missing-runtime error."""
import json
import pathlib

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from npuflow.engine.ax import AxEngine
from npuflow.engine.ax_cmm import CmmError, check_fits, cmm_free_kb
from npuflow.engine.ax_ort import SHAPE_GROUPS_KEY, NodeArg, OrtAxSession
from npuflow.engine.ax_runtime import AxRuntimeError, axengine_factory, factory_for
from npuflow.models.ax_package import read_ax_package, sampling_defaults
from npuflow.models.package import PackageError

BF16 = np.dtype(ml_dtypes.bfloat16)
CMM = (" total size=3145728KB(3072MB),used=18876KB(18MB + 444KB),remain=3126852KB(3053MB + 612KB),"
       "partition_number=1,block_number=12\n")


@pytest.fixture
def add_graph(tmp_path):
    """y (bf16 [1,S,4]) = x + 1, two shape groups S=1 and S=3, input named x_1."""
    x = helper.make_tensor_value_info("x_1", TensorProto.BFLOAT16, [1, "s", 4])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [1, "s", 4])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("Cast", ["x_1"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["xf", "one"], ["yf"]),
             helper.make_node("Cast", ["yf"], ["y"], to=TensorProto.BFLOAT16)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [one]), opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    meta = model.metadata_props.add()
    meta.key = SHAPE_GROUPS_KEY
    meta.value = json.dumps({"inputs": [[{"name": "x_1", "shape": [1, s, 4]}] for s in (1, 3)],
                             "outputs": [[{"name": "y", "shape": [1, s, 4]}] for s in (1, 3)]})
    path = tmp_path / "add.onnx"
    onnx.save(model, str(path))
    return path


def test_session_api_and_strict_checks(add_graph):
    s = OrtAxSession(add_graph, providers=["AxEngineExecutionProvider"], provider_options=[{"device_id": 1}])
    assert s.get_inputs(shape_group=1) == [NodeArg("x_1", BF16, (1, 3, 4))]
    assert s.get_outputs()[0].shape == (1, 1, 4) and s.get_outputs()[0].dtype == BF16
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4).astype(BF16)
    (y,) = s.run(None, {"x_1": x}, shape_group=1)
    assert y.dtype == BF16 and np.array_equal(y.astype(np.float32), x.astype(np.float32) + 1)
    with pytest.raises(AssertionError, match=r"model inputs\(x_1\) expect shape \(1, 1, 4\)"):
        s.run(None, {"x_1": x})                                          # group 0 wants S=1
    with pytest.raises(AssertionError, match="dtype"):
        s.run(None, {"x_1": x.astype(np.float32)}, shape_group=1)        # no casting
    with pytest.raises(ValueError, match="missing"):
        s.run(None, {"x": x}, shape_group=1)
    with pytest.raises(ValueError, match="shape group"):
        s.run(None, {"x_1": x}, shape_group=2)
    with pytest.raises(ValueError, match="not in model outputs"):
        s.run(["z"], {"x_1": x}, shape_group=1)
    s.close()
    with pytest.raises(RuntimeError):
        s.run(None, {"x_1": x}, shape_group=1)


def test_missing_axengine_is_one_line(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ax(name, *a, **kw):
        if name == "axengine":
            raise ImportError("No providers found")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_ax)
    with pytest.raises(AxRuntimeError) as e:
        axengine_factory(device_id=0)
    assert "\n" not in str(e.value) and "pyaxengine" in str(e.value) and "No providers found" in str(e.value)
    with pytest.raises(AxRuntimeError):
        factory_for(tmp_path / "qwen2_p128_l0_together.axmodel")


def test_cmm_parse_and_refusal(tmp_path):
    proc = tmp_path / "mem_cmm_info"
    proc.write_text("--- CMM info ---\n" + CMM)
    assert cmm_free_kb(proc) == (3126852, 3145728)
    assert check_fits(1024, "m", proc) == 3126852
    with pytest.raises(CmmError, match=r"needs 3072 MiB .* only 3053 MiB of 3072 MiB are free"):
        check_fits(3072 * 1024, "m", proc)
    assert cmm_free_kb(tmp_path / "absent") is None and check_fits(1 << 40, "m", tmp_path / "absent") is None
    proc.write_text("garbage\n")
    with pytest.raises(CmmError):
        cmm_free_kb(proc)


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
    with pytest.raises(CmmError, match="needs"):
        AxEngine(pkg, session_factory=lambda p: made.append(p), cmm_info=str(proc))
    assert made == []


def test_sessions_released_when_loading_fails(tmp_path):
    pkg = read_ax_package(_pulsar2_dir(tmp_path / "m"))
    made, closed = [], []

    class Sess:
        def __init__(self, path):
            if len(made) == 2:
                raise _Fail("out of CMM")
            made.append(path)

        def close(self):
            closed.append(self)
    with pytest.raises(_Fail):
        AxEngine(pkg, session_factory=Sess, cmm_info=str(tmp_path / "absent"))
    assert len(made) == 2 and len(closed) == 2


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
