"""The imageio data-plane client: one transfer URL, control requests on httpx, bulk GETs lean.

Owns the HTTP conversation with one ``/images/<ticket>`` URL: OPTIONS at open,
extents, ranged reads, PUT/PATCH writes and flush. It must not retry (callers
decide: ``rhvfs.cache`` retries reads, sessions recreate transfers on
``TicketGone``) and must not cache image data. Every foreign error goes
through ``_translate``. The URL carries the ticket, a bearer credential: it
is logged only redacted (``rhvfs.redact``), and a plain ``http://`` URL is
refused unless ``secure=False`` (``--insecure``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx

from rhvfs.errors import DataIntegrityError, ImageioError, ImageioUnavailable
from rhvfs.imageio._bulk import BulkPool
from rhvfs.imageio._translate import status_error, translate_errors
from rhvfs.imageio.types import Capabilities, Extent, parse_extents
from rhvfs.redact import redact

log = logging.getLogger(__name__)

MAX_ZERO_SIZE = 128 * 1024 * 1024  # bytes per PATCH zero, as ovirt_imageio.client does
_ZERO_FALLBACK_STEP = 8 * 1024 * 1024

BulkMode = Literal["raw", "httpx"]


@dataclasses.dataclass(frozen=True)
class ClientStats:
    """Counters of one client. Bytes are payload bytes (bodies), not headers."""

    get_requests: int
    get_bytes: int
    put_requests: int
    put_bytes: int
    patch_requests: int


def make_ssl_context(*, cafile: str | None, secure: bool) -> ssl.SSLContext:
    """A client TLS context: verified against ``cafile`` (or the system CAs) unless ``secure=False``."""
    ctx = ssl.create_default_context(cafile=cafile)
    if not secure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ImageioClient:
    """Talks to one imageio ticket URL. Create it with ``open_imageio``."""

    def __init__(
        self,
        url: str,
        *,
        http: httpx.AsyncClient,
        capabilities: Capabilities,
        bulk: BulkPool | None,
    ) -> None:
        self.url = url
        self._http = http
        self._caps = capabilities
        self._bulk = bulk
        self._size: int | None = None
        self._get_requests = 0
        self._get_bytes = 0
        self._put_requests = 0
        self._put_bytes = 0
        self._patch_requests = 0

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def statistics(self) -> ClientStats:
        bulk_requests = self._bulk.requests if self._bulk else 0
        bulk_bytes = self._bulk.bytes_received if self._bulk else 0
        return ClientStats(
            get_requests=self._get_requests + bulk_requests,
            get_bytes=self._get_bytes + bulk_bytes,
            put_requests=self._put_requests,
            put_bytes=self._put_bytes,
            patch_requests=self._patch_requests,
        )

    async def extents(self, context: Literal["zero", "dirty"] = "zero") -> list[Extent]:
        """The image's extents in ``context``; validated contiguous from 0."""
        what = f"extents context={context}"
        with translate_errors(what):
            resp = await self._http.get(self.url + "/extents", params={"context": context})
        if resp.status_code != 200:
            raise status_error(resp.status_code, resp.text, what, dirty_context=context == "dirty")
        try:
            doc = resp.json()
        except ValueError:
            raise DataIntegrityError(f"{what}: response is not JSON") from None
        return parse_extents(doc, context=context)

    async def size(self) -> int:
        """The image size in bytes: the end of the last zero-context extent."""
        if self._size is None:
            extents = await self.extents("zero")
            self._size = extents[-1].end if extents else 0
        return self._size

    async def read_into(self, offset: int, buf: memoryview) -> None:
        """One ranged GET filling all of ``buf`` from ``offset``, or raise."""
        if offset < 0:
            raise ValueError("negative offset")
        if len(buf) == 0:
            return
        if self._bulk is not None:
            await self._bulk.read_into(offset, buf)
        else:
            await self._read_into_httpx(offset, buf)

    async def _read_into_httpx(self, offset: int, buf: memoryview) -> None:
        size = len(buf)
        first, last = offset, offset + size - 1
        what = f"GET {offset}+{size}"
        with translate_errors(what):
            async with self._http.stream(
                "GET", self.url, headers={"Range": f"bytes={first}-{last}"}
            ) as resp:
                if 200 <= resp.status_code < 300 and resp.status_code != 206:
                    raise DataIntegrityError(
                        f"{what}: HTTP {resp.status_code} instead of 206 Partial Content"
                    )
                if resp.status_code != 206:
                    await resp.aread()
                    raise status_error(resp.status_code, resp.text, what)
                length = resp.headers.get("content-length")
                if length is None or not length.isdigit() or int(length) != size:
                    raise DataIntegrityError(f"{what}: Content-Length {length!r}, expected {size}")
                crange = resp.headers.get("content-range", "")
                if not crange.startswith(f"bytes {first}-{last}/"):
                    raise DataIntegrityError(
                        f"{what}: Content-Range {crange!r}, expected bytes {first}-{last}/*"
                    )
                pos = 0
                async for chunk in resp.aiter_raw():
                    end = pos + len(chunk)
                    if end > size:
                        raise DataIntegrityError(f"{what}: body longer than {size} bytes")
                    buf[pos:end] = chunk
                    pos = end
                if pos != size:
                    raise ImageioUnavailable(f"{what}: body ended after {pos} of {size} bytes")
        self._get_requests += 1
        self._get_bytes += size

    async def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, flush: bool = False
    ) -> None:
        """PUT ``data`` at ``offset`` (``Content-Range: bytes a-b/*``); flushes only when asked."""
        size = len(data)
        if size == 0:
            return
        what = f"PUT {offset}+{size}"
        params = {"flush": "y" if flush else "n"} if "flush" in self._caps.features else {}
        body = data if isinstance(data, bytes) else bytes(data)
        with translate_errors(what):
            resp = await self._http.put(
                self.url,
                params=params,
                content=body,
                headers={"Content-Range": f"bytes {offset}-{offset + size - 1}/*"},
            )
        if resp.status_code != 200:
            raise status_error(resp.status_code, resp.text, what)
        self._put_requests += 1
        self._put_bytes += size

    async def zero(self, offset: int, size: int, *, flush: bool = False) -> None:
        """Zero ``size`` bytes at ``offset`` (PATCH zero, at most 128 MiB per request)."""
        if "zero" not in self._caps.features:
            await self._zero_by_writing(offset, size, flush=flush)
            return
        end = offset + size
        pos = offset
        while pos < end:
            step = min(MAX_ZERO_SIZE, end - pos)
            last = pos + step == end
            await self._patch({"op": "zero", "offset": pos, "size": step, "flush": flush and last})
            pos += step

    async def _zero_by_writing(self, offset: int, size: int, *, flush: bool) -> None:
        zeros = bytes(min(_ZERO_FALLBACK_STEP, size))
        end = offset + size
        pos = offset
        while pos < end:
            step = min(len(zeros), end - pos)
            await self.write(pos, memoryview(zeros)[:step], flush=flush and pos + step == end)
            pos += step

    async def flush(self) -> None:
        """Ask the server to flush written data to storage (no-op on servers without ``flush``)."""
        if "flush" in self._caps.features:
            await self._patch({"op": "flush"})

    async def _patch(self, msg: dict[str, Any]) -> None:
        what = f"PATCH {msg['op']}"
        with translate_errors(what):
            resp = await self._http.patch(
                self.url,
                content=json.dumps(msg).encode(),
                headers={"Content-Type": "application/json"},
            )
        if resp.status_code != 200:
            raise status_error(resp.status_code, resp.text, what)
        self._patch_requests += 1

    async def aclose(self) -> None:
        try:
            if self._bulk is not None:
                await self._bulk.aclose()
        finally:
            await self._http.aclose()


