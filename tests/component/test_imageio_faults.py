"""The client and ImageReader through the simulator's data plane with injected network faults.

``rhvfs.sim.dataplane.DataPlane(proxy=True)`` puts a byte-forwarding fault proxy
in front of the real ovirt-imageio daemon: connections cut mid-body and
responses held back past the client's timeout must be retried by the reader,
and what comes out must still be exactly the image.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from rhvfs.cache import ImageReader
from rhvfs.errors import ImageioUnavailable
from rhvfs.imageio import open_imageio
from rhvfs.retry import RetryPolicy
from rhvfs.sim.dataplane import DataPlane

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    """A plain-http data plane: clients of it pass ``secure=False`` (as ``--insecure``)."""
    dp = DataPlane(tmp_path_factory.mktemp("dataplane"), host="127.0.0.1", pki=None, proxy=True)
    dp.start()
    try:
        yield dp
    finally:
        dp.stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("img") / "disk.raw"
    data = os.urandom(8 * MiB)
    path.write_bytes(data)
    return path, data


def ticket(plane: DataPlane, path: Path, size: int) -> str:
    ticket_id = str(uuid.uuid4())
    plane.add_ticket(ticket_id=ticket_id, url=f"file://{path}", size=size, ops=["read"])
    return plane.image_url(ticket_id)


def make_reader(client: object, size: int) -> ImageReader:
    from rhvfs.imageio import Extent

    return ImageReader(
        client,  # type: ignore[arg-type]
        size=size,
        extents=[Extent(0, size, zero=False)],
        memory_budget=8 * MiB,
        streams=2,
        chunk_size=2 * MiB,
        retry=RetryPolicy(tries=4, interval_s=0.05, timeout_s=30),
    )


async def read_all(reader: ImageReader, size: int) -> bytes:
    out = bytearray()
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        while len(out) < size:
            out += await reader.read(len(out), 256 * 1024, handle_id=1)
        await reader.aclose()
    return bytes(out)


async def test_connection_cut_mid_body_is_retried(
    plane: DataPlane, image: tuple[Path, bytes]
) -> None:
    path, data = image
    url = ticket(plane, path, len(data))
    assert plane.fault_proxy is not None
    async with open_imageio(url, cafile=None, secure=False, connections=2) as client:
        # OPTIONS is done; the next connections accepted are the bulk pool's.
        plane.fault_proxy.drop_after(MiB + 12345, times=2)
        dropped_before = plane.fault_proxy.stats().dropped
        reader = make_reader(client, len(data))
        got = await read_all(reader, len(data))
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    stats = reader.statistics()
    assert plane.fault_proxy.stats().dropped - dropped_before == 2
    assert stats.retries == 2
    assert stats.bytes_fetched == len(data)  # failed attempts are not counted as fetched
    assert stats.requests == 4 + 2


async def test_response_held_past_timeout_is_retried(
    plane: DataPlane, image: tuple[Path, bytes]
) -> None:
    path, data = image
    url = ticket(plane, path, len(data))
    assert plane.fault_proxy is not None
    async with open_imageio(url, cafile=None, secure=False, connections=2, timeout=0.5) as client:
        plane.fault_proxy.delay(3.0, times=1)
        reader = make_reader(client, len(data))
        got = await read_all(reader, len(data))
    assert got == data
    assert reader.statistics().retries == 1


async def test_client_reports_a_cut_as_transient(
    plane: DataPlane, image: tuple[Path, bytes]
) -> None:
    path, data = image
    url = ticket(plane, path, len(data))
    assert plane.fault_proxy is not None
    async with open_imageio(url, cafile=None, secure=False, connections=1) as client:
        plane.fault_proxy.drop_after(100_000, times=1)
        buf = bytearray(MiB)
        with pytest.raises(ImageioUnavailable, match="connection closed after|reset"):
            await client.read_into(0, memoryview(buf))
        await client.read_into(0, memoryview(buf))  # a fresh connection works
        assert bytes(buf) == data[:MiB]
