"""The chat page in headless Chromium against a gateway with fake peers (tests/gateway's stack):
what the default model cannot show. A thinking model's reasoning folded, images attached with
the file picker and by pasting to a model that takes them, a 429 shown with its message."""
import base64
import io
import pathlib
import sys
import threading
import time

import pytest

from selenium.webdriver.common.keys import Keys

from browser import Page

pytestmark = pytest.mark.browser

TESTS = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "gateway"))   # gw_fakes
sys.path.insert(0, str(TESTS))               # oai_shapes
from gw_fakes import KEY, MODEL, REPLY  # noqa: E402

THINKING = ["<think>", "The user", " greets me.", "</think>", "\n\n", "Hello", "!"]


def _fake_stack_class():
    """tests/gateway/gw_stack.py's Stack (a gateway on a real port with fake worker and tokenizer
    on a background loop)."""
    from gw_stack import Stack
    return Stack


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    s = _fake_stack_class()(tmp_path_factory.mktemp("webui-fake"), vision=True, max_queue=1)
    yield s
    s.close()


@pytest.fixture(scope="module")
def fpage(chrome, fake):
    p = Page(chrome, f"http://127.0.0.1:{fake.port}/")
    p.open()
    p.enter_key(KEY)
    p.wait(lambda: p.model_options() and p.model_options()[0].startswith(MODEL), what="the fake model")
    return p


def png(color=(200, 30, 30)) -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(out, "PNG")
    return out.getvalue()


def test_reasoning_is_shown_folded(fpage, fake):
    fake.worker.reply = list(THINKING)
    try:
        fpage.send("hi")
        fpage.wait_answer_done(10)
    finally:
        fake.worker.reply = list(REPLY)
    def details():   # found again at each use: the page may render the ended answer once more
        return fpage.answers()[-1].find_element("css selector", "details.reasoning")
    assert details().get_attribute("open") is None
    assert details().find_element("css selector", "summary").text.startswith("Reasoning")
    assert fpage.last_answer_text() == "Hello!"
    details().find_element("css selector", "summary").click()
    assert details().find_element("css selector", ".md").text == "The user greets me."


def test_images_from_the_file_picker_and_pasted(fpage, fake, tmp_path):
    fpage.new_chat()
    assert fpage.css("#model-state").text == "text + images"
    assert fpage.css("#attach").get_attribute("disabled") is None
    picked = tmp_path / "red.png"
    picked.write_bytes(png())
    fpage.css("#file").send_keys(str(picked))
    fpage.wait(lambda: len(fpage.all("#attachments .thumb")) == 1, 5, "the picked image")
    fpage.js("""
      const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], 'pasted.png', {type: 'image/png'}));
      document.getElementById('input').dispatchEvent(
        new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true}));
    """, base64.b64encode(png((30, 30, 200))).decode())
    fpage.wait(lambda: len(fpage.all("#attachments .thumb")) == 2, 5, "the pasted image")
    before = len(fake.worker.requests)
    fpage.send("What is in these pictures?")
    fpage.wait_answer_done(10)
    assert not fpage.answers()[-1].find_elements("css selector", ".error")
    assert len(fpage.all("#messages .msg.user .msg-images img")) == 2
    assert not fpage.all("#attachments .thumb")
    got = fake.worker.requests[before]
    from gw_fakes import IMAGE_TOKEN, IMAGE_TOKENS
    assert list(got.prompt_token_ids).count(IMAGE_TOKEN) == 2 * IMAGE_TOKENS
    parts = [p for m in fake.tokenizer.chats[-1].messages for p in m.parts if p.WhichOneof("part") == "image"]
    assert len(parts) == 2


def test_a_full_queue_is_shown_as_429(fpage, fake):
    """max_batch 2 + max_queue 1: three slow requests hold the room, the page's is refused."""
    fake.worker.delay = 0.4
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    held = [threading.Thread(target=fake.request, args=("POST", "/v1/chat/completions", body),
                             kwargs={"timeout": 30}) for _ in range(3)]
    before = len(fake.worker.requests)
    try:
        for t in held:
            t.start()
        fpage.wait(lambda: len(fake.worker.requests) >= before + 2, 5, "the batch to fill")
        time.sleep(0.3)                            # the third waits in the gateway's queue
        fpage.new_chat()
        fpage.send("Hello?")
        fpage.wait(lambda: fpage.all("#messages .msg.assistant .error"), 10, "the 429")
        error = fpage.css("#messages .msg.assistant .error").text
        assert error.startswith("Error 429") and "rate_limit_exceeded" in error, error
    finally:
        fake.worker.delay = 0.001
        for t in held:
            t.join(30)


RENDER = """
const done = arguments[arguments.length - 1];
import('/ui/markdown.js').then((md) => {
  const out = {};
  for (const [name, text] of Object.entries(arguments[0])) {
    const box = document.createElement('div');
    box.append(md.renderMarkdown(text));
    const nodes = [...box.querySelectorAll('*')];
    out[name] = {
      tags: nodes.map((n) => n.tagName.toLowerCase()),
      attrs: nodes.flatMap((n) => [...n.attributes].map((a) => a.name)),
      hrefs: [...box.querySelectorAll('a')].map((a) => a.href),
      text: box.textContent,
      code: [...box.querySelectorAll('pre code')].map((c) => c.textContent),
    };
  }
  done(out);
}, (e) => done({error: String(e)}));
"""

