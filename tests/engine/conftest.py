import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "convert"))

import tinymodels  # noqa: E402


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory):
    from npuflow.convert import convert
    root = tmp_path_factory.mktemp("tiny")
    tinymodels.write_gguf(root / "m.gguf", "qwen3", "Q4_1", "Q8_0")
    return convert(root / "m.gguf", root / "pkg")
