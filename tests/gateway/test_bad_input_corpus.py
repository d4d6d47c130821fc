"""The malformed-input corpus (bad_input_corpus.py) against a gateway with fake peers: no answer
is a 5xx, every error is OpenAI-shaped JSON, and the gateway still answers afterwards."""
import collections
import logging

import pytest

from bad_input_corpus import cases, problems, send
from gw_fakes import MODEL
from npuflow.gateway.http_protocol import use_gateway_connections


@pytest.fixture
def stack(make_stack):
    """A stack of its own, whose connections are the ones run_gateway's runner makes (JSON
    answers to requests aiohttp's parser refuses)."""
    s = make_stack()
    use_gateway_connections(s.runner.server)
    return s


def test_corpus_gets_no_5xx_and_openai_errors(stack, caplog):
    corpus = list(cases(MODEL, stack.settings.server.max_body_bytes))
    assert len(corpus) > 300
    statuses = collections.Counter()
    bad = []
    for case in corpus:
        status, headers, body = send("127.0.0.1", stack.port, case, stack.key, timeout=20)
        statuses[status] += 1
        bad += [f"{case.name}: {p}" for p in problems(case, status, headers, body)]
    print(dict(sorted(statuses.items())))
    assert not bad, "\n".join(bad[:50])
    assert statuses[400] > len(corpus) / 2
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:10]      # nothing logged as a failure (nor with a traceback)
    st, _, _ = stack.request("GET", "/health")
    assert st == 200
    st, _, b = stack.request("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user",
                                                                                          "content": "hi"}]})
    assert st == 200, b
