"""Fixtures: one real stack (two models) shared by the end-to-end tests."""
import pytest

from e2e_stack import MAIN_CONFIG, Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("stack"), MAIN_CONFIG).start()
    yield s
    s.stop()


@pytest.fixture()
def client(stack):
    from openai import OpenAI
    return OpenAI(api_key="sk-", base_url=stack.base_url, max_retries=0, timeout=120)
