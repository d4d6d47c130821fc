"""The malformed-input corpus (bad_input_corpus.py) against a gateway with fake peers: no answer
is a 5xx, every error is OpenAI-shaped JSON, and the gateway still answers afterwards."""
import collections
import logging
import time

import pytest

from bad_input_corpus import cases, problems, send
from gw_fakes import MODEL
from npuflow.gateway.http_protocol import use_gateway_connections


@pytest.fixture
def stack(make_stack):
    """A stack of its own, whose connections are the ones run_gateway's runner makes (JSON
    answers to requests aiohttp's parser refuses)."""
    s = make_stack(body_timeout_s=5.0)
    use_gateway_connections(s.runner.server)
    return s


def test_corpus_gets_no_5xx_and_openai_errors(stack, caplog):
    corpus = list(cases(MODEL, stack.settings.server.max_body_bytes))
    assert len(corpus) > 300
    statuses = collections.Counter()
    bad = []
    slow = []
    for case in corpus:
        t0 = time.monotonic()
        status, headers, body = send("127.0.0.1", stack.port, case, stack.key, timeout=20)
        statuses[status] += 1
        bad += [f"{case.name}: {p}" for p in problems(case, status, headers, body)]
        if time.monotonic() - t0 > 2:
            slow.append(f"{case.name}: {status} after {time.monotonic() - t0:.1f} s")
    # every case is answered at once; one whose body read ever stalls (seen once, in a CI run,
    # not reproduced) is ended by the body timeout with a 408, and is named here
    print(dict(sorted(statuses.items())), "slow:", slow)
    assert not bad, "\n".join(bad[:50])
    assert statuses[400] > len(corpus) / 2
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:10]      # nothing logged as a failure (nor with a traceback)
    st, _, _ = stack.request("GET", "/health")
    assert st == 200
    st, _, b = stack.request("POST", "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user",
                                                                                          "content": "hi"}]})
    assert st == 200, b
