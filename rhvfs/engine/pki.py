"""Download an engine's CA certificate from its pki-resource URL (``rhvfs ca fetch``).

The engine serves its CA at ``PKI_RESOURCE`` (the "CA Certificate" link of its welcome
page). That CA is what TLS verification needs, so this download is the one request of
rhvfs that cannot verify the server: it connects with verification OFF. What makes it
safe is the admin comparing the SHA-256 fingerprint (``EngineCa.fingerprints``, as
``openssl x509 -noout -fingerprint -sha256`` prints it) with the engine's own before
the caller trusts the file. Once downloaded, the engine's certificate is checked
against the CA it served (``EngineCa.verify_error``), with host-name checking, so a CA
that does not sign the engine's certificate is reported rather than trusted silently.

Standard library only (``ssl``, ``http.client``): the SDK and httpx both want the CA
already. Must not: write files, prompt, or send credentials (the resource is public).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import re
import socket
import ssl
import urllib.parse

from rhvfs.errors import EngineError, EngineUnavailable

PKI_RESOURCE = "/ovirt-engine/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA"
#: Bytes of an answer read at most (a CA certificate is a few KiB).
MAX_BODY = 1024 * 1024
_PEM_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----"
)


@dataclasses.dataclass(frozen=True)
class EngineCa:
    """What the engine served: its CA certificate(s) in PEM, their SHA-256 fingerprints,
    and why the engine's own certificate did not verify against them (None: it did)."""

    url: str
    pem: bytes
    fingerprints: tuple[str, ...]
    verify_error: str | None


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as ``AB:CD:...`` (the form of ``openssl x509 -fingerprint``)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def certificates(body: bytes) -> list[bytes]:
    """The DER certificates of the PEM blocks in ``body``; ``EngineError`` when there are
    none or one is not a certificate ssl can load."""
    ders = []
    for match in _PEM_RE.finditer(body):
        pem = b"-----BEGIN CERTIFICATE-----\n" + match.group(1) + b"-----END CERTIFICATE-----\n"
        try:
            ssl.create_default_context(cadata=pem.decode("ascii"))
            ders.append(ssl.PEM_cert_to_DER_cert(pem.decode("ascii")))
        except (ssl.SSLError, ValueError) as e:
            raise EngineError(f"the CA served is not a valid certificate: {e}") from None
    if not ders:
        raise EngineError("the engine's answer holds no PEM certificate")
    return ders


def ca_url(engine_url: str) -> str:
    """The pki-resource URL of the engine at ``engine_url`` (``https://host[:port]``)."""
    return engine_url.rstrip("/") + PKI_RESOURCE


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise EngineError(f"engine_url {url} is not https://HOST: there is no TLS CA to fetch")
    return parts.hostname, parts.port or 443


def _download(url: str, timeout_s: float) -> bytes:
    host, port = _host_port(url)
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # the one unverified request: see the docstring
    conn = http.client.HTTPSConnection(host, port, context=unverified, timeout=timeout_s)
    parts = urllib.parse.urlsplit(url)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}", headers={"Accept": "*/*"})
        response = conn.getresponse()
        body = response.read(MAX_BODY)
    except (OSError, http.client.HTTPException) as e:
        raise EngineUnavailable(f"GET {url}: {e}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise EngineError(f"GET {url}: HTTP {response.status} {response.reason}")
    return body


def _verify_engine(url: str, pem: bytes, timeout_s: float) -> str | None:
    """Why a TLS handshake with the engine, trusting only ``pem``, fails (None: it verifies)."""
    host, port = _host_port(url)
    context = ssl.create_default_context(cadata=pem.decode("ascii"))
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as sock,
            context.wrap_socket(sock, server_hostname=host),
        ):
            return None
    except ssl.SSLCertVerificationError as e:
        return e.verify_message or str(e)
    except (OSError, ssl.SSLError) as e:
        return f"no TLS handshake: {e}"


def fetch_engine_ca(engine_url: str, *, timeout_s: float = 30.0) -> EngineCa:
    """Download the engine's CA (without TLS verification), its fingerprints, and whether the
    engine's certificate verifies against it. ``EngineUnavailable`` when the engine can't be
    reached, ``EngineError`` for any other failure."""
    url = ca_url(engine_url)
    ders = certificates(_download(url, timeout_s))
    pem = "".join(ssl.DER_cert_to_PEM_cert(d) for d in ders).encode("ascii")
    return EngineCa(
        url=url,
        pem=pem,
        fingerprints=tuple(fingerprint(d) for d in ders),
        verify_error=_verify_engine(engine_url, pem, timeout_s),
    )
