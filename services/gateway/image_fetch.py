"""Fetching http(s) image URLs, for configs that allow it (server.fetch_image_urls).

A server that fetches any URL a client names can be made to reach what only it can reach (the
board's admin page, a cloud metadata address, the other services), so a fetch goes ahead only
when every one of these holds, for the first URL and for each redirect (at most MAX_REDIRECTS,
followed here one by one, never by aiohttp):
- the scheme is http or https, and the URL carries no user name or password;
- the host is on server.image_url_hosts (a name, "*.name" for its subdomains, or an IP);
- every address the host resolves to is public: not loopback, private, link-local, shared,
  multicast, reserved or unspecified. The check runs inside the connector's resolver, on the
  very addresses it connects to (no DNS cache), so a name that resolves differently the second
  time is caught too; IP literals are checked before the request.
The answer must be 200 with an image/* content type, at most server.max_image_bytes long
(counted while it streams, not trusted from Content-Length), and arrive, redirects included,
within server.image_fetch_timeout_s. Bodies are not decompressed (no gzip bombs), no cookies
are kept and no proxy from the environment is used.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Callable
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from npuflow.config import ServerSettings

MAX_REDIRECTS = 3
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """An image URL that was refused or could not be fetched; `code` is the API error code
    (unsupported_image_url: refused by policy; invalid_image_url: the fetch failed;
    image_too_large; invalid_image_format: the answer is not an image)."""

    def __init__(self, message: str, code: str = "invalid_image_url"):
        super().__init__(message)
        self.message = message
        self.code = code


class _AddressRefused(OSError):
    """Raised inside the resolver (aiohttp wraps OSErrors of its resolver)."""


def shown(url: str, limit: int = 80) -> str:
    """A URL as error messages show it: cut, so a client's long URL does not fill the message."""
    return url if len(url) <= limit else url[:limit - 3] + "..."


