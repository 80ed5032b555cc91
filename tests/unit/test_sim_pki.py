"""ensure_pki: a CA and a server certificate that TLS clients accept for localhost."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509

from rhvfs.sim.pki import ensure_pki


def test_created_once_and_reused(tmp_path: Path) -> None:
    first = ensure_pki(tmp_path, ["sim.example"])
    ca_pem = first.ca_file.read_bytes()
    cert_pem = first.cert_file.read_bytes()
    again = ensure_pki(tmp_path, ["sim.example"])
    assert again == first
    assert again.ca_file.read_bytes() == ca_pem
    assert again.cert_file.read_bytes() == cert_pem
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    assert first.key_file.stat().st_mode & 0o777 == 0o600

    ca = x509.load_pem_x509_certificate(ca_pem)
    assert ca.subject.rfc4514_string().startswith("O=rhvfs simulator,CN=rhvfs-sim CA")
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "sim.example"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}


def test_new_hostname_reissues_server_cert_from_same_ca(tmp_path: Path) -> None:
    first = ensure_pki(tmp_path, [])
    ca_pem = first.ca_file.read_bytes()
    cert_pem = first.cert_file.read_bytes()
    second = ensure_pki(tmp_path, ["other.example"])
    assert second.ca_file.read_bytes() == ca_pem
    assert second.cert_file.read_bytes() != cert_pem


def test_tls_handshake_verifies_localhost(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path, [])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.cert_file, pki.key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"hello")

    t = threading.Thread(target=serve)
    t.start()
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(5) == b"hello"
    t.join()
    listener.close()
