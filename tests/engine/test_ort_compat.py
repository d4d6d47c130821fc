"""The RMSNorm replacement for older onnxruntime releases computes exactly what the newer
releases' SimplifiedLayerNormalization kernel does (npuflow/engine/ort_compat.py)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow.engine import ort_compat


def _model(size: int) -> onnx.ModelProto:
    rng = np.random.default_rng(size)
    g = numpy_helper.from_array(rng.uniform(-2, 2, size).astype(np.float32), "g")
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"], axis=-1, epsilon=1e-5)
    graph = helper.make_graph([node], "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [g])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _inputs(size: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    rows = [rng.standard_normal((1, 100, size)) * scale * rng.uniform(0.1, 3, (1, 100, 1))
            for scale in (1e-3, 0.05, 1, 30)]
    return np.concatenate(rows, axis=1).astype(np.float32)


@pytest.mark.parametrize("size", [16, 64, 576, 2048])
def test_replacement_is_the_newer_kernel(size):
    model, x = _model(size), _inputs(size)
    replaced = _model(size)
    assert ort_compat.replace_rmsnorm(replaced) == 1
    assert "SimplifiedLayerNormalization" not in [n.op_type for n in replaced.graph.node]
    got = _run(replaced, x)
    xd = x.astype(np.float64)
    g = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    want = xd / np.sqrt((xd * xd).mean(-1, keepdims=True) + 1e-5) * g
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    if not ort_compat.EMULATE_RMSNORM:      # the kernel it reproduces is the one installed
        assert np.array_equal(got, _run(model, x))


def test_unsupported_sizes_keep_the_kernel():
    for size in (8, 12, 20):
        model = _model(size)
        assert ort_compat.replace_rmsnorm(model) == 0
        assert [n.op_type for n in model.graph.node] == ["SimplifiedLayerNormalization"]
