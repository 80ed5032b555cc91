"""Translate httpx and socket failures, and imageio HTTP statuses, into ``rhvfs.errors``.

This is the ONE place that catches httpx (and raw transport) exception types.
It owns the mapping table only: it must not retry, log bodies at length, or
know about tickets beyond the text it is given.

    403                      -> TicketGone            (the transfer is over; recreate it)
    404 on dirty extents     -> DirtyUnsupported      (ImageioError)
    5xx                      -> ImageioUnavailable    (transient)
    connection/read errors,
    timeouts                 -> ImageioUnavailable    (transient)
    TLS verification failure -> ImageioError          (permanent: configuration)
    416, 400, other          -> ImageioError(status=...)
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Iterator

import httpx
import trio

from rhvfs.errors import CA_HINT, ImageioError, ImageioUnavailable, RhvfsError, TicketGone


class DirtyUnsupported(ImageioError):
    """Raised when ``extents(context="dirty")`` is asked of a ticket without dirty extents (404)."""

    message = "dirty extents not supported: {detail}"


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Run the body; re-raise any foreign transport error as an ``rhvfs.errors`` type."""
    try:
        yield
    except RhvfsError:
        raise
    except (httpx.TransportError, OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
        cert = _cert_error(exc)
        if cert is not None:
            raise ImageioError(
                f"{what}: TLS verification failed: {cert.verify_message or cert}; {CA_HINT}"
            ) from exc
        if isinstance(exc, httpx.TimeoutException | trio.TooSlowError | TimeoutError):
            raise ImageioUnavailable(f"{what}: timed out") from exc
        text = str(exc) or type(exc).__name__
        raise ImageioUnavailable(f"{what}: {text}") from exc
    except httpx.HTTPError as exc:
        raise ImageioError(f"{what}: {exc}") from exc


# imageio names the ticket in some messages ("Ticket <uuid> not found"); a ticket id is a
# bearer credential for the transfer, so it never reaches an exception text or a log.
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def status_error(status: int, body: str, what: str, *, dirty_context: bool = False) -> ImageioError:
    """The error to raise for an unexpected HTTP ``status`` (``body`` is the server's message)."""
    text = body.strip().splitlines()[0][:300] if body.strip() else f"HTTP {status}"
    text = _UUID_RE.sub("<ticket>", text)
    detail = f"{what}: {text}"
    if status == 403:
        return TicketGone(detail, status=status)
    if status == 404 and dirty_context:
        return DirtyUnsupported(detail, status=status)
    if status >= 500:
        return ImageioUnavailable(detail, status=status)
    return ImageioError(f"{detail} (HTTP {status})", status=status)
