"""The SDK -> rhvfs.errors translation table (rhvfs.engine._translate)."""

from __future__ import annotations

import ovirtsdk4
import pytest

from rhvfs.engine._translate import translate, translate_errors
from rhvfs.errors import (
    AuthenticationError,
    Conflict,
    EngineError,
    EngineUnavailable,
    NotFound,
    UntrustedCertificate,
    is_transient,
)


def _sdk_error(cls: type[ovirtsdk4.Error], msg: str, code: int | None) -> ovirtsdk4.Error:
    err = cls(msg)
    err.code = code
    return err


@pytest.mark.parametrize(
    ("cls", "msg", "code", "expected", "transient"),
    [
        (ovirtsdk4.AuthError, "HTTP response code is 401.", 401, AuthenticationError, False),
        (ovirtsdk4.AuthError, "HTTP response code is 403.", 403, AuthenticationError, False),
        (
            ovirtsdk4.AuthError,
            "Error during SSO authentication access_denied : nope",
            None,
            AuthenticationError,
            False,
        ),
        (ovirtsdk4.NotFoundError, "HTTP response code is 404.", 404, NotFound, False),
        (
            ovirtsdk4.Error,
            'Fault reason is "Operation Failed". HTTP response code is 409.',
            409,
            Conflict,
            False,
        ),
        (ovirtsdk4.Error, "HTTP response code is 500.", 500, EngineUnavailable, True),
        (ovirtsdk4.Error, "HTTP response code is 503.", 503, EngineUnavailable, True),
        (ovirtsdk4.Error, "HTTP response code is 400.", 400, EngineError, False),
        (
            ovirtsdk4.ConnectionError,
            "Error while sending HTTP request: (7, 'Failed to connect')",
            None,
            EngineUnavailable,
            True,
        ),
        (
            ovirtsdk4.TimeoutError,
            "Error while sending HTTP request: (28, 'Operation timed out')",
            None,
            EngineUnavailable,
            True,
        ),
        (
            ovirtsdk4.Error,
            "Error while sending HTTP request: (56, 'Recv failure: Connection reset by peer')",
            None,
            EngineUnavailable,
            True,
        ),
        (
            ovirtsdk4.Error,
            "Error while sending HTTP request: (52, 'Empty reply from server')",
            None,
            EngineUnavailable,
            True,
        ),
        (
            ovirtsdk4.Error,
            "Failed to read response: [(<pycurl.Curl object at 0x7f>, 55, 'Send failure')]",
            None,
            EngineUnavailable,
            True,
        ),
        (
            ovirtsdk4.Error,
            "The response content type 'text/html' isn't the expected XML",
            None,
            EngineUnavailable,
            True,
        ),
        (
            ovirtsdk4.Error,
            "Error while sending HTTP request: (60, 'SSL certificate problem: unable to get local issuer')",
            None,
            UntrustedCertificate,
            False,
        ),
        (ovirtsdk4.Error, "The CA file '/nope.pem' doesn't exist", None, EngineError, False),
    ],
)
def test_translation_table(cls, msg, code, expected, transient) -> None:
    err = translate(_sdk_error(cls, msg, code), "get vm X")
    assert type(err) is expected
    assert is_transient(err) is transient
    assert err.code == code
    assert "get vm X" in str(err)


def test_context_manager_chains_the_sdk_error() -> None:
    original = _sdk_error(ovirtsdk4.NotFoundError, "HTTP response code is 404.", 404)
    with pytest.raises(NotFound) as info, translate_errors("get disk D"):
        raise original
    assert info.value.__cause__ is original
    assert str(info.value) == "not found: get disk D: HTTP response code is 404."


def test_pycurl_context_decides_permanent_tls_failure() -> None:
    import pycurl

    try:
        try:
            raise pycurl.error(60, "SSL peer certificate or SSH remote key was not OK")
        except pycurl.error:
            raise ovirtsdk4.Error("Error while sending HTTP request: boom") from None
    except ovirtsdk4.Error as exc:
        err = translate(exc)
    assert type(err) is UntrustedCertificate
    assert not is_transient(err)
    assert str(err).startswith(
        "TLS verification of the engine failed: SSL peer certificate or SSH remote key was not OK;"
    )


def test_a_certificate_that_does_not_verify_says_how_to_get_the_ca() -> None:
    """libcurl's "(60, 'SSL certificate ...')" becomes OpenSSL's reason and the way out."""
    import pycurl

    text = "SSL certificate OpenSSL verify result: unable to get local issuer certificate (20)"
    try:
        try:
            raise pycurl.error(60, text)
        except pycurl.error as e:
            raise ovirtsdk4.Error(f"Error while sending HTTP request: {e}") from None
    except ovirtsdk4.Error as exc:
        err = translate(exc, "list vms")
    assert str(err) == (
        "TLS verification of the engine failed: list vms: unable to get local issuer "
        "certificate (20); if the engine's CA is not trusted yet, get it with "
        "`rhvfs ca fetch -c SECTION` (compare the fingerprint it shows) or set cafile"
    )
    assert "\n" not in str(err) and "(60" not in str(err)
    assert isinstance(err, EngineError) and not is_transient(err)


def test_stray_socket_errors_are_transient() -> None:
    with pytest.raises(EngineUnavailable), translate_errors("list vms"):
        raise ConnectionResetError("reset")


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(ValueError), translate_errors("x"):
        raise ValueError("not ours")
