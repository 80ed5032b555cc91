"""The one httpx/transport error translation point, and extent/capability parsing."""

from __future__ import annotations

import ssl

import httpx
import pytest
import trio

from rhvfs.errors import (
    DataIntegrityError,
    ImageioError,
    ImageioUnavailable,
    TicketGone,
    is_transient,
)
from rhvfs.imageio import Capabilities, DirtyUnsupported, Extent, parse_extents
from rhvfs.imageio._translate import status_error, translate_errors


@pytest.mark.parametrize(
    ("status", "dirty", "cls", "transient"),
    [
        (403, False, TicketGone, False),
        (404, True, DirtyUnsupported, False),
        (404, False, ImageioError, False),
        (416, False, ImageioError, False),
        (400, False, ImageioError, False),
        (500, False, ImageioUnavailable, True),
        (503, False, ImageioUnavailable, True),
    ],
)
def test_status_mapping(status: int, dirty: bool, cls: type[ImageioError], transient: bool) -> None:
    err = status_error(
        status, "Ticket does not support dirty extents\n", "extents", dirty_context=dirty
    )
    assert type(err) is cls
    assert err.status == status
    assert is_transient(err) is transient
    assert "Ticket does not support dirty extents" in str(err)


@pytest.mark.parametrize(
    ("exc", "cls", "text"),
    [
        (
            httpx.ConnectError("[Errno 111] Connection refused"),
            ImageioUnavailable,
            "Connection refused",
        ),
        (httpx.ReadTimeout("read timed out"), ImageioUnavailable, "timed out"),
        (httpx.RemoteProtocolError("peer closed connection"), ImageioUnavailable, "peer closed"),
        (ConnectionResetError(104, "Connection reset by peer"), ImageioUnavailable, "reset"),
        (trio.BrokenResourceError("broken"), ImageioUnavailable, "broken"),
        (trio.TooSlowError(), ImageioUnavailable, "timed out"),
    ],
)
def test_transport_errors(exc: Exception, cls: type[ImageioError], text: str) -> None:
    with pytest.raises(cls, match=text) as info:
        with translate_errors("GET 0+10"):
            raise exc
    assert info.value.__cause__ is exc
    assert str(info.value).startswith("imageio unavailable: GET 0+10")


def test_ticket_ids_are_redacted_from_server_messages() -> None:
    body = "You are not allowed to access this resource: Ticket 0f3c2b1a-1111-4222-8333-944445555666 not found\n"
    err = status_error(403, body, "GET 0+10")
    assert (
        str(err)
        == "imageio ticket gone: GET 0+10: You are not allowed to access this resource: Ticket <ticket> not found"
    )


def test_certificate_errors_are_permanent() -> None:
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "unable to get local issuer certificate"
    wrapped = httpx.ConnectError("ssl failure")
    wrapped.__cause__ = cert
    with pytest.raises(
        ImageioError, match="TLS verification failed: unable to get local issuer"
    ) as info:
        with translate_errors("OPTIONS"):
            raise wrapped
    assert not is_transient(info.value)


def test_rhvfs_errors_pass_through() -> None:
    with pytest.raises(TicketGone):
        with translate_errors("x"):
            raise TicketGone("gone")


def test_parse_extents_validates_contiguity() -> None:
    doc = [
        {"start": 0, "length": 4096, "zero": False, "hole": False},
        {"start": 4096, "length": 8192, "zero": True, "hole": True},
    ]
    assert parse_extents(doc, context="zero") == [
        Extent(0, 4096, False, False),
        Extent(4096, 8192, True, True),
    ]
    dirty = [{"start": 0, "length": 10, "dirty": True, "zero": False}]
    assert parse_extents(dirty, context="dirty") == [Extent(0, 10, zero=False, dirty=True)]
    for bad in (
        [{"start": 0, "length": 10, "zero": False}, {"start": 11, "length": 5, "zero": True}],
        [{"start": 0, "length": 0, "zero": False}],
        [{"start": 0, "zero": False}],
        {"start": 0},
    ):
        with pytest.raises(DataIntegrityError):
            parse_extents(bad, context="zero")


def test_capabilities() -> None:
    caps = Capabilities.from_json(
        {"features": ["extents", "zero"], "max_readers": 8, "max_writers": 1}
    )
    assert caps == Capabilities(frozenset({"extents", "zero"}), 8, 1)
    assert Capabilities.from_json({"features": ["checksum"]}) == Capabilities(
        frozenset({"checksum"}), 1, 1
    )
    with pytest.raises(DataIntegrityError):
        Capabilities.from_json({"features": "extents"})
