"""Image content parts: reading them from a request, then resolving them before tokenizing.

Parsing (validation.py for JSON `image_url` parts, grpc_convert.py for ChatTurn.Part images)
builds an ImagePart per image: a data: URL's bytes (strict base64, length bounded before it is
decoded) or an http(s) URL to fetch later. `resolve_images` then checks what needs the model and
the config: that the model takes images, the count, fetching (image_fetch.py), and each file's
format and decoded size (probed in an executor, never on the event loop). Every refusal is a
400 naming the part, `messages[1].content[2]` (HTTP) or `messages[1].parts[0]` (gRPC); the
codes are:
    invalid_image_url      a data: URL that is not base64 data, or an http(s) fetch that failed
    unsupported_image_url  a scheme other than data/http/https, or a URL the config does not fetch
    invalid_image_format   not a PNG, JPEG, WebP or GIF file (or a damaged one)
    image_too_large        more than server.max_image_bytes, or server.max_image_pixels decoded
    too_many_images        more than server.max_images_per_request in one request
    images_not_supported   an image for a model without a vision encoder
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import re
from typing import Sequence

from npuflow.config import ServerSettings, Settings
from npuflow.gateway.client import ChatTurn, ImagePart
from npuflow.gateway.errors import ApiError, bad_param
from npuflow.gateway.image_fetch import FetchError, ImageFetcher
from npuflow.vision import ImageError
from npuflow.vision.images import probe_image

DETAILS = ("auto", "low", "high")
IMAGE_ROLES = ("user",)
# accepted media types -> the format Pillow names; and back (the mime type a probed file gets)
MIME_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP",
                "image/gif": "GIF"}
FORMAT_MIMES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
ACCEPTED = "PNG, JPEG, WebP and GIF"
DEFAULT_MAX_IMAGE_BYTES = ServerSettings().max_image_bytes

_SPACES = " \t\n\r\f\v"
_WHITESPACE = re.compile(f"[{_SPACES}]+")


def detail_of(v, param: str) -> str:
    """A part's `detail` ("auto" when unset)."""
    if v is None:
        return "auto"
    if v not in DETAILS:
        raise bad_param(param, f"Invalid value: {str(v)[:40]!r}. Supported values are: 'auto', 'low', and 'high'.")
    return v


def check_role(role: str, param: str) -> None:
    if role not in IMAGE_ROLES:
        raise bad_param(param, f"Images are only allowed in messages with role 'user', but the one at '{param}' is "
                               f"in a message with role '{role}'.")


def _too_large(param: str, size: int, limit: int) -> ApiError:
    return bad_param(param, f"The image at '{param}' is {size} bytes, more than the limit of {limit} "
                            "(server.max_image_bytes).", code="image_too_large")


def _media_type(mime: str, param: str) -> str:
    mime = mime.strip().lower()
    if mime not in MIME_FORMATS:
        raise bad_param(param, f"The image at '{param}' has the type {mime[:60]!r}; the accepted images are "
                               f"{ACCEPTED} (image/png, image/jpeg, image/webp, image/gif).",
                        code="invalid_image_format")
    return "image/jpeg" if mime == "image/jpg" else mime


def from_url(url: str, param: str, detail: str = "auto", max_bytes: int | None = None) -> ImagePart:
    """The part of an `image_url`: a data: URL decoded, an http(s) URL kept for resolve_images."""
    colon = url.find(":", 0, 16)
    scheme = url[:colon].lower() if colon > 0 else ""
    if scheme == "data":
        data, mime = data_url(url, param, DEFAULT_MAX_IMAGE_BYTES if max_bytes is None else max_bytes)
        return ImagePart(param=param, detail=detail, data=data, mime_type=mime)
    if scheme in ("http", "https"):
        return ImagePart(param=param, detail=detail, url=url)
    what = f"the scheme '{scheme}:'" if scheme else "no scheme"
    raise bad_param(param, f"The image URL at '{param}' has {what}; images are given as data: URLs "
                           "(data:image/png;base64,...) or, where the server fetches them, http(s) URLs.",
                    code="unsupported_image_url")


def data_url(url: str, param: str, max_bytes: int) -> tuple[bytes, str]:
    """(bytes, mime type) of `data:image/<type>;base64,<data>`; the decoded length is checked
    against `max_bytes` before anything is decoded, and the base64 strictly (no junk, no
    missing padding: a truncated file is refused here)."""
    comma = url.find(",", 0, 200)
    head = url[5:comma].lower().split(";") if comma > 0 else None
    if head is None or "base64" not in head[1:]:
        raise bad_param(param, f"The image URL at '{param}' is not a base64 data URL "
                               "(data:image/png;base64,...).", code="invalid_image_url")
    mime = _media_type(head[0], param)
    payload = url[comma + 1:]
    # whitespace (line-wrapped encoders) is looked for only when the strict decode fails or the
    # size is over: scanning megabytes of base64 for it costs more than decoding them
    data, size = _strict_base64(payload, max_bytes)
    if data is None and any(c in payload for c in _SPACES):
        data, size = _strict_base64(_WHITESPACE.sub("", payload), max_bytes)
    if data is None:
        if size > max_bytes:
            raise _too_large(param, size, max_bytes)
        raise bad_param(param, f"The image at '{param}' is not valid base64 data (it is cut short or holds "
                               "characters base64 does not use).", code="invalid_image_url")
    if not data:
        raise bad_param(param, f"The image at '{param}' is empty.", code="invalid_image_format")
    return data, mime


