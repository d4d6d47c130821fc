"""`npuflow serve` with three models on a memory budget that holds two, through the official
openai client: every model listed with its state, load on demand, LRU eviction of an idle model,
keep_alive, explicit load/unload behind the API key, a model too large for the budget refused at
once, the lifecycle metrics, and memory back where it was after repeated load/unload cycles.

The three models are the default package under three ids (a folder of symlinks to its files
with its own manifest each), so they load in about a second without converting anything."""
import json
import pathlib
import time
import urllib.error
import urllib.request

import openai
import psutil
import pytest

from e2e_stack import Stack
from npuflow.config import ModelSettings
from npuflow.models.footprint import footprint

pytestmark = pytest.mark.e2e
KEY = "sk-budget"
M1, M2, M3, HUGE = "budget-one", "budget-two", "budget-three", "budget-huge"


def package_as(pkg: pathlib.Path, folder: pathlib.Path, model_id: str) -> pathlib.Path:
    """The package at `pkg` under another id: symlinks to its files, a manifest of its own."""
    folder.mkdir(parents=True)
    for f in pkg.iterdir():
        if f.name != "manifest.json":
            (folder / f.name).symlink_to(f)
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["id"] = model_id
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _model(model_id: str, source, **kw) -> str:
    keys = {"id": model_id, "source": str(source), "context_length": 256, "max_batch": 1, "threads": 1, **kw}
    return "[[models]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


@pytest.fixture(scope="module")
def budget_stack(tmp_path_factory, default_package):
    tmp = tmp_path_factory.mktemp("budget")
    src = {m: package_as(pathlib.Path(default_package.path), tmp / "pkgs" / m, m) for m in (M1, M2, M3, HUGE)}
    one = footprint(ModelSettings(id=M1, source=str(src[M1]), context_length=256, max_batch=1), str(tmp))
    budget = int(one.bytes * 2.5)
    config = (f'[server]\nport = {{port}}\ngrpc_port = 0\nrun_dir = "{{run_dir}}"\napi_keys = ["{KEY}"]\n'
              f'memory_budget = "{budget}"\n'
              + _model(M1, src[M1]) + _model(M2, src[M2], preload=False)
              + _model(M3, src[M3], preload=False, keep_alive="2")
              + _model(HUGE, src[HUGE], preload=False, max_batch=16, context_length=8192))
    s = Stack(tmp, config).start()
    s.key = KEY
    yield s
    s.stop()


def _get(s: Stack, path: str, key: str | None = KEY):
    req = urllib.request.Request(f"http://127.0.0.1:{s.port}{path}",
                                 headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


def _post(s: Stack, path: str, body: dict, key: str | None = KEY) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{s.port}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def states(s: Stack) -> dict[str, str]:
    return {m["id"]: m["status"]["state"] for m in json.loads(_get(s, "/v1/models"))["data"]}


def ask(s: Stack, model: str) -> str:
    c = openai.OpenAI(base_url=s.base_url, api_key=KEY, max_retries=0, timeout=120)
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4,
                                  temperature=0)
    return r.choices[0].message.content


def wait_for(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out: {what}"
        time.sleep(0.1)


def stack_rss(s: Stack) -> int:
    procs = [psutil.Process(s.proc.pid)] + [p for p in s.children() if "npuflow-worker" not in " ".join(p.cmdline())]
    return sum(p.memory_info().rss for p in procs)


def has_worker(s: Stack, model: str) -> bool:
    """Whether a worker of `model` runs: one of this stack's processes, or an orphan anywhere on
    this machine (a worker its supervisor lost is adopted by init, out of the stack's tree); a
    worker under another stack's supervisor (a parallel run of these tests) is not ours. Found by
    its title ("npuflow-worker ID") or, before it set one, its `npuflow.cli worker --model ID`."""
    ours = {p.pid for p in s.children()}
    for p in psutil.process_iter(["cmdline"]):
        words = " ".join(p.info["cmdline"] or []).split()
        if words[:2] != ["npuflow-worker", model] and words[-3:] != ["worker", "--model", model]:
            continue
        try:
            if p.pid in ours or not any(_is_supervisor(a) for a in p.parents()):
                return True
        except psutil.Error:
            continue
    return False


def _is_supervisor(p: psutil.Process) -> bool:
    """`npuflow serve`, by its title or, before it set one, its command line."""
    words = " ".join(p.cmdline()).split()
    return words[:1] == ["npuflow-supervisor"] or ("npuflow.cli" in words and "serve" in words)


def test_load_on_demand_and_lru_eviction(budget_stack):
    s = budget_stack
    assert states(s) == {M1: "loaded", M2: "unloaded", M3: "unloaded", HUGE: "unloaded"}
    assert ask(s, M2)
    assert states(s)[M2] == "loaded" and has_worker(s, M2)
    assert ask(s, M1)                       # M1 is now the most recently used
    assert ask(s, M3)                       # no room for three: M2, the least recently used idle one, goes
    assert {k: v for k, v in states(s).items() if k != HUGE} == {M1: "loaded", M2: "unloaded", M3: "loaded"}
    wait_for(lambda: not has_worker(s, M2), 10, "M2's worker to exit")
    wait_for(lambda: states(s)[M3] == "unloaded", 15, "M3's keep_alive of 2 s")
    metrics = _get(s, "/metrics", key=None)
    assert f'npuflow_model_unloads_total{{model="{M2}",reason="evicted"}} 1.0' in metrics
    assert f'npuflow_model_unloads_total{{model="{M3}",reason="keep_alive"}} 1.0' in metrics
    assert f'npuflow_model_loads_total{{model="{M2}",result="ok"}} 1.0' in metrics
    assert "npuflow_model_load_seconds_bucket" in metrics and "npuflow_memory_used_bytes" in metrics


def test_a_model_larger_than_the_budget_is_refused_at_once(budget_stack):
    c = openai.OpenAI(base_url=budget_stack.base_url, api_key=KEY, max_retries=0, timeout=30)
    t = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model=HUGE, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert time.monotonic() - t < 5
    assert e.value.status_code == 503 and e.value.body["code"] == "model_too_large_for_budget"
    assert "budget" in e.value.body["message"] and "GiB" in e.value.body["message"]
    assert not has_worker(budget_stack, HUGE)


def test_explicit_load_and_unload_need_the_key(budget_stack):
    s = budget_stack
    assert _post(s, "/models/load", {"model": M2}, key=None)[0] == 401
    assert _post(s, "/models/unload", {"model": M1}, key=None)[0] == 401
    status, body = _post(s, "/models/load", {"model": M2})
    assert status == 200 and body["status"]["state"] == "loaded" and body["memory"]["bytes"] > 0, body
    status, body = _post(s, "/models/unload", {"model": M2})
    assert status == 200 and body["status"]["state"] == "unloaded", body
    assert not has_worker(s, M2)
    status, body = _post(s, "/models/load", {"model": "nope"})
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_memory_returns_after_unload(budget_stack):
    s = budget_stack
    _post(s, "/models/load", {"model": M2})
    _post(s, "/models/unload", {"model": M2})          # warm-up: the first cycle fills caches
    before = stack_rss(s)
    for _ in range(5):
        assert _post(s, "/models/load", {"model": M2})[0] == 200
        assert ask(s, M2)
        assert _post(s, "/models/unload", {"model": M2})[0] == 200
        assert not has_worker(s, M2)
    grown = stack_rss(s) - before
    assert grown < 15 * 2 ** 20, f"the stack grew by {grown / 2 ** 20:.1f} MiB over 5 load/unload cycles"
