"""The imageio client against the REAL ovirt-imageio daemon (file and qemu-nbd backends).

Starts ``ovirt-imageio`` with a throwaway configuration (no privileges, no
systemd, local service off, control service on a unix socket), installs
tickets through the control socket the way vdsm does, and checks the client's
view byte for byte against the files behind the tickets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rhvfs.errors import ImageioError, ImageioUnavailable, TicketGone
from rhvfs.imageio import BulkMode, DirtyUnsupported, Extent, open_imageio

VENV_BIN = Path(sys.executable).parent
MiB = 1024 * 1024


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self._path)
        self.sock = sock


@dataclasses.dataclass
class Daemon:
    """A running ovirt-imageio daemon: its remote base URL, control socket and CA."""

    base_url: str
    control_socket: str
    cafile: str | None
    workdir: Path

    def _control(
        self, method: str, path: str, body: dict[str, object] | None = None
    ) -> tuple[int, bytes]:
        con = _UnixHTTPConnection(self.control_socket)
        try:
            data = json.dumps(body).encode() if body is not None else None
            con.request(
                method,
                path,
                body=data,
                headers={"Content-Type": "application/json"} if data else {},
            )
            resp = con.getresponse()
            return resp.status, resp.read()
        finally:
            con.close()

    def add_ticket(self, *, url: str, size: int, ops: list[str], dirty: bool = False) -> str:
        """Install a ticket for ``url``; return the transfer URL."""
        ticket_id = str(uuid.uuid4())
        ticket = {
            "uuid": ticket_id,
            "size": size,
            "url": url,
            "ops": ops,
            "timeout": 300,
            "inactivity_timeout": 60,
            "sparse": True,
            "dirty": dirty,
            "transfer_id": "tx-" + ticket_id[:8],
        }
        status, body = self._control("PUT", f"/tickets/{ticket_id}", ticket)
        assert status == 200, body
        return f"{self.base_url}/images/{ticket_id}"

    def remove_ticket(self, transfer_url: str) -> None:
        ticket_id = transfer_url.rstrip("/").rsplit("/", 1)[1]
        status, body = self._control("DELETE", f"/tickets/{ticket_id}")
        assert status == 204, body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def run_daemon(*, tls: bool) -> Iterator[Daemon]:
    """Start ovirt-imageio on a free port of 127.0.0.1; stop it and remove its files on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="iio-"))  # short: unix socket paths are limited
    try:
        run_dir = workdir / "run"
        run_dir.mkdir()
        (workdir / "conf" / "conf.d").mkdir(parents=True)
        port = _free_port()
        cafile = None
        tls_conf = "enable = false\n"
        if tls:
            from rhvfs.sim.pki import ensure_pki

            pki = ensure_pki(workdir / "pki", ["localhost", "127.0.0.1"])
            cafile = str(pki.ca_file)
            tls_conf = f"enable = true\ncert_file = {pki.cert_file}\nkey_file = {pki.key_file}\nca_file = {pki.ca_file}\n"
        sock_path = str(run_dir / "sock")
        (workdir / "conf" / "conf.d" / "99-test.conf").write_text(
            f"""[daemon]
drop_privileges = false
run_dir = {run_dir}
systemd_enable = false
poll_interval = 0.2

[tls]
{tls_conf}
[remote]
host = 127.0.0.1
port = {port}

[local]
enable = false

[control]
transport = unix
socket = {sock_path}

[handlers]
keys = stderr

[logger_root]
handlers = stderr
level = WARNING
"""
        )
        log = open(workdir / "daemon.log", "wb")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            [str(VENV_BIN / "ovirt-imageio"), "-c", str(workdir / "conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        "ovirt-imageio exited: " + (workdir / "daemon.log").read_text()
                    )
                if os.path.exists(sock_path):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        pass
                if time.monotonic() > deadline:
                    raise RuntimeError("ovirt-imageio did not start")
                time.sleep(0.05)
            scheme = "https" if tls else "http"
            host = "localhost" if tls else "127.0.0.1"
            yield Daemon(f"{scheme}://{host}:{port}", sock_path, cafile, workdir)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def nbd_export(image: Path, *, fmt: str, read_only: bool = True) -> Iterator[str]:
    """Export ``image`` with qemu-nbd as vdsm does for raw-format transfers; yield the nbd URL."""
    sock = Path(tempfile.mkdtemp(prefix="nbd-")) / "sock"
    args = [
        "qemu-nbd",
        f"--socket={sock}",
        "--persistent",
        "--shared=8",
        "--export-name=",
        f"--format={fmt}",
    ]
    if fmt == "qcow2":
        args.append("--allocation-depth")
    if read_only:
        args.append("--read-only")
    proc = subprocess.Popen([*args, str(image)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"qemu-nbd failed: {proc.stderr.read() if proc.stderr else ''!r}"
                )
            time.sleep(0.02)
        yield f"nbd:unix:{sock}"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(sock.parent, ignore_errors=True)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """A plain-http daemon: clients of it pass ``secure=False`` (as ``--insecure``)."""
    with run_daemon(tls=False) as d:
        yield d


@pytest.fixture(scope="module")
def tls_daemon() -> Iterator[Daemon]:
    with run_daemon(tls=True) as d:
        yield d


@dataclasses.dataclass(frozen=True)
class RawImage:
    path: Path
    data: bytes


@pytest.fixture(scope="module")
def raw_image(tmp_path_factory: pytest.TempPathFactory) -> RawImage:
    path = tmp_path_factory.mktemp("raw") / "disk.raw"
    data = os.urandom(4 * MiB)
    path.write_bytes(data)
    return RawImage(path, data)


@pytest.fixture(scope="module")
def qcow2_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """An 8 MiB qcow2 with two data areas, an allocated zero cluster and holes; and its raw bytes."""
    d = tmp_path_factory.mktemp("qcow2")
    path = d / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "8M"], check=True)
    subprocess.run(
        [
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            "write -P 0xab 1M 1M",
            "-c",
            "write -P 0xcd 5M 64k",
            "-c",
            "write -z 6M 64k",
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(path), str(d / "ref.raw")],
        check=True,
    )
    return path, (d / "ref.raw").read_bytes()


