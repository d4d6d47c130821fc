import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import tinymodels  # noqa: E402


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    """Factory: (arch, qtype, embed_qtype) -> path of a tiny GGUF file, written once per session."""
    root = tmp_path_factory.mktemp("gguf")
    made = {}

    def make(arch: str, qtype: str = "F32", embed_qtype: str | None = None) -> pathlib.Path:
        key = (arch, qtype, embed_qtype)
        if key not in made:
            path = root / f"{arch}-{qtype}-{embed_qtype}.gguf"
            tinymodels.write_gguf(path, arch, qtype, embed_qtype)
            made[key] = path
        return made[key]

    return make
