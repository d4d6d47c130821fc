"""The default model exported in the AX layout (prefill 32, KV cache 256) next to the CPU engine;
a tiny hand-made AX package and a one-graph model for tests that need no download."""
import json
import pathlib

import onnx
import pytest
from onnx import TensorProto, helper

from ax_shapes import AX_ID, KV, PREFILL
from ax_tiny import write_tiny


@pytest.fixture
def tiny_package(tmp_path):
    from npuflow.models.ax_package import read_ax_package
    return read_ax_package(write_tiny(tmp_path / "tiny"), "tiny")


@pytest.fixture
def add_graph(tmp_path):
    """y (bf16 [1,S,4]) = x + 1, two shape groups S=1 and S=3, input named x_1."""
    from npuflow.engine.ax_ort import SHAPE_GROUPS_KEY
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


@pytest.fixture(scope="session")
def default_gguf(default_package) -> pathlib.Path:
    """The GGUF the default CPU package was converted from (fetched by default_package)."""
    from npuflow.models.default import GGUF_SHA256
    src = pathlib.Path(default_package.extra["source"]["path"])
    assert default_package.extra["source"]["sha256"] == GGUF_SHA256 and src.is_file()
    return src


@pytest.fixture(scope="session")
def ax_dir(default_gguf, tmp_path_factory) -> pathlib.Path:
    from npuflow.convert import convert
    out = tmp_path_factory.mktemp("ax") / AX_ID
    convert(default_gguf, out, model_id=AX_ID, layout="ax", prefill_len=PREFILL, kv_cache_len=KV)
    return out


@pytest.fixture(scope="session")
def ax_package(ax_dir):
    from npuflow.models.ax_package import read_ax_package
    return read_ax_package(ax_dir, AX_ID)


@pytest.fixture(scope="module")
def ax_engine(ax_package):
    from npuflow.engine.ax import AxEngine
    eng = AxEngine(ax_package, max_slots=2, threads=1)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def cpu_package(default_gguf, tmp_path_factory):
    """The CPU package of the same GGUF with bf16 boundaries (npuflow convert --bf16-boundaries):
    the CPU engine rounding where the AX graphs hand over bf16, converted by the same converter
    code as the AX export."""
    from npuflow.convert import convert
    return convert(default_gguf, tmp_path_factory.mktemp("cpu") / "pkg", model_id=AX_ID, bf16_boundaries=True)


@pytest.fixture(scope="module")
def cpu_engine(cpu_package):
    from npuflow.engine.cpu import CpuEngine
    eng = CpuEngine(cpu_package, max_slots=1, context_length=KV, threads=2)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def served_cpu_engine(default_package):
    """The CPU engine on the default package as `npuflow serve` runs it (float32 boundaries)."""
    from npuflow.engine.cpu import CpuEngine
    eng = CpuEngine(default_package, max_slots=1, context_length=KV, threads=2)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def chat(default_package):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(default_package.tokenizer_path))
    return lambda text: tok.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n").ids