def _strict_base64(payload: str, max_bytes: int) -> tuple[bytes | None, int]:
    """(the bytes, or None when they would be over max_bytes or the base64 is not strict; their
    length as the payload's length says)."""
    size = len(payload) // 4 * 3 - payload[-2:].count("=")
    if size > max_bytes:
        return None, size
    try:
        return base64.b64decode(payload, validate=True), size
    except (binascii.Error, ValueError):
        return None, size


def from_bytes(data: bytes, mime: str, detail: str, param: str, max_bytes: int | None = None) -> ImagePart:
    """The part of an image given as bytes (gRPC); an empty `mime` is read from the data later."""
    limit = DEFAULT_MAX_IMAGE_BYTES if max_bytes is None else max_bytes
    if len(data) > limit:
        raise _too_large(param, len(data), limit)
    if not data:
        raise bad_param(param, f"The image at '{param}' is empty.", code="invalid_image_format")
    return ImagePart(param=param, detail=detail, data=bytes(data), mime_type=_media_type(mime, param) if mime else "")


def turn_content(pieces: Sequence[str | ImagePart]) -> tuple[str, tuple[str | ImagePart, ...]]:
    """(content, parts) of a turn's pieces: the text pieces joined (one per line), and the
    pieces themselves when one is an image (else no parts: a text turn stays as it was)."""
    texts = [p for p in pieces if isinstance(p, str)]
    content = "\n".join(texts) if len(texts) > 1 else "".join(texts)
    has_image = any(isinstance(p, ImagePart) for p in pieces)
    return content, tuple(pieces) if has_image else ()


async def resolve_images(turns: Sequence[ChatTurn], settings: Settings, *, vision: bool, model: str = "",
                         fetcher: ImageFetcher | None = None) -> list[ChatTurn]:
    """The turns with every ImagePart checked and resolved: fetched (http(s) URLs, where the
    config allows), probed (width, height, mime_type set) and within the limits. Turns without
    images come back unchanged. `vision` says whether `model` takes images; `fetcher` is the
    app's (one client session for all requests; a passing one is made and closed if None)."""
    server = settings.server
    found = [(t, k) for t, turn in enumerate(turns) for k, p in enumerate(turn.parts) if isinstance(p, ImagePart)]
    if not found:
        return list(turns)
    first = turns[found[0][0]].parts[found[0][1]]
    if not vision:
        name = f"The model '{model}'" if model else "This model"
        raise bad_param(first.param, f"{name} does not accept images (it has no vision encoder); the image is at "
                                     f"'{first.param}'.", code="images_not_supported")
    limit = server.max_images_per_request
    if len(found) > limit:
        over = turns[found[limit][0]].parts[found[limit][1]]
        raise bad_param(over.param, f"Too many images: at most {limit} per request (server.max_images_per_request), "
                                    f"and '{over.param}' is number {limit + 1}.", code="too_many_images")
    parts = [turns[t].parts[k] for t, k in found]
    own = fetcher is None and any(p.url for p in parts)
    if own:
        fetcher = ImageFetcher(server)
    try:
        done = await asyncio.gather(*(_resolve(p, server, fetcher) for p in parts), return_exceptions=True)
    finally:
        if own:
            await fetcher.close()
    for r in done:
        if isinstance(r, BaseException):
            raise r
    out = [list(t.parts) for t in turns]
    for (t, k), p in zip(found, done):
        out[t][k] = p
    return [dataclasses.replace(turn, parts=tuple(out[t])) if turn.parts else turn for t, turn in enumerate(turns)]


async def _resolve(part: ImagePart, server: ServerSettings, fetcher: ImageFetcher | None) -> ImagePart:
    data, mime = part.data, part.mime_type
    if part.url and not data:
        try:
            data, ctype = await fetcher.fetch(part.url)
        except FetchError as e:
            raise bad_param(part.param, f"The image URL at '{part.param}' was not fetched: {e.message}",
                            code=e.code) from None
        if ctype in MIME_FORMATS:
            mime = _media_type(ctype, part.param)
    if len(data) > server.max_image_bytes:
        raise _too_large(part.param, len(data), server.max_image_bytes)
    loop = asyncio.get_running_loop()
    try:
        w, h, fmt = await loop.run_in_executor(None, functools.partial(probe_image, data,
                                                                       max_pixels=server.max_image_pixels))
    except ImageError as e:
        why = str(e)
        if why.startswith("too large"):
            raise bad_param(part.param, f"The image at '{part.param}' is {why} (server.max_image_pixels).",
                            code="image_too_large") from None
        raise bad_param(part.param, f"The image at '{part.param}' was not read: {why} (the accepted images "
                                    f"are {ACCEPTED}).", code="invalid_image_format") from None
    return dataclasses.replace(part, data=data, mime_type=FORMAT_MIMES.get(fmt, mime), width=w, height=h)


__all__ = ["DETAILS", "FetchError", "ImageFetcher", "check_role", "data_url", "detail_of", "from_bytes",
           "from_url", "resolve_images", "turn_content"]