MARKDOWN = {
    "script": "<script>alert(1)</script> and <img src=x onerror=alert(1)>",
    "js-link": "[click](javascript:alert(1)) [data](data:text/html,<b>x</b>) ![img](https://example.com/a.png)",
    "link": "see [the docs](https://example.com/a?b=1) or https://example.org/x.",
    "fence": "```html\n<b onclick=x>bold</b>\n```\nafter",
    "unclosed": "text\n```py\nprint(1)",
    "inline": "**bold**, *em*, _em_, ~~gone~~, `a<b>` and snake_case_name",
    "lists": "1. one\n2. two\n   - nested\n\n- a\n- b",
    "table": "| a | b |\n|---|--:|\n| 1 | <i>2</i> |",
    "quote": "> quoted **text**\n\n---\n### Title",
}
ALLOWED_TAGS = {"p", "br", "strong", "em", "del", "code", "pre", "a", "ul", "ol", "li", "blockquote", "hr", "h3",
                "h4", "h5", "h6", "div", "span", "button", "table", "thead", "tbody", "tr", "th", "td"}


def test_markdown_builds_only_safe_nodes(fpage):
    got = fpage.d.execute_async_script(RENDER, MARKDOWN)
    assert "error" not in got, got
    for name, r in got.items():
        assert set(r["tags"]) <= ALLOWED_TAGS, (name, r["tags"])
        assert not [a for a in r["attrs"] if a.startswith("on") or a in ("style", "src")], (name, r["attrs"])
        assert all(h.startswith(("https:", "http:", "mailto:")) for h in r["hrefs"]), (name, r["hrefs"])
    assert "<script>alert(1)</script>" in got["script"]["text"] and "<img src=x" in got["script"]["text"]
    assert got["js-link"]["hrefs"] == ["https://example.com/a.png"]     # an image becomes a link
    assert "click" in got["js-link"]["text"]
    assert got["link"]["hrefs"] == ["https://example.com/a?b=1", "https://example.org/x"]
    assert got["fence"]["code"] == ["<b onclick=x>bold</b>"] and got["fence"]["text"].endswith("after")
    assert got["unclosed"]["code"] == ["print(1)"]
    assert got["inline"]["tags"].count("strong") == 1 and got["inline"]["tags"].count("em") == 2
    assert "del" in got["inline"]["tags"] and "snake_case_name" in got["inline"]["text"]
    assert "a<b>" in got["inline"]["text"]
    assert got["lists"]["tags"][:4] == ["ol", "li", "li", "ul"] and got["lists"]["tags"].count("li") == 5
    assert got["table"]["tags"].count("td") == 2 and "<i>2</i>" in got["table"]["text"]
    assert {"blockquote", "strong", "hr", "h5"} <= set(got["quote"]["tags"])


def test_model_text_is_never_html(fpage, fake):
    fake.worker.reply = ["<img src=x onerror=\"document.title='owned'\">", " [x](javascript:alert(1))",
                         " <b>bold?</b>"]
    try:
        fpage.new_chat()
        fpage.send("hi")
        fpage.wait_answer_done(10)
    finally:
        fake.worker.reply = list(REPLY)
    answer = fpage.answers()[-1]
    assert not answer.find_elements("css selector", ".content img, .content b, .content a")
    assert "<img src=x onerror=" in fpage.last_answer_text()
    assert fpage.d.title == "npuflow chat"


def test_settings_reach_the_request(fpage, fake):
    fpage.new_chat()
    fpage.set_settings(system="You are terse.", temperature=0.3, top_p=0.8, max_tokens=5)
    try:
        before = len(fake.worker.requests)
        fpage.send("hi")
        fpage.wait_answer_done(10)
    finally:
        fpage.set_settings(system="", temperature="", top_p="", max_tokens="")
    sampling = fake.worker.requests[before].sampling
    assert (round(sampling.temperature, 3), round(sampling.top_p, 3), sampling.max_tokens) == (0.3, 0.8, 5)
    first = fake.tokenizer.chats[-1].messages[0]
    assert (first.role, first.content) == ("system", "You are terse.")
    assert "cut at max_tokens" in fpage.all("#messages .msg.assistant .stats")[-1].text


def test_escape_stops_an_answer(fpage, fake):
    fake.worker.delay = 0.3                       # 8 tokens: about 2.4 s
    try:
        fpage.new_chat()
        before = len(fake.worker.requests)
        fpage.send("hi")
        fpage.wait(lambda: len(fake.worker.requests) > before and len(fpage.last_answer_text()) > 1, 5,
                   "the answer to start")
        fpage.css("#input").send_keys(Keys.ESCAPE)
        rid = fake.worker.requests[before].request_id
        fpage.wait(lambda: rid in fake.worker.aborts, 5, "the worker's abort")
        fpage.wait(lambda: not fpage.busy(), 5, "the page to leave the stream")
    finally:
        fake.worker.delay = 0.001
    assert fpage.all("#messages .msg.assistant .stats")[-1].text.startswith("stopped")
