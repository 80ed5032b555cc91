"""Translate ovirtsdk4 (and the pycurl errors it wraps) into ``rhvfs.errors``.

This is the ONE place where SDK exception types are caught. It owns the
mapping table; it must not retry, log credentials, or know about entities.

The SDK raises:

- ``AuthError`` for 401/403 and SSO failures,
- ``NotFoundError`` for 404,
- ``ConnectionError`` / ``TimeoutError`` for pycurl connect/resolve/timeout,
- plain ``Error`` with ``.code`` for other HTTP statuses, and plain ``Error``
  without a code for transport failures ("Error while sending HTTP request:
  (56, ...)", "Failed to read response: [...]") and non-XML error bodies
  (a proxy's or application server's HTML page: "isn't the expected XML").

A TLS verification failure (libcurl 51, 60, 83) becomes ``UntrustedCertificate``,
whose text gives OpenSSL's reason and says how to get the engine's CA, instead of
libcurl's "(60, 'SSL certificate ...')".
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import ovirtsdk4

from rhvfs.errors import (
    AuthenticationError,
    Conflict,
    EngineError,
    EngineUnavailable,
    NotFound,
    UntrustedCertificate,
)

# libcurl error numbers that are permanent configuration problems rather than
# network weather: bad URL, unsupported protocol, TLS verification failures.
_PERMANENT_CURL_CODES = frozenset(
    {
        1,  # CURLE_UNSUPPORTED_PROTOCOL
        3,  # CURLE_URL_MALFORMAT
        51,  # CURLE_PEER_FAILED_VERIFICATION (old number)
        58,  # CURLE_SSL_CERTPROBLEM
        59,  # CURLE_SSL_CIPHER
        60,  # CURLE_SSL_CACERT / PEER_FAILED_VERIFICATION
        77,  # CURLE_SSL_CACERT_BADFILE
        83,  # CURLE_SSL_ISSUER_ERROR
    }
)

# libcurl error numbers of a certificate that did not verify (the CA or the host name).
_VERIFY_CURL_CODES = frozenset({51, 60, 83})
# libcurl's texts around OpenSSL's reason, e.g. "SSL certificate OpenSSL verify result:
# unable to get local issuer certificate (20)" or "SSL certificate problem: ...".
_CURL_TEXT_RE = re.compile(r"\(\s*(?:<[^>]*>\s*,\s*)?\d+\s*,\s*(['\"])(.*)\1\s*\)")
_VERIFY_PREFIXES = (
    "ssl certificate openssl verify result:",
    "ssl certificate problem:",
    "ssl:",
)

_CURL_CODE_RE = re.compile(r"\(\s*(?:<[^>]*>\s*,\s*)?(\d+)\s*,")
_TRANSIENT_TEXT = (
    "error while sending http request",
    "failed to read response",
    "isn't the expected xml",
    "isn't the expected json",
)


def _curl_code(exc: BaseException) -> int | None:
    """The libcurl error number behind an SDK transport error, when one can be found."""
    ctx = exc.__context__ or exc.__cause__
    if ctx is not None and type(ctx).__name__ == "error" and ctx.args:
        first = ctx.args[0]
        if isinstance(first, int):
            return first
    match = _CURL_CODE_RE.search(str(exc))
    return int(match.group(1)) if match else None


def _verify_reason(exc: BaseException) -> str:
    """OpenSSL's reason for a failed verification, without libcurl's wrapping."""
    ctx = exc.__context__ or exc.__cause__
    text = ""
    if ctx is not None and type(ctx).__name__ == "error" and len(ctx.args) > 1:
        text = str(ctx.args[1])
    if not text:
        match = _CURL_TEXT_RE.search(str(exc))
        text = match.group(2) if match else "certificate not verified"
    for prefix in _VERIFY_PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
            break
    return " ".join(text.split())[:300]


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:500]


def translate(exc: BaseException, what: str = "") -> EngineError:
    """Return the rhvfs error for an SDK exception (``what`` names the request for messages)."""
    text = _short(exc)
    detail = f"{what}: {text}" if what else text
    code = getattr(exc, "code", None)
    if not isinstance(code, int):
        code = None
    err: EngineError
    if isinstance(exc, ovirtsdk4.AuthError) or code in (401, 403):
        err = AuthenticationError(detail)
    elif isinstance(exc, ovirtsdk4.NotFoundError) or code == 404:
        err = NotFound(detail)
    elif code == 409:
        err = Conflict(detail)
    elif code is not None and (code >= 500 or code in (408, 429)):
        err = EngineUnavailable(detail)
    elif code is not None:
        err = EngineError(detail)
    elif isinstance(exc, ovirtsdk4.ConnectionError | ovirtsdk4.TimeoutError):
        err = EngineUnavailable(detail)
    elif isinstance(exc, ovirtsdk4.Error):
        curl = _curl_code(exc)
        lowered = text.lower()
        if curl in _VERIFY_CURL_CODES:
            reason = _verify_reason(exc)
            err = UntrustedCertificate(f"{what}: {reason}" if what else reason)
        elif curl in _PERMANENT_CURL_CODES:
            err = EngineError(detail)
        elif any(marker in lowered for marker in _TRANSIENT_TEXT):
            err = EngineUnavailable(detail)
        else:
            err = EngineError(detail)
    elif isinstance(exc, ConnectionError | TimeoutError):
        # OSError subclasses leaking from the SDK's socket handling.
        err = EngineUnavailable(detail)
    else:
        err = EngineError(detail)
    err.code = code
    return err


@contextlib.contextmanager
def translate_errors(what: str = "") -> Iterator[None]:
    """Re-raise any ovirtsdk4 error (and stray socket errors) as an ``rhvfs.errors.EngineError``."""
    try:
        yield
    except ovirtsdk4.Error as exc:
        raise translate(exc, what) from exc
    except (ConnectionError, TimeoutError) as exc:
        raise translate(exc, what) from exc
