"""Image content parts in the gateway: parsing (data: URLs, http(s) URLs, roles, details) through
the real gateway and gRPC front door with fake peers; resolve_images (model check, count, probe
off the event loop); fetching under the config's rules against a local aiohttp server
(allow-list, addresses that are not public, redirects, byte limit, timeout, non-images)."""
from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import random
import threading

import grpc
import pytest
from aiohttp import web
from PIL import Image

from gw_fakes import MODEL
from grpc_front import GrpcFront
from npuflow.config import ServerSettings, Settings
from npuflow.gateway import images
from npuflow.gateway.client import ChatTurn, ImagePart
from npuflow.gateway.errors import ApiError
from npuflow.gateway.grpc_convert import chat_request, tokenize_request
from npuflow.gateway.grpc_errors import CODE_KEY, PARAM_KEY
from npuflow.gateway.image_fetch import ImageFetcher, host_allowed, is_public
from npuflow.gateway.images import resolve_images
from npuflow.gateway.validation import parse_messages
from npuflow.v1 import generation_service_pb2 as gs

CHAT = "/v1/chat/completions"


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (6, 4), frames: int = 1) -> bytes:
    b = io.BytesIO()
    ims = [Image.new("RGB", size, (40 * i, 100, 200)) for i in range(frames)]
    if frames > 1:
        ims[0].save(b, fmt, save_all=True, append_images=ims[1:])
    else:
        ims[0].save(b, fmt)
    return b.getvalue()


PNG = image_bytes()


def noisy_png(size=(40, 30)) -> bytes:
    """A PNG that does not compress to almost nothing, so half of it is a cut file."""
    b = io.BytesIO()
    Image.frombytes("RGB", size, random.Random(0).randbytes(size[0] * size[1] * 3)).save(b, "PNG")
    return b.getvalue()


def data_url(data: bytes = PNG, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def img(url: str, **kw) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **kw}}