# -- tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("bulk", ["raw", "httpx"])
async def test_ranged_reads_are_byte_exact(
    daemon: Daemon, raw_image: RawImage, bulk: BulkMode
) -> None:
    data = raw_image.data
    url = daemon.add_ticket(url=f"file://{raw_image.path}", size=len(data), ops=["read"])
    async with open_imageio(url, cafile=None, secure=False, bulk=bulk) as client:
        assert client.capabilities.features == frozenset({"checksum", "extents"})
        assert (client.capabilities.max_readers, client.capabilities.max_writers) == (8, 1)
        assert await client.size() == len(data)
        for offset, size in [
            (0, 1),
            (0, 4 * MiB),
            (12345, 70000),
            (4 * MiB - 3, 3),
            (MiB, 2 * MiB + 17),
        ]:
            buf = bytearray(size)
            await client.read_into(offset, memoryview(buf))
            assert (
                hashlib.sha256(buf).digest()
                == hashlib.sha256(data[offset : offset + size]).digest()
            )
        stats = client.statistics()
        assert stats.get_requests == 5
        assert stats.get_bytes == 1 + 4 * MiB + 70000 + 3 + 2 * MiB + 17


async def test_read_past_the_end_is_416(daemon: Daemon, raw_image: RawImage) -> None:
    url = daemon.add_ticket(url=f"file://{raw_image.path}", size=4 * MiB, ops=["read"])
    async with open_imageio(url, cafile=None, secure=False) as client:
        with pytest.raises(ImageioError) as info:
            await client.read_into(4 * MiB - 10, memoryview(bytearray(20)))
        assert info.value.status == 416
        assert not isinstance(info.value, TicketGone | ImageioUnavailable)
        # the connection pool survives the error
        buf = bytearray(10)
        await client.read_into(4 * MiB - 10, memoryview(buf))
        assert bytes(buf) == raw_image.data[-10:]


async def test_removed_ticket_is_ticket_gone(daemon: Daemon, raw_image: RawImage) -> None:
    url = daemon.add_ticket(url=f"file://{raw_image.path}", size=4 * MiB, ops=["read"])
    async with open_imageio(url, cafile=None, secure=False) as client:
        await client.read_into(0, memoryview(bytearray(4096)))
        daemon.remove_ticket(url)
        with pytest.raises(TicketGone) as info:
            await client.read_into(0, memoryview(bytearray(4096)))
        assert info.value.status == 403
        assert url.rsplit("/", 1)[1] not in str(info.value)  # the ticket id is a credential
        with pytest.raises(TicketGone):
            await client.extents()


async def test_extents_of_a_qcow2_export_with_holes(
    daemon: Daemon, qcow2_image: tuple[Path, bytes]
) -> None:
    path, ref = qcow2_image
    with nbd_export(path, fmt="qcow2") as nbd_url:
        url = daemon.add_ticket(url=nbd_url, size=8 * MiB, ops=["read"])
        async with open_imageio(url, cafile=None, secure=False) as client:
            assert client.capabilities.features == frozenset({"checksum", "extents"})
            assert client.capabilities.max_readers == 8
            extents = await client.extents()
            assert extents == [
                Extent(0, 1 * MiB, zero=True, hole=True),
                Extent(1 * MiB, 1 * MiB, zero=False, hole=False),
                Extent(2 * MiB, 3 * MiB, zero=True, hole=True),
                Extent(5 * MiB, 64 * 1024, zero=False, hole=False),
                Extent(5 * MiB + 64 * 1024, MiB - 64 * 1024, zero=True, hole=True),
                Extent(6 * MiB, 64 * 1024, zero=True, hole=False),
                Extent(6 * MiB + 64 * 1024, 2 * MiB - 64 * 1024, zero=True, hole=True),
            ]
            assert await client.size() == 8 * MiB
            with pytest.raises(DirtyUnsupported) as info:
                await client.extents("dirty")
            assert info.value.status == 404
            buf = bytearray(8 * MiB)
            await client.read_into(0, memoryview(buf))
            assert bytes(buf) == ref


