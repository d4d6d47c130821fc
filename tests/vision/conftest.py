"""Session fixtures: the tiny VLM checkpoints (HF folders, written without torch) and their
converted npuflow packages. None of them imports torch, so non-heavy tests may use them."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import tinyvlm  # noqa: E402


@pytest.fixture(scope="session")
def tiny_idefics3_dir(tmp_path_factory) -> pathlib.Path:
    return tinyvlm.build_tiny_idefics3(tmp_path_factory.mktemp("vlm") / "tiny-idefics3")


@pytest.fixture(scope="session")
def tiny_internvl_dir(tmp_path_factory) -> pathlib.Path:
    return tinyvlm.build_tiny_internvl(tmp_path_factory.mktemp("vlm") / "tiny-internvl")


def _convert(src: pathlib.Path, tmp_path_factory, name: str):
    from npuflow.convert import convert
    return convert(src, tmp_path_factory.mktemp("vlmpkg") / name, model_id=name)


@pytest.fixture(scope="session")
def tiny_idefics3_pkg(tiny_idefics3_dir, tmp_path_factory):
    """The converted package (npuflow.models.package.ModelPackage) of tiny_idefics3_dir."""
    return _convert(tiny_idefics3_dir, tmp_path_factory, "tiny-idefics3")


@pytest.fixture(scope="session")
def tiny_internvl_pkg(tiny_internvl_dir, tmp_path_factory):
    """The converted package (npuflow.models.package.ModelPackage) of tiny_internvl_dir."""
    return _convert(tiny_internvl_dir, tmp_path_factory, "tiny-internvl")
