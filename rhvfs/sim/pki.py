"""The simulator's PKI: one CA and one server certificate signed by it.

Owns the files ``ca.pem``, ``ca.key``, ``server.pem`` and ``server.key`` in a
directory. They are created once and reused on restart, so clients that saved
the CA (``ovirt-img.conf``, the SDK's ``ca_file``) keep trusting a restarted
simulator. Must not import anything from the client side of rhvfs.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

_DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
_KEY_BITS = 2048
_VALID_DAYS = 3650


@dataclass(frozen=True)
class Pki:
    """Paths of the CA certificate and of the server's certificate and key (PEM)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def ensure_pki(dir: Path, hostnames: list[str]) -> Pki:
    """Create (once) or reuse a CA and a server certificate in ``dir``.

    The server certificate names localhost, 127.0.0.1, ::1 and ``hostnames``
    as subject alternative names. An existing server certificate that lacks
    one of the requested names is reissued from the existing CA.
    """
    dir.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_file=dir / "ca.pem",
        cert_file=dir / "server.pem",
        key_file=dir / "server.key",
    )
    ca_key_file = dir / "ca.key"
    names = _unique([*_DEFAULT_NAMES, *hostnames])

    if pki.ca_file.exists() and ca_key_file.exists():
        ca_cert = x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
        if not isinstance(ca_key, rsa.RSAPrivateKey):
            raise ValueError(f"{ca_key_file}: not an RSA key")
    else:
        ca_key = _new_key()
        ca_cert = _make_ca(ca_key)
        _write_private(ca_key_file, _key_pem(ca_key))
        pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        log.info("created simulator CA in %s", dir)
        # A new CA invalidates any old server certificate.
        pki.cert_file.unlink(missing_ok=True)

    if pki.cert_file.exists() and pki.key_file.exists():
        cert = x509.load_pem_x509_certificate(pki.cert_file.read_bytes())
        if set(names) <= set(_san_names(cert)) and cert.issuer == ca_cert.subject:
            return pki

    key = _new_key()
    cert = _make_server_cert(key, ca_key, ca_cert, names)
    _write_private(pki.key_file, _key_pem(key))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("issued simulator server certificate for %s", ", ".join(names))
    return pki


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n))


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(days=1), now + datetime.timedelta(days=_VALID_DAYS)


def _make_ca(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"rhvfs-sim CA {socket.gethostname()}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rhvfs simulator"),
        ]
    )
    not_before, not_after = _validity()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _san_names(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    dns = ext.value.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in ext.value.get_values_for_type(x509.IPAddress)]
    return [*dns, *ips]


def _make_server_cert(
    key: rsa.RSAPrivateKey,
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    names: list[str],
) -> x509.Certificate:
    not_before, not_after = _validity()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
