import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "convert"))

import tinymodels  # noqa: E402


def _cache_dir() -> pathlib.Path:
    env = os.environ.get("NPUFLOW_CACHE_DIR")
    if env:
        return pathlib.Path(env)
    import platformdirs
    return pathlib.Path(platformdirs.user_cache_dir("npuflow"))


@pytest.fixture(scope="session")
def default_package():
    """The default model, fetched and converted into the user's cache once (as serving does)."""
    from npuflow.models.resolve import DEFAULT_MODEL_ID, resolve_model
    return resolve_model("default", _cache_dir(), DEFAULT_MODEL_ID)


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory):
    from npuflow.convert import convert
    root = tmp_path_factory.mktemp("tiny")
    tinymodels.write_gguf(root / "m.gguf", "qwen3", "Q4_1", "Q8_0")
    return convert(root / "m.gguf", root / "pkg")