def third_part(part: dict, role: str = "user") -> list[dict]:
    """The part at messages[1].content[2] (after two text parts), as the issue's example names it."""
    return [{"role": "system", "content": "be brief"},
            {"role": role, "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, part]}]


def _err(stack, body, path=CHAT) -> dict:
    st, headers, b = stack.request("POST", path, body)
    assert st == 400, b
    assert headers["Content-Type"].startswith("application/json")
    assert set(b) == {"error"} and set(b["error"]) == {"message", "type", "param", "code"}, b
    assert b["error"]["type"] == "invalid_request_error" and "\n" not in b["error"]["message"], b
    return b["error"]


P = "messages[1].content[2]"


# -- parsing, through the real gateway -------------------------------------------------------------

@pytest.mark.parametrize("part, param, code, needle", [
    (img("data:image/png;base64,!!!!"), P, "invalid_image_url", "not valid base64"),
    (img(data_url()[:-3]), P, "invalid_image_url", "cut short"),                         # truncated base64
    (img(data_url()[:40]), P, "invalid_image_url", "not valid base64"),
    (img("data:image/png;base64,iVBORw0KGgo=junk"), P, "invalid_image_url", "base64"),
    (img("data:image/png," + "x" * 20), P, "invalid_image_url", "not a base64 data URL"),
    (img("data:image/png;base64,"), P, "invalid_image_format", "empty"),
    (img(data_url(b"hello", "text/plain")), P, "invalid_image_format", "'text/plain'"),
    (img(data_url(PNG, "image/svg+xml")), P, "invalid_image_format", "PNG, JPEG, WebP and GIF"),
    (img("file:///etc/passwd"), P, "unsupported_image_url", "'file:'"),
    (img("ftp://example.com/a.png"), P, "unsupported_image_url", "'ftp:'"),
    (img("javascript:alert(1)"), P, "unsupported_image_url", "'javascript:'"),
    (img("a.png"), P, "unsupported_image_url", "no scheme"),
    (img(data_url(), detail="ultra"), P + ".image_url.detail", "invalid_value", "'auto', 'low', and 'high'"),
    ({"type": "image_url"}, P + ".image_url", "missing_required_parameter", "Missing required parameter"),
    ({"type": "image_url", "image_url": 5}, P + ".image_url", "invalid_type", "expected an object"),
    ({"type": "image_url", "image_url": {"detail": "low"}}, P + ".image_url.url", "missing_required_parameter",
     "Missing"),
    ({"type": "image_url", "image_url": {"url": 5}}, P + ".image_url.url", "invalid_type", "a string"),
    ({"type": "input_image", "file_id": "file-1"}, P + ".file_id", "unsupported_value", "files API"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, P + ".type", "unsupported_value",
     "'text' and 'image_url'"),
])
def test_bad_image_parts_are_400s_naming_the_part(stack, part, param, code, needle):
    for path in (CHAT, "/tokenize"):
        e = _err(stack, {"model": MODEL, "messages": third_part(part)}, path)
        assert (e["param"], e["code"]) == (param, code), e
        assert needle in e["message"], e


@pytest.mark.parametrize("role", ["system", "developer", "assistant", "tool"])
def test_images_only_in_user_messages(stack, role):
    e = _err(stack, {"model": MODEL, "messages": third_part(img(data_url()), role)})
    assert e["param"] == P and f"role '{role}'" in e["message"] and "only allowed" in e["message"], e


def test_data_url_too_large_is_refused_before_decoding():
    big = "A" * 4000                      # 3000 bytes once decoded: refused by length, never decoded
    with pytest.raises(ApiError) as e:
        parse_messages(third_part(img("data:image/png;base64," + big + "!")), max_image_bytes=2999)
    assert (e.value.param, e.value.code) == (P, "image_too_large") and "3000 bytes" in e.value.message
    # the same data at the limit is decoded (and then found not to be base64 because of the "!")
    with pytest.raises(ApiError) as e:
        parse_messages(third_part(img("data:image/png;base64," + big + "!")), max_image_bytes=3000)
    assert e.value.code == "invalid_image_url"


def test_parsed_turn_keeps_text_and_images_in_order():
    jpeg = image_bytes("JPEG")
    turns = parse_messages([
        {"role": "user", "content": [{"type": "text", "text": "look"}, img(data_url(), detail="low"),
                                     {"type": "text", "text": "and"},
                                     {"type": "image_url", "image_url": data_url(jpeg, "image/jpg")},
                                     {"type": "input_image", "image_url": "https://img.example.com/a.png",
                                      "detail": "high"}]},
        {"role": "assistant", "content": "ok"}])
    t = turns[0]
    assert t.content == "look\nand"
    assert [type(p).__name__ for p in t.parts] == ["str", "ImagePart", "str", "ImagePart", "ImagePart"]
    a, b, c = t.parts[1], t.parts[3], t.parts[4]
    assert (a.param, a.detail, a.data, a.mime_type, a.url) == ("messages[0].content[1]", "low", PNG, "image/png", "")
    assert (b.param, b.detail, b.data, b.mime_type) == ("messages[0].content[3]", "auto", jpeg, "image/jpeg")
    assert (c.param, c.detail, c.data, c.url) == ("messages[0].content[4]", "high", b"",
                                                  "https://img.example.com/a.png")
    assert turns[1].parts == ()                                     # text turns stay as they were
    # whitespace inside the base64 (line-wrapped encoders) is fine
    wrapped = base64.encodebytes(PNG).decode()
    assert "\n" in wrapped
    [t] = parse_messages([{"role": "user", "content": [img("data:image/png;base64," + wrapped)]}])
    assert t.parts[0].data == PNG and t.content == ""


# -- gRPC ------------------------------------------------------------------------------------------

def _grpc_chat(*turns: gs.ChatTurn, **kw) -> gs.ChatRequest:
    return gs.ChatRequest(model=MODEL, messages=list(turns), **kw)


def _image(data=PNG, mime="image/png", detail="") -> gs.ChatTurn.Part:
    return gs.ChatTurn.Part(image=gs.ChatTurn.Image(data=data, mime_type=mime, detail=detail))


def test_grpc_parts_become_image_parts():
    req = chat_request(_grpc_chat(gs.ChatTurn(role="system", content="sys"),
                                  gs.ChatTurn(role="user", parts=[gs.ChatTurn.Part(text="what is"), _image(detail="low"),
                                                                  gs.ChatTurn.Part(text="this"), _image(mime="")])))
    t = req.messages[1]
    assert t.content == "what is\nthis" and req.messages[0].parts == ()
    a, b = t.parts[1], t.parts[3]
    assert (a.param, a.detail, a.data, a.mime_type) == ("messages[1].parts[1]", "low", PNG, "image/png")
    assert (b.param, b.detail, b.mime_type) == ("messages[1].parts[3]", "auto", "")   # read from the data later
    _, turns, _, _ = tokenize_request(gs.TokenizeRequest(model=MODEL, messages=[
        gs.ChatTurn(role="user", parts=[_image()])]))
    assert turns[0].parts[0].param == "messages[0].parts[0]"


@pytest.mark.parametrize("turn, param, code", [
    (gs.ChatTurn(role="assistant", parts=[_image()]), "messages[1].parts[0]", "invalid_value"),
    (gs.ChatTurn(role="user", parts=[_image(mime="image/bmp")]), "messages[1].parts[0]", "invalid_image_format"),
    (gs.ChatTurn(role="user", parts=[_image(data=b"")]), "messages[1].parts[0]", "invalid_image_format"),
    (gs.ChatTurn(role="user", parts=[_image(detail="max")]), "messages[1].parts[0].image.detail", "invalid_value"),
    (gs.ChatTurn(role="user", parts=[gs.ChatTurn.Part()]), "messages[1].parts[0]", "invalid_value"),
    (gs.ChatTurn(role="user", content="x", parts=[_image()]), "messages[1].content", "invalid_value"),
])
def test_grpc_bad_image_parts(turn, param, code):
    with pytest.raises(ApiError) as e:
        chat_request(_grpc_chat(gs.ChatTurn(role="user", content="hi"), turn))
    assert (e.value.status, e.value.param, e.value.code) == (400, param, code), e.value.body()


def test_grpc_image_over_the_byte_limit():
    with pytest.raises(ApiError) as e:
        chat_request(_grpc_chat(gs.ChatTurn(role="user", parts=[_image()])), max_image_bytes=len(PNG) - 1)
    assert (e.value.param, e.value.code) == ("messages[0].parts[0]", "image_too_large")


def test_grpc_front_door_answers_invalid_argument(stack):
    front = GrpcFront(stack)
    try:
        with pytest.raises(grpc.RpcError) as e:
            front.chat(model=MODEL, messages=[gs.ChatTurn(role="system", parts=[_image()])])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        trailers = dict(e.value.trailing_metadata() or ())
        assert trailers[PARAM_KEY] == "messages[0].parts[0]" and "role 'system'" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            front.chat(model=MODEL, messages=[gs.ChatTurn(role="user", parts=[_image(data=b"x", mime="text/plain")])])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(e.value.trailing_metadata())[CODE_KEY] == "invalid_image_format"
    finally:
        front.close()


# -- resolve_images --------------------------------------------------------------------------------

def settings(**kw) -> Settings:
    return Settings(server=ServerSettings(**kw))


def turns_with(*parts, role="user") -> list[ChatTurn]:
    return [ChatTurn(role="system", content="s"),
            ChatTurn(role=role, content="t", parts=("t", *parts))]


def part(data=PNG, i=1, **kw) -> ImagePart:
    return ImagePart(param=f"messages[1].content[{i}]", data=data, **kw)


async def _refused(turns, s=None, **kw) -> ApiError:
    with pytest.raises(ApiError) as e:
        await resolve_images(turns, s or settings(), **{"vision": True, **kw})
    assert e.value.status == 400
    return e.value


async def test_resolve_fills_size_and_type():
    gif = image_bytes("GIF", (9, 5), frames=3)
    webp, jpeg = image_bytes("WEBP", (7, 3)), image_bytes("JPEG", (8, 8))
    turns = turns_with(part(PNG, 1, mime_type="image/png"), part(gif, 2), part(webp, 3, mime_type="image/png"),
                       part(jpeg, 4, detail="low"))
    out = await resolve_images(turns, settings(), vision=True)
    assert out[0] is turns[0]
    got = [(p.width, p.height, p.mime_type, p.detail) for p in out[1].parts[1:]]
    assert got == [(6, 4, "image/png", "auto"), (9, 5, "image/gif", "auto"),
                   (7, 3, "image/webp", "auto"),        # the file's real type, not what it was called
                   (8, 8, "image/jpeg", "low")]
    assert out[1].parts[0] == "t" and out[1].content == "t"
    text_only = [ChatTurn(role="user", content="hi")]
    assert await resolve_images(text_only, settings(), vision=False) == text_only


async def test_text_only_model_refuses_the_first_image():
    e = await _refused(turns_with(part(i=1), part(i=2)), vision=False, model="smollm2")
    assert (e.param, e.code) == ("messages[1].content[1]", "images_not_supported")
    assert "'smollm2' does not accept images" in e.message


async def test_too_many_images_names_the_first_over_the_limit():
    turns = turns_with(*(part(i=k) for k in range(1, 5)))
    e = await _refused(turns, settings(max_images_per_request=3))
    assert (e.param, e.code) == ("messages[1].content[4]", "too_many_images") and "at most 3" in e.message
    e = await _refused(turns_with(part()), settings(max_images_per_request=0))
    assert e.code == "too_many_images"
    assert len((await resolve_images(turns, settings(max_images_per_request=4), vision=True))[1].parts) == 5


@pytest.mark.parametrize("data, code, needle", [
    (b"hello, not an image", "invalid_image_format", "not an image"),
    (noisy_png()[:1800], "invalid_image_format", "truncated"),
    (image_bytes("BMP"), "invalid_image_format", "unsupported format BMP"),
    (image_bytes("PNG", (70, 50)), "image_too_large", "70 x 50 pixels"),
])
async def test_bad_files_are_400s_naming_the_part(data, code, needle):
    e = await _refused(turns_with(part(PNG, 1), part(data, 2)), settings(max_image_pixels=64 * 48))
    assert (e.param, e.code) == ("messages[1].content[2]", code) and needle in e.message, e.message


async def test_byte_limit_is_checked_again_when_resolving():
    e = await _refused(turns_with(part()), settings(max_image_bytes=len(PNG) - 1))
    assert (e.param, e.code) == ("messages[1].content[1]", "image_too_large")


async def test_probe_runs_off_the_event_loop(monkeypatch):
    threads = []
    real = images.probe_image

    def recording(data, *, max_pixels):
        threads.append(threading.get_ident())
        return real(data, max_pixels=max_pixels)

    monkeypatch.setattr(images, "probe_image", recording)
    await resolve_images(turns_with(part()), settings(), vision=True)
    assert threads and threading.get_ident() not in threads


# -- fetching --------------------------------------------------------------------------------------

class ImageServer:
    """A local HTTP server with the answers the fetch rules are about."""

    def __init__(self):
        self.hits: list[str] = []

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{name}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits.append(name)
        if name == "img.png":
            return web.Response(body=PNG, content_type="image/png")
        if name == "img.jpg":    # a wrong content type: the file's own format wins
            return web.Response(body=image_bytes("JPEG"), content_type="image/png")
        if name == "text":
            return web.Response(text="<html>not an image</html>", content_type="text/html")
        if name == "fake.png":
            return web.Response(body=b"GIF89a but not really", content_type="image/gif")
        if name == "big.png":    # with Content-Length
            return web.Response(body=PNG + b"\0" * 5000, content_type="image/png")
        if name == "stream.png":   # chunked, no Content-Length: counted while it arrives
            r = web.StreamResponse(headers={"Content-Type": "image/png"})
            r.enable_chunked_encoding()
            await r.prepare(request)
            for _ in range(50):
                await r.write(b"\0" * 1000)
            await r.write_eof()
            return r
        if name == "slow.png":
            await asyncio.sleep(3)
            return web.Response(body=PNG, content_type="image/png")
        if name == "missing.png":
            return web.Response(status=404)
        if name.startswith("to-"):   # to-<n>: a redirect to the target in the query
            raise web.HTTPFound(request.query["where"])
        if name.startswith("loop"):
            raise web.HTTPFound(f"/loop{len(self.hits)}")
        return web.Response(status=500)

    async def close(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def server():
    s = ImageServer()
    await s.start()
    yield s
    await s.close()


LOCAL = ("127.0.0.1/32",)


def fetch_settings(hosts=("127.0.0.1",), **kw) -> Settings:
    return settings(fetch_image_urls=True, image_url_hosts=hosts, **kw)


async def _fetch(url, s: Settings, trusted=LOCAL, vision=True) -> ImagePart:
    fetcher = ImageFetcher(s.server, _trusted_networks=trusted)
    try:
        out = await resolve_images(turns_with(ImagePart(param="messages[1].content[1]", url=url)), s,
                                   vision=vision, fetcher=fetcher)
    finally:
        await fetcher.close()
    return out[1].parts[1]


async def _fetch_refused(url, s, trusted=LOCAL) -> ApiError:
    with pytest.raises(ApiError) as e:
        await _fetch(url, s, trusted)
    assert e.value.status == 400 and e.value.param == "messages[1].content[1]", e.value.body()
    assert "\n" not in e.value.message
    return e.value


async def test_fetch_allowed_host(server):
    p = await _fetch(server.url("img.png"), fetch_settings())
    assert (p.data, p.width, p.height, p.mime_type, p.url) == (PNG, 6, 4, "image/png", server.url("img.png"))
    p = await _fetch(server.url("img.jpg"), fetch_settings())
    assert p.mime_type == "image/jpeg"
    # a redirect within the rules is followed
    p = await _fetch(server.url("to-1?where=/img.png"), fetch_settings())
    assert p.data == PNG and server.hits[-2:] == ["to-1", "img.png"]


async def test_fetch_with_one_session_for_many_requests(server):
    s = fetch_settings()
    fetcher = ImageFetcher(s.server, _trusted_networks=LOCAL)
    try:
        for _ in range(2):
            turns = turns_with(ImagePart(param="messages[1].content[1]", url=server.url("img.png")),
                               ImagePart(param="messages[1].content[2]", url=server.url("img.png")))
            out = await resolve_images(turns, s, vision=True, fetcher=fetcher)
            assert [p.width for p in out[1].parts[1:]] == [6, 6]
        session = fetcher._session
        assert session is not None and not session.closed
    finally:
        await fetcher.close()
    assert session.closed


async def test_fetching_off_by_default(server):
    e = await _fetch_refused(server.url("img.png"), settings())
    assert e.code == "unsupported_image_url" and "server.fetch_image_urls is off" in e.message
    assert server.hits == []


@pytest.mark.parametrize("hosts", [(), ("images.example.com",), ("*.127.0.0.1",), ("127.0.0.10",)])
async def test_host_not_on_the_list(server, hosts):
    e = await _fetch_refused(server.url("img.png"), fetch_settings(hosts))
    assert e.code == "unsupported_image_url" and "server.image_url_hosts" in e.message
    assert server.hits == []


async def test_loopback_refused_without_the_test_hook(server):
    e = await _fetch_refused(server.url("img.png"), fetch_settings(), trusted=())
    assert e.code == "unsupported_image_url" and "not a public address" in e.message
    # a name that resolves to loopback is refused by the resolver, on the addresses connected to
    e = await _fetch_refused(server.url("img.png", "localhost"), fetch_settings(("localhost",)), trusted=())
    assert e.code == "unsupported_image_url" and "resolves to" in e.message and "not a public address" in e.message
    assert server.hits == []


@pytest.mark.parametrize("target", ["http://127.0.0.2:{port}/img.png", "http://[::1]:{port}/img.png",
                                    "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png",
                                    "http://[::ffff:127.0.0.2]:{port}/img.png", "http://evil.example.com/x.png",
                                    "file:///etc/passwd", "http://user:pw@127.0.0.1:{port}/img.png"])
async def test_redirects_are_checked_like_the_first_url(server, target):
    where = target.format(port=server.port)
    hosts = ("127.0.0.1", "127.0.0.2", "::1", "169.254.169.254", "10.0.0.1", "::ffff:127.0.0.2", "*.example.org")
    e = await _fetch_refused(server.url(f"to-x?where={where}"), fetch_settings(hosts))
    assert e.code == "unsupported_image_url", e.message
    assert server.hits == ["to-x"]          # the target was never asked


async def test_too_many_redirects(server):
    e = await _fetch_refused(server.url("loop"), fetch_settings())
    assert e.code == "invalid_image_url" and "more than 3 times" in e.message
    assert len(server.hits) == 4


@pytest.mark.parametrize("name", ["big.png", "stream.png"])
async def test_byte_limit_while_fetching(server, name):
    e = await _fetch_refused(server.url(name), fetch_settings(max_image_bytes=4000))
    assert e.code == "image_too_large" and "server.max_image_bytes" in e.message


async def test_fetch_timeout(server):
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    e = await _fetch_refused(server.url("slow.png"), fetch_settings(image_fetch_timeout_s=0.3))
    assert loop.time() - t0 < 2.5
    assert e.code == "invalid_image_url" and "within 0.3 seconds" in e.message


@pytest.mark.parametrize("name, code, needle", [
    ("text", "invalid_image_format", "content type is text/html"),
    ("fake.png", "invalid_image_format", "not read"),
    ("missing.png", "invalid_image_url", "HTTP 404"),
])
async def test_fetched_non_images(server, name, code, needle):
    e = await _fetch_refused(server.url(name), fetch_settings())
    assert e.code == code and needle in e.message, e.message


async def test_unreachable_host():
    e = await _fetch_refused("http://127.0.0.1:9/x.png", fetch_settings())    # nothing listens on port 9
    assert e.code == "invalid_image_url" and "could not be reached" in e.message


def test_host_allow_list():
    hosts = ("img.example.com", "*.cdn.example.org", "192.0.2.7")
    assert host_allowed("img.example.com", hosts) and host_allowed("a.cdn.example.org", hosts)
    assert host_allowed("a.b.cdn.example.org", hosts) and host_allowed("192.0.2.7", hosts)
    for h in ("example.com", "cdn.example.org", "xcdn.example.org", "img.example.com.evil.net", "evilimg.example.com",
              "192.0.2.8"):
        assert not host_allowed(h, hosts), h
    assert not host_allowed("img.example.com", ())


def test_public_addresses():
    for a in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert is_public(ipaddress.ip_address(a)), a
    for a in ("127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
              "0.0.0.0", "224.0.0.1", "255.255.255.255", "240.0.0.1", "192.0.2.1", "::1", "::", "fe80::1", "fc00::1",
              "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1",
              "2002:7f00:1::", "2001:0:4136:e378:8000:63bf:f5ff:fffe"):   # 6to4 of 127.0.0.1, Teredo of 10.0.0.1
        assert not is_public(ipaddress.ip_address(a)), a


def test_image_settings_load_and_are_checked(tmp_path):
    from npuflow.config import ConfigError, load_settings
    s = load_settings(env={"NPUFLOW_IMAGE_URL_HOSTS": "Img.Example.com, *.cdn.example.org,[::1]",
                           "NPUFLOW_FETCH_IMAGE_URLS": "true", "NPUFLOW_MAX_IMAGES_PER_REQUEST": "2"}).server
    assert s.image_url_hosts == ("img.example.com", "*.cdn.example.org", "::1")
    assert (s.fetch_image_urls, s.max_images_per_request) == (True, 2)
    d = load_settings(env={}).server
    assert (d.fetch_image_urls, d.image_url_hosts, d.max_images_per_request, d.max_image_pixels,
            d.max_image_bytes, d.image_fetch_timeout_s) == (False, (), 8, 4096 * 4096, 20 * 1024 * 1024, 10.0)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nimage_url_hosts = ["images.example.com", "*.example.org"]\n')
    assert load_settings(cfg, env={}).server.image_url_hosts == ("images.example.com", "*.example.org")
    for env in ({"NPUFLOW_IMAGE_URL_HOSTS": "https://x.com"}, {"NPUFLOW_IMAGE_URL_HOSTS": "*"},
                {"NPUFLOW_IMAGE_URL_HOSTS": "x.com:8080"}, {"NPUFLOW_IMAGE_URL_HOSTS": "x.com/a"},
                {"NPUFLOW_MAX_IMAGE_PIXELS": "0"}, {"NPUFLOW_MAX_IMAGE_BYTES": "-1"},
                {"NPUFLOW_MAX_IMAGES_PER_REQUEST": "-1"}, {"NPUFLOW_IMAGE_FETCH_TIMEOUT_S": "0"},
                {"NPUFLOW_FETCH_IMAGE_URLS": "maybe"}):
        with pytest.raises(ConfigError) as e:
            load_settings(env=env)
        assert "server." in str(e.value), env



# -- resolving, through the real gateway ----------------------------------------------------------

def test_image_to_a_text_only_model(stack):
    """The fake peers of `stack` say nothing of images: its model is text-only."""
    body = {"model": MODEL, "messages": third_part(img(data_url()))}
    for path in (CHAT, "/tokenize"):
        e = _err(stack, body, path)
        assert (e["param"], e["code"]) == (P, "images_not_supported") and "does not accept images" in e["message"], e
    st, _, b = stack.request("GET", f"/v1/models/{MODEL}")
    assert st == 200 and b["input_modalities"] == ["text"], b
    front = GrpcFront(stack)
    try:
        with pytest.raises(grpc.RpcError) as e:
            front.chat(model=MODEL, messages=[gs.ChatTurn(role="user", parts=[_image()])])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(e.value.trailing_metadata()) == {CODE_KEY: "images_not_supported", PARAM_KEY: "messages[0].parts[0]"}
    finally:
        front.close()


@pytest.fixture
def vstack(make_stack):
    """A gateway whose fake peers say the model takes images, with small image limits."""
    return make_stack(vision=True, max_images_per_request=3, max_image_pixels=64 * 48, max_image_bytes=3000)


def test_bad_images_to_a_vision_model(vstack):
    cut, big_file = noisy_png()[:1800], noisy_png((40, 40))
    assert len(big_file) > 3000
    cases = [
        (img(data_url(b"GIF89a no image here", "image/gif")), P, "invalid_image_format", "not an image"),
        (img(data_url(cut)), P, "invalid_image_format", "truncated"),
        (img(data_url(image_bytes("PNG", (70, 50)))), P, "image_too_large", "70 x 50 pixels"),
        (img(data_url(big_file)), P, "image_too_large", "limit of 3000"),
        (img("https://images.example.com/a.png"), P, "unsupported_image_url", "server.fetch_image_urls is off"),
    ]
    for part, param, code, needle in cases:
        for path in (CHAT, "/tokenize"):
            e = _err(vstack, {"model": MODEL, "messages": third_part(part)}, path)
            assert (e["param"], e["code"]) == (param, code) and needle in e["message"], e
    four = [{"role": "user", "content": [{"type": "text", "text": "a"}, img(data_url()), img(data_url())]},
            {"role": "user", "content": [img(data_url()), {"type": "text", "text": "b"}, img(data_url())]}]
    e = _err(vstack, {"model": MODEL, "messages": four})
    assert (e["param"], e["code"]) == ("messages[1].content[2]", "too_many_images") and "at most 3" in e["message"]
    assert vstack.worker.requests == []          # nothing reached the worker


def test_good_image_to_a_vision_model(vstack):
    from gw_fakes import IMAGE_TOKENS
    st, _, b = vstack.request("POST", CHAT, {"model": MODEL, "messages": third_part(img(data_url(), detail="low")),
                                             "max_tokens": 2})
    assert st == 200, b
    [g] = vstack.worker.requests
    [im] = g.images
    assert (im.data, im.detail, im.param, im.end - im.start) == (PNG, "low", P, IMAGE_TOKENS)
    assert b["usage"]["prompt_tokens"] == len(g.prompt_token_ids) >= IMAGE_TOKENS
    [chat] = vstack.tokenizer.chats[-1:]
    ref = [p.image for p in chat.messages[1].parts if p.WhichOneof("part") == "image"]
    assert [(r.width, r.height, r.detail) for r in ref] == [(6, 4, "low")]


def test_grpc_bad_images_to_a_vision_model(vstack):
    front = GrpcFront(vstack)
    try:
        for parts, param, code in (([_image(data=b"not an image", mime="")], "messages[0].parts[0]",
                                    "invalid_image_format"),
                                   ([_image()] * 4, "messages[0].parts[3]", "too_many_images")):
            with pytest.raises(grpc.RpcError) as e:
                front.chat(model=MODEL, messages=[gs.ChatTurn(role="user", parts=parts)])
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert dict(e.value.trailing_metadata()) == {CODE_KEY: code, PARAM_KEY: param}, e.value.details()
        msgs = front.chat(model=MODEL, messages=[gs.ChatTurn(role="user", parts=[gs.ChatTurn.Part(text="x"), _image()])],
                          sampling=dict(max_tokens=2))
        assert msgs and vstack.worker.requests[-1].images[0].param == "messages[0].parts[1]"
    finally:
        front.close()


def test_gateway_bounds_a_data_url_before_decoding_and_keeps_one_fetcher(vstack):
    """The app's settings reach parsing (a too-long data: URL is refused by its length) and the
    app keeps one ImageFetcher for its requests."""
    from npuflow.gateway.state import STATE
    too_long = "data:image/png;base64," + "A" * 4004 + "!"     # 3003 bytes > 3000, and not even base64
    for path in (CHAT, "/tokenize"):
        e = _err(vstack, {"model": MODEL, "messages": third_part(img(too_long))}, path)
        assert (e["param"], e["code"]) == (P, "image_too_large"), e
    fetcher = vstack.app[STATE].image_fetcher
    assert isinstance(fetcher, ImageFetcher) and fetcher.max_bytes == 3000 and not fetcher.enabled
