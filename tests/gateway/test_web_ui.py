"""The chat page's routes (services/gateway/web_ui.py) on a gateway with fake peers: the files,
gzip, cache and security headers, public paths under api_keys, its size, and web_ui = false."""
import gzip
import http.client
import json
import re

import pytest

from npuflow.gateway.web_ui import CSP, WEBUI_DIR, accepts_gzip, load_assets

PAGE_LIMIT_BYTES = 300 * 1024


def get(stack, path: str, headers=None):
    """(status, lower-cased headers, raw body bytes): no key, no automatic decompression."""
    c = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    c.putrequest("GET", path, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        c.putheader(k, v)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def page_files(html: str) -> list[str]:
    """The /ui/ files the page loads: its links and scripts, then the modules they import."""
    names = re.findall(r'(?:src|href)="/ui/([^"]+)"', html)
    for js in [n for n in names if n.endswith(".js")]:
        names += re.findall(r'from "\./([^"]+)"', (WEBUI_DIR / js).read_text())
    return sorted(set(names))


def test_page_and_chat_serve_the_page_without_a_key(stack):
    assert stack.key      # the module's stack has api_keys
    for path in ("/", "/chat"):
        status, h, body = get(stack, path)
        assert status == 200, body
        assert h["content-type"] == "text/html; charset=utf-8"
        assert h["content-security-policy"] == CSP
        assert "script-src 'self'" in CSP and "'unsafe-inline'" not in CSP and "default-src 'none'" in CSP
        assert h["x-content-type-options"] == "nosniff"
        assert h["cache-control"] == "no-cache" and h["etag"]
        assert b'<script type="module" src="/ui/app.js">' in body
        assert b"<style" not in body and b" style=" not in body and b"<script>" not in body   # CSP: no inline code
    # the API itself still needs the key
    status, _, body = get(stack, "/v1/models")
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"


def test_assets_gzip_and_revalidation(stack):
    status, _, html = get(stack, "/")
    files = page_files(html.decode())
    assert {"app.js", "style.css", "icon.svg", "api.js", "markdown.js", "store.js"} <= set(files)
    for name in files:
        raw_status, h, raw = get(stack, "/ui/" + name)
        assert raw_status == 200 and "content-encoding" not in h, name
        assert raw == (WEBUI_DIR / name).read_bytes()
        assert h["x-content-type-options"] == "nosniff" and h["content-security-policy"] == CSP
        status, hz, gz = get(stack, "/ui/" + name, {"Accept-Encoding": "gzip, deflate, br"})
        assert status == 200 and hz["content-encoding"] == "gzip" and hz["vary"] == "Accept-Encoding"
        assert gzip.decompress(gz) == raw and len(gz) < len(raw)
        status, h304, body = get(stack, "/ui/" + name, {"If-None-Match": h["etag"]})
        assert status == 304 and body == b"" and h304["etag"] == h["etag"]
    types = {n: get(stack, "/ui/" + n)[1]["content-type"] for n in ("app.js", "style.css", "icon.svg")}
    assert types == {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
                     "icon.svg": "image/svg+xml"}
    status, h, _ = get(stack, "/ui/app.js", {"Accept-Encoding": "gzip;q=0, identity"})
    assert status == 200 and "content-encoding" not in h


def test_unknown_asset_is_an_openai_404(stack):
    for path in ("/ui/nope.js", "/ui/index.html", "/ui/..%2Fapp.py", "/ui/"):
        status, h, body = get(stack, path)
        assert status == 404, path
        assert h["content-type"].startswith("application/json")
        assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_the_page_is_small():
    assets = load_assets()
    raw = sum(len(a.body) for a in assets.values())
    gz = sum(len(a.gzipped) for a in assets.values())
    print(f"chat page: {len(assets)} files, {raw} bytes, {gz} gzip'd")
    assert raw < PAGE_LIMIT_BYTES and gz < raw / 2


def test_no_html_injection_of_text_in_the_scripts():
    """Model text reaches the DOM as text only: no script assigns innerHTML / outerHTML or calls
    insertAdjacentHTML, document.write or eval."""
    for path in WEBUI_DIR.glob("*.js"):
        src = path.read_text()
        for bad in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert bad not in src, f"{path.name} uses {bad}"


@pytest.mark.parametrize("header, ok", [
    ("gzip", True), ("deflate, gzip;q=0.5", True), ("GZIP", True), ("x-gzip", True), ("*", True),
    ("gzip;q=0", False), ("identity", False), ("", False), ("br, *;q=0", False), ("*;q=0, gzip", True),
    ("gzip;q=bad", False),
])
def test_accepts_gzip(header, ok):
    assert accepts_gzip(header) is ok


def test_web_ui_off_is_a_404(make_stack):
    s = make_stack(api_keys=(), web_ui=False)
    for path in ("/", "/chat", "/ui/app.js"):
        status, h, body = get(s, path)
        assert status == 404, path
        assert json.loads(body)["error"]["code"] == "unknown_url"


def test_web_ui_off_keeps_the_paths_behind_the_key(make_stack):
    s = make_stack(web_ui=False)
    status, _, body = get(s, "/")
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
