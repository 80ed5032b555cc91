"""The pure parts of ``rhvfs.engine.pki``: PEM parsing, fingerprints, the URL."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import pytest

from rhvfs.engine.pki import ca_url, certificates, fetch_engine_ca, fingerprint
from rhvfs.errors import EngineError
from rhvfs.sim.pki import ensure_pki


def test_certificates_and_fingerprints_of_a_pem_answer(tmp_path: Path) -> None:
    pem = ensure_pki(tmp_path, []).ca_file.read_bytes()
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    assert certificates(b"junk before\n" + pem + b"\n" + pem) == [der, der]
    digest = hashlib.sha256(der).hexdigest().upper()
    assert fingerprint(der) == ":".join(digest[i : i + 2] for i in range(0, 64, 2))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>Login</html>", "holds no PEM certificate"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "not a valid certificate",
        ),
    ],
)
def test_an_answer_without_a_certificate_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        certificates(body)


def test_url_and_scheme() -> None:
    assert ca_url("https://engine.example.com/") == (
        "https://engine.example.com/ovirt-engine/services/pki-resource"
        "?resource=ca-certificate&format=X509-PEM-CA"
    )
    with pytest.raises(EngineError, match="not https://HOST"):
        fetch_engine_ca("http://engine.example.com")
