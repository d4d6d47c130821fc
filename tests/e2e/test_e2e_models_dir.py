"""`npuflow serve` with server.models_dir and no [[models]] list of its own: every package in the
directory is a model (id from its manifest), unloaded until a request loads it; a package added
while the stack runs is listed on the next GET /v1/models and serves; a [[models]] entry of the
same id changes the settings it names."""
import pathlib

import openai
import pytest

from e2e_stack import Stack
from test_e2e_budget import package_as

pytestmark = pytest.mark.e2e


def test_models_dir(tmp_path, default_package):
    pkg = pathlib.Path(default_package.path)
    models = tmp_path / "models"
    package_as(pkg, models / "first", "dir-first")
    package_as(pkg, models / "second", "dir-second")
    config = (f'[server]\nport = {{port}}\ngrpc_port = 0\nrun_dir = "{{run_dir}}"\nmodels_dir = "{models}"\n'
              '[[models]]\nid = "dir-second"\ncontext_length = 128\nmax_batch = 1\nthreads = 1\n')
    s = Stack(tmp_path, config).start()
    try:
        c = openai.OpenAI(base_url=s.base_url, api_key="none", max_retries=0, timeout=120)
        listed = {m.id: m.model_extra["status"]["state"] for m in c.models.list().data}
        assert listed == {"dir-first": "unloaded", "dir-second": "unloaded"}
        r = c.chat.completions.create(model="dir-second", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.choices[0].message.content
        with pytest.raises(openai.BadRequestError) as e:     # its entry's context_length of 128 holds
            c.completions.create(model="dir-second", prompt="word " * 200, max_tokens=1)
        assert e.value.body["code"] == "context_length_exceeded"
        package_as(pkg, models / "third", "dir-third")
        listed = {m.id: m.model_extra["status"]["state"] for m in c.models.list().data}
        assert listed == {"dir-first": "unloaded", "dir-second": "loaded", "dir-third": "unloaded"}
        r = c.chat.completions.create(model="dir-third", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.choices[0].message.content
    finally:
        s.stop()