async def test_write_zero_flush_round_trip(daemon: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "upload.raw"
    target.write_bytes(b"\xff" * (2 * MiB))
    url = daemon.add_ticket(url=f"file://{target}", size=2 * MiB, ops=["write"])
    payload = os.urandom(300_000)
    async with open_imageio(url, cafile=None, secure=False) as client:
        assert client.capabilities.features == frozenset({"checksum", "extents", "flush", "zero"})
        await client.write(4096, payload)
        await client.write(MiB, memoryview(payload)[:1000], flush=True)
        await client.zero(500_000, 100_000)
        await client.flush()
        back = bytearray(2 * MiB)
        await client.read_into(0, memoryview(back))
        stats = client.statistics()
    expected = bytearray(b"\xff" * (2 * MiB))
    expected[4096 : 4096 + len(payload)] = payload
    expected[MiB : MiB + 1000] = payload[:1000]
    expected[500_000:600_000] = bytes(100_000)
    assert target.read_bytes() == expected
    assert bytes(back) == expected
    assert (stats.put_requests, stats.put_bytes, stats.patch_requests) == (2, 301_000, 2)


async def test_write_on_read_ticket_is_ticket_gone(daemon: Daemon, raw_image: RawImage) -> None:
    # imageio answers 403 for an operation the ticket does not allow.
    url = daemon.add_ticket(url=f"file://{raw_image.path}", size=4 * MiB, ops=["read"])
    async with open_imageio(url, cafile=None, secure=False) as client:
        with pytest.raises(TicketGone):
            await client.write(0, b"x")
    assert raw_image.path.read_bytes() == raw_image.data  # noqa: ASYNC240


@pytest.mark.parametrize("bulk", ["raw", "httpx"])
async def test_tls_verified_with_cafile(
    tls_daemon: Daemon, raw_image: RawImage, bulk: BulkMode
) -> None:
    data = raw_image.data
    url = tls_daemon.add_ticket(url=f"file://{raw_image.path}", size=len(data), ops=["read"])
    async with open_imageio(url, cafile=tls_daemon.cafile, bulk=bulk) as client:
        buf = bytearray(3 * MiB + 5)
        await client.read_into(1000, memoryview(buf))
        assert bytes(buf) == data[1000 : 1000 + len(buf)]


async def test_tls_unknown_ca_is_refused_unless_insecure(
    tls_daemon: Daemon, raw_image: RawImage
) -> None:
    url = tls_daemon.add_ticket(url=f"file://{raw_image.path}", size=4 * MiB, ops=["read"])
    with pytest.raises(ImageioError, match="TLS verification failed") as info:
        async with open_imageio(url, cafile=None):
            pass
    assert not isinstance(info.value, ImageioUnavailable)  # a configuration problem, not weather
    async with open_imageio(url, cafile=None, secure=False) as client:
        buf = bytearray(100)
        await client.read_into(0, memoryview(buf))
        assert bytes(buf) == raw_image.data[:100]


async def test_unreachable_server_is_transient_and_proxy_is_used(
    daemon: Daemon, raw_image: RawImage
) -> None:
    url = daemon.add_ticket(url=f"file://{raw_image.path}", size=4 * MiB, ops=["read"])
    dead = f"http://127.0.0.1:{_free_port()}/images/" + url.rsplit("/", 1)[1]
    with pytest.raises(ImageioUnavailable):
        async with open_imageio(dead, cafile=None, secure=False):
            pass
    async with open_imageio(dead, cafile=None, secure=False, proxy_url=url) as client:
        assert client.url == url
        buf = bytearray(10)
        await client.read_into(7, memoryview(buf))
        assert bytes(buf) == raw_image.data[7:17]


async def test_image_reader_over_the_daemon_fetches_only_allocated_bytes(
    daemon: Daemon, qcow2_image: tuple[Path, bytes]
) -> None:
    import trio

    from rhvfs.cache import ImageReader
    from rhvfs.retry import RetryPolicy

    path, ref = qcow2_image
    with nbd_export(path, fmt="qcow2") as nbd_url:
        url = daemon.add_ticket(url=nbd_url, size=8 * MiB, ops=["read"])
        async with open_imageio(url, cafile=None, secure=False) as client:
            extents = await client.extents()
            reader = ImageReader(
                client,
                size=await client.size(),
                extents=extents,
                memory_budget=4 * MiB,
                streams=4,
                chunk_size=512 * 1024,
                retry=RetryPolicy(tries=3, interval_s=0.1, timeout_s=10),
            )
            out = bytearray()
            async with trio.open_nursery() as nursery:
                await nursery.start(reader.run)
                while len(out) < len(ref):
                    out += await reader.read(len(out), 128 * 1024, handle_id=1)
                await reader.aclose()
            assert hashlib.sha256(out).hexdigest() == hashlib.sha256(ref).hexdigest()
            stats = reader.statistics()
            assert stats.bytes_fetched == 1 * MiB + 64 * 1024  # the allocated data, nothing more
            assert client.statistics().get_bytes == stats.bytes_fetched
            assert stats.zero_bytes_served == 8 * MiB - stats.bytes_fetched
