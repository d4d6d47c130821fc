"""TokenizerLink.load_model against the real tokenizer process: a model that cannot load is a 503
model_not_available with the reason, a retry loads it once its package is there, the link's
model lists follow the answer at once (not a probe later), and an unknown id is a 404."""
import asyncio
import signal
import subprocess
import sys
import time

import pytest
import zmq

from bpe_tokenizer import build_bpe_tokenizer
from npuflow.config import load_settings
from npuflow.gateway import tokenizer_link
from npuflow.gateway.errors import ApiError
from npuflow.gateway.tokenizer_link import TokenizerLink
from tiny_package import tiny_package

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


@pytest.fixture
def stack(tmp_path, monkeypatch):
    """The tokenizer process on "tiny" (its package), "late" (no package yet, at tmp/late/pkg) and
    "lazy" (not preloaded); yields the settings."""
    build_bpe_tokenizer(tmp_path / "tokenizer.json", ["Hello, world! How are you?"] * 20, vocab_size=300)
    pkg = tiny_package(tmp_path, tmp_path / "tokenizer.json", TEMPLATE)
    cfg = tmp_path / "npuflow.toml"
    cfg.write_text(f'[server]\nrun_dir = "{tmp_path}/run"\ncache_dir = "{tmp_path}/cache"\n'
                   f'[[models]]\nid = "tiny"\nsource = "{pkg}"\n'
                   f'[[models]]\nid = "late"\nsource = "{tmp_path}/late/pkg"\n'
                   f'[[models]]\nid = "lazy"\nsource = "{pkg}"\npreload = false\n')
    monkeypatch.setenv("NPUFLOW_CONFIG", str(cfg))
    # probes answered once at the start only: the lists must follow load_model's own answer
    monkeypatch.setattr(tokenizer_link, "PROBE_INTERVAL_S", 60.0)
    proc = subprocess.Popen([sys.executable, "-m", "npuflow.cli", "tokenizer"], stderr=subprocess.PIPE, text=True)
    try:
        yield load_settings()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _ready(link: TokenizerLink, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not (link.ready and link.models):
        assert time.monotonic() < end, "the tokenizer did not answer"
        await asyncio.sleep(0.05)


async def test_load_model_reports_failure_retries_and_updates_the_lists(stack, tmp_path):
    ctx = zmq.Context()
    link = TokenizerLink(stack, ctx)
    await link.start()
    try:
        await _ready(link)
        assert set(link.models) == {"tiny"} and "pkg" in link.failed["late"]
        with pytest.raises(ApiError) as e:
            await link.load_model("late", 10)
        assert e.value.status == 503 and e.value.code == "model_not_available" and e.value.param == "model"
        assert "late" in e.value.message and "pkg" in e.value.message
        (tmp_path / "late").mkdir()
        tiny_package(tmp_path / "late", tmp_path / "tokenizer.json", TEMPLATE)
        await link.load_model("late", 10)
        assert "late" in link.models and "late" not in link.failed and "late" not in link.vision
        assert await link.encode_text("late", "Hello") == await link.encode_text("tiny", "Hello")
        await link.load_model("tiny", 10)   # loaded already: answered at once
        with pytest.raises(ApiError) as e:
            await link.load_model("nope", 10)
        assert e.value.status == 404 and e.value.code == "model_not_found"
        with pytest.raises(ApiError) as e:
            await link.load_model("nope", 0)
        assert e.value.status == 504 and e.value.code == "timeout"
        assert "lazy" not in link.models
        await link.load_model("lazy", 10)
        assert link.models["lazy"] == link.models["tiny"]
    finally:
        await link.stop()
        ctx.term()