def is_public(ip: IpAddress) -> bool:
    """A global unicast address. An IPv6 address that holds an IPv4 one (IPv4-mapped, 6to4,
    Teredo) is public only if that one is too."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(ip.ipv4_mapped)
        held = [ip.sixtofour, *(ip.teredo or ())]
        if any(v4 is not None and not is_public(v4) for v4 in held):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local
                                 or ip.is_private or ip.is_unspecified)


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """`host` (lower case, no trailing dot) is on the list: equal to an entry, or a subdomain of
    a "*.name" entry (not "name" itself)."""
    for entry in allowed:
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return True
        elif host == entry:
            return True
    return False


class _CheckedResolver(AbstractResolver):
    """The system resolver, refusing a host when any of its addresses is not allowed."""

    def __init__(self, allowed: Callable[[IpAddress], bool]):
        self._inner = DefaultResolver()
        self._allowed = allowed

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for r in found:
            ip = ipaddress.ip_address(r["host"].split("%", 1)[0])
            if not self._allowed(ip):
                raise _AddressRefused(f"the host {host} resolves to {ip}, which is not a public address")
        return found

    async def close(self) -> None:
        await self._inner.close()


class ImageFetcher:
    """Fetches image URLs under the server's rules; one per app (it keeps one client session).

    `_trusted_networks` is for tests only (a local test server is on loopback, which is never
    fetched from otherwise); no setting reaches it."""

    def __init__(self, server: ServerSettings, *, _trusted_networks: tuple[str, ...] = ()):
        self.enabled = server.fetch_image_urls
        self.hosts = server.image_url_hosts
        self.max_bytes = server.max_image_bytes
        self.timeout_s = server.image_fetch_timeout_s
        self._trusted = tuple(ipaddress.ip_network(n) for n in _trusted_networks)
        self._session: aiohttp.ClientSession | None = None

    def address_allowed(self, ip: IpAddress) -> bool:
        return is_public(ip) or any(ip in n for n in self._trusted if ip.version == n.version)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=_CheckedResolver(self.address_allowed), use_dns_cache=False,
                                             limit=16)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  auto_decompress=False, trust_env=False,
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_url(self, url: str) -> None:
        """FetchError unless `url` may be fetched (scheme, credentials, host list, IP literal)."""
        if not self.enabled:
            raise FetchError(f"Image URLs are not fetched by this server (server.fetch_image_urls is off): send "
                             f"the image as a data: URL instead of {shown(url)}.", "unsupported_image_url")
        try:
            u = urlsplit(url)
            host = (u.hostname or "").rstrip(".")
            u.port   # noqa: B018 (raises ValueError for a bad port)
        except ValueError:
            raise FetchError(f"The image URL {shown(url)} is not a valid URL.") from None
        if u.scheme not in ("http", "https") or not host:
            raise FetchError(f"The image URL {shown(url)} is not an http(s) URL with a host.", "unsupported_image_url")
        if u.username is not None or u.password is not None:
            raise FetchError(f"The image URL {shown(url)} holds a user name or password, which is not sent.",
                             "unsupported_image_url")
        if not host_allowed(host, self.hosts):
            raise FetchError(f"Images are not fetched from {host}: it is not in server.image_url_hosts.",
                             "unsupported_image_url")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return    # a name: the resolver checks its addresses
        if not self.address_allowed(ip):
            raise FetchError(f"Images are not fetched from {host}: not a public address.", "unsupported_image_url")

    async def fetch(self, url: str) -> tuple[bytes, str]:
        """(the body, its content type) of an image URL, following at most MAX_REDIRECTS redirects,
        each checked like the first; FetchError for anything refused or failed."""
        try:
            return await asyncio.wait_for(self._fetch(url), self.timeout_s)
        except asyncio.TimeoutError:
            raise FetchError(f"The image at {shown(url)} did not arrive within {self.timeout_s:g} seconds "
                             "(server.image_fetch_timeout_s).") from None

    async def _fetch(self, url: str) -> tuple[bytes, str]:
        first = url
        for _ in range(MAX_REDIRECTS + 1):
            self.check_url(url)
            try:
                async with self._client().get(url, allow_redirects=False,
                                              headers={"Accept": "image/*", "Accept-Encoding": "identity"}) as r:
                    if r.status in _REDIRECTS:
                        where = r.headers.get("Location", "")
                        if not where:
                            raise FetchError(f"The image URL {shown(url)} redirects nowhere (HTTP {r.status}).")
                        url = urljoin(url, where)
                        continue
                    if r.status != 200:
                        raise FetchError(f"The image URL {shown(url)} answered HTTP {r.status}.")
                    return await self._body(r, url), r.content_type
            except _AddressRefused as e:   # a resolver's error that aiohttp did not wrap
                raise FetchError(f"Images are not fetched from {shown(url)}: {e}.", "unsupported_image_url") from None
            except aiohttp.ClientConnectorError as e:
                if isinstance(e.os_error, _AddressRefused):
                    raise FetchError(f"Images are not fetched from {shown(url)}: {e.os_error}.",
                                     "unsupported_image_url") from None
                raise FetchError(f"The image URL {shown(url)} could not be reached.") from None
            except (aiohttp.ClientError, ValueError) as e:
                why = str(e).split("\n", 1)[0][:120] or type(e).__name__
                raise FetchError(f"The image at {shown(url)} could not be fetched ({why}).") from None
        raise FetchError(f"The image URL {shown(first)} redirects more than {MAX_REDIRECTS} times.")

    async def _body(self, r: aiohttp.ClientResponse, url: str) -> bytes:
        if not r.content_type.startswith("image/"):
            raise FetchError(f"The URL {shown(url)} is not an image (its content type is "
                             f"{r.content_type or 'not given'}).", "invalid_image_format")
        too_large = FetchError(f"The image at {shown(url)} is larger than {self.max_bytes} bytes "
                               "(server.max_image_bytes).", "image_too_large")
        if r.content_length is not None and r.content_length > self.max_bytes:
            raise too_large
        got = bytearray()
        async for chunk in r.content.iter_chunked(_CHUNK):
            got += chunk
            if len(got) > self.max_bytes:
                raise too_large
        return bytes(got)