async def _options(http: httpx.AsyncClient, url: str) -> Capabilities:
    with translate_errors("OPTIONS"):
        resp = await http.options(url)
    if resp.status_code in (204, 405):
        return Capabilities()
    if resp.status_code != 200:
        raise status_error(resp.status_code, resp.text, "OPTIONS")
    try:
        return Capabilities.from_json(resp.json())
    except ValueError:
        raise DataIntegrityError("OPTIONS: response is not JSON") from None


@contextlib.asynccontextmanager
async def open_imageio(
    transfer_url: str,
    *,
    cafile: str | None,
    secure: bool = True,
    proxy_url: str | None = None,
    connections: int = 4,
    timeout: float = 60.0,  # noqa: ASYNC109 (seconds per request, named by the contract)
    bulk: BulkMode = "raw",
) -> AsyncIterator[ImageioClient]:
    """Connect to ``transfer_url`` (falling back to ``proxy_url`` when it is unreachable).

    ``connections``: keep-alive connections for reads (capped by the server's
    ``max_readers``). ``timeout``: seconds per request. ``bulk``: ``"raw"``
    (lean trio sockets, the default, chosen by bench/bench_imageio.py) or
    ``"httpx"`` for ranged GETs. With ``secure`` (the default) an ``http://``
    ``transfer_url`` or ``proxy_url`` raises ``ImageioError``: the ticket and the
    disk's bytes would cross the network in clear.
    """
    if secure:
        for candidate in (transfer_url, proxy_url):
            if candidate and candidate.startswith("http://"):
                raise ImageioError(
                    f"imageio URL {redact(candidate)} is not https; refusing it "
                    "(--insecure / secure = no allows it)"
                )
    ssl_context = make_ssl_context(cafile=cafile, secure=secure)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    http = httpx.AsyncClient(
        verify=ssl_context,
        timeout=httpx.Timeout(timeout),
        limits=limits,
        headers={"User-Agent": "rhvfs"},
    )
    client: ImageioClient | None = None
    try:
        url = transfer_url.rstrip("/")
        try:
            caps = await _options(http, url)
        except ImageioUnavailable as exc:
            if not proxy_url:
                raise
            log.info("imageio %s unreachable (%s); using the proxy", redact(url), exc)
            url = proxy_url.rstrip("/")
            caps = await _options(http, url)
        pool = None
        if bulk == "raw":
            pool = BulkPool(
                url,
                ssl_context=ssl_context if url.startswith("https:") else None,
                connections=max(1, min(connections, caps.max_readers)),
                timeout_s=timeout,
            )
        elif bulk != "httpx":
            raise ValueError(f"bulk must be 'raw' or 'httpx', not {bulk!r}")
        client = ImageioClient(url, http=http, capabilities=caps, bulk=pool)
        log.debug("imageio %s: %s", redact(url), caps)
        yield client
    finally:
        if client is not None:
            await client.aclose()
        else:
            await http.aclose()
