"""The chat page: GET / and /chat (the page) and /ui/{name} (its script, style and icon).

The files live in the package (webui/ next to this module) and are plain HTML, CSS and ES
modules: nothing is built at install or start and nothing is fetched from elsewhere at run time,
so the page works on a board without an uplink. They are read and gzip'd once, when the app is
made; a request gets the gzip'd bytes when its Accept-Encoding allows gzip, else the plain ones.
Every answer carries a strict Content-Security-Policy (no inline script or style, no other
origin) and an ETag, so a browser revalidates (Cache-Control: no-cache) with a cheap 304.

The page only talks to the public API (/v1/models, /v1/chat/completions) with the API key the
user gives it, so the page paths are public (auth.py) and hold no secret.
`server.web_ui = false` leaves these routes out (then / is a 404 as any unknown path).
"""
from __future__ import annotations

import gzip
import hashlib
import pathlib
from dataclasses import dataclass

from aiohttp import web

WEBUI_DIR = pathlib.Path(__file__).with_name("webui")
PAGE_PATHS = ("/", "/chat")
ASSET_PREFIX = "/ui/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    content_type: str
    etag: str


def load_assets(root: pathlib.Path = WEBUI_DIR) -> dict[str, Asset]:
    """Every served file of `root` by name, with its gzip'd bytes (level 9, no timestamp, so the
    bytes and the ETag are the same on every start)."""
    out = {}
    for path in sorted(root.iterdir()):
        kind = CONTENT_TYPES.get(path.suffix)
        if kind is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        out[path.name] = Asset(body, gzip.compress(body, 9, mtime=0), kind, etag)
    if "index.html" not in out:
        raise FileNotFoundError(f"the chat page's index.html is missing from {root}")
    return out


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (`gzip`, `x-gzip` or `*`, without q=0)."""
    allowed = None
    for item in accept_encoding.lower().split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip()
        q = 1.0
        for p in params.split(";"):
            key, _, value = p.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name in ("gzip", "x-gzip"):
            return q > 0
        if name == "*":
            allowed = q > 0
    return bool(allowed)


class WebUi:
    """The handlers of the page's routes over the files loaded once."""

    def __init__(self, assets: dict[str, Asset]):
        self.assets = assets

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for path in PAGE_PATHS:
            router.add_get(path, self.page)
        router.add_get(ASSET_PREFIX + "{name}", self.asset)

    async def page(self, request: web.Request) -> web.Response:
        return self._answer(request, self.assets["index.html"])

    async def asset(self, request: web.Request) -> web.Response:
        found = self.assets.get(request.match_info["name"])
        if found is None or request.match_info["name"] == "index.html":
            raise web.HTTPNotFound()
        return self._answer(request, found)

    @staticmethod
    def _answer(request: web.Request, asset: Asset) -> web.Response:
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": asset.etag, "Vary": "Accept-Encoding"}
        if asset.etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = asset.content_type
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=asset.gzipped, headers=headers)
        return web.Response(body=asset.body, headers=headers)
