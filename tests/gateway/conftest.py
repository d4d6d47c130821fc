"""Fixtures of the gateway tests: a gateway with fake peers (gw_stack.Stack) per module or per test."""
from __future__ import annotations

import pytest

import oai_shapes
from gw_stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("gw"))
    yield s
    s.close()


@pytest.fixture
def make_stack(tmp_path_factory):
    """make_stack(**Stack options): a stack of its own, for tests that kill or silence peers."""
    made = []

    def make(**kw) -> Stack:
        made.append(Stack(tmp_path_factory.mktemp("gw"), **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture(scope="session")
def schema():
    """schema(name, instance) -> list of error strings, against the official `openai` package's types."""
    return oai_shapes.check
