import pathlib

import pytest
from tokenizers import Tokenizer

from worker_helpers import build_tokenizer, make_package



@pytest.fixture(scope="session")
def tokenizer_json(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    build_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def hf_tokenizer(tokenizer_json) -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_json))


@pytest.fixture
def package(tokenizer_json):
    return make_package(tokenizer_json)
