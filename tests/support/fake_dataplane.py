"""Fakes of the data plane over ``FakeEngine`` volumes: imageio clients, the block reader, uploads.

- ``FakeClient``: an imageio download client of one transfer (``fake://<id>``);
  403 (``TicketGone``) once the transfer is over, and an idle transfer dies
  after its inactivity timeout (trio's clock). One data extent.
- ``DirtyClient``: the same, with per-64 KiB-cluster extents (``zero``;
  ``hole`` for clusters outside the layer of a shallow transfer) and the
  ``dirty`` context of a backup's transfer.
- ``FakeDataPlane``: ``imageio_opener`` + ``reader_factory`` for the backup and
  incremental managers, recording the clients and readers it made.
- ``FakeReader``: the block reader (``ReaderLike``) reading straight through.
- ``FakeUpload`` / ``upload_opener``: the restore side, writing into the
  transfer's volume; like ``FakeClient``, 403 once the transfer is over, and
  an idle upload dies after its inactivity timeout (every request, a flush
  too, counts as activity, as imageio's ticket ``idle_time`` does).

Must not: model the engine (``tests.support.fake_engine`` does).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace
from typing import Any

import trio

from rhvfs.errors import ImageioError, TicketGone
from rhvfs.sessions.core._ports import BlockSource
from tests.support.fake_engine import CLUSTER, FakeEngine


class FakeClient:
    """An imageio client over one fake transfer; 403 (TicketGone) once the transfer is over."""

    def __init__(self, engine: FakeEngine, transfer_id: str) -> None:
        self.engine = engine
        self.transfer_id = transfer_id
        self.capabilities = SimpleNamespace(
            max_readers=8, max_writers=1, features=frozenset({"extents"})
        )
        self.reads: list[tuple[int, int]] = []
        self.closed = False

    def _check(self) -> None:
        t = self.engine.transfers[self.transfer_id]
        idle = trio.current_time() - self.engine.transfer_last_use[self.transfer_id]
        if t.phase == "transferring" and t.inactivity_timeout and idle > t.inactivity_timeout:
            self.engine.expire(self.transfer_id)  # the engine cancels idle transfers
            t = self.engine.transfers[self.transfer_id]
        if t.phase != "transferring":
            raise TicketGone(f"ticket of transfer {self.transfer_id} is gone")
        self.engine.transfer_last_use[self.transfer_id] = trio.current_time()

    def _volume(self) -> bytearray:
        return self.engine.volumes[self.engine.transfer_volume[self.transfer_id]]

    def _holes(self) -> set[int]:
        """Clusters a shallow transfer does not expose (they read as zeroes, like a hole
        of a qcow2 layer exported without its backing chain)."""
        if self.transfer_id not in self.engine.transfer_shallow:
            return set()
        return self.engine.layer_holes(self.engine.transfer_volume[self.transfer_id]) or set()

    async def extents(self) -> list[Any]:
        await trio.lowlevel.checkpoint()
        self._check()
        return [SimpleNamespace(start=0, length=len(self._volume()), zero=False, hole=False)]

    async def read_into(self, offset: int, buf: memoryview) -> None:
        await trio.sleep(0.01)
        self._check()
        data = bytearray(self._volume()[offset : offset + len(buf)])
        assert len(data) == len(buf)
        for c in self._holes():
            start, end = max(offset, c * CLUSTER), min(offset + len(buf), (c + 1) * CLUSTER)
            if start < end:
                data[start - offset : end - offset] = bytes(end - start)
        buf[:] = data
        self.reads.append((offset, len(buf)))


@dataclasses.dataclass
class Ext:
    start: int
    length: int
    zero: bool
    dirty: bool = False
    hole: bool = False


class DirtyClient(FakeClient):
    """A client with per-cluster zero extents and, for backup transfers, dirty extents."""

    async def extents(self, context: str = "zero") -> list[Any]:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        self._check()
        vol = self._volume()
        out: list[Any] = []

        def add(start: int, length: int, **flags: bool) -> None:
            if (
                out
                and all(getattr(out[-1], k) == v for k, v in flags.items())
                and out[-1].start + out[-1].length == start
            ):
                out[-1] = dataclasses.replace(out[-1], length=out[-1].length + length)
            else:
                out.append(Ext(start, length, **flags))

        dirty: set[int] | None = None
        if context == "dirty":
            item = self.engine.transfer_backup.get(self.transfer_id)
            if item is None or item[1] not in self.engine.backup_dirty[item[0]]:
                raise ImageioError("Ticket does not support dirty extents", status=404)
            dirty = self.engine.backup_dirty[item[0]][item[1]]
        holes = self._holes()
        for c in range(0, -(-len(vol) // CLUSTER)):
            chunk = vol[c * CLUSTER : (c + 1) * CLUSTER]
            zero = not any(chunk)
            if c in holes:
                add(c * CLUSTER, len(chunk), zero=True, dirty=False, hole=True)
            elif dirty is None:
                add(c * CLUSTER, len(chunk), zero=zero, dirty=False, hole=False)
            else:
                add(c * CLUSTER, len(chunk), zero=zero, dirty=c in dirty, hole=False)
        return out


class FakeDataPlane:
    """``imageio_opener`` + ``reader_factory`` for the managers, recording what was opened."""

    def __init__(self, engine: FakeEngine, *, client: type[FakeClient] = FakeClient) -> None:
        self.engine = engine
        self.client_class = client
        self.clients: list[FakeClient] = []
        self.readers: list[FakeReader] = []
        self.crash_next_reader = False

    def opener(self, url: str) -> Any:
        @contextlib.asynccontextmanager
        async def cm() -> AsyncIterator[FakeClient]:
            client = self.client_class(self.engine, url.removeprefix("fake://"))
            self.clients.append(client)
            try:
                yield client
            finally:
                client.closed = True

        return cm()

    async def reader_factory(
        self,
        source: BlockSource,
        *,
        size: int,
        extents: Sequence[Any],
        memory_budget: int,
        streams: int,
        nursery: Any,
    ) -> FakeReader:
        reader = FakeReader(source, size=size, memory_budget=memory_budget, streams=streams)
        self.readers.append(reader)
        if self.crash_next_reader:
            self.crash_next_reader = False

            async def worker_bug() -> None:
                await trio.sleep(1)
                raise RuntimeError("bug in a prefetch worker")

            nursery.start_soon(worker_bug)
        return reader


class FakeReader:
    """The block reader: every read goes straight to the source."""

    def __init__(self, source: BlockSource, *, size: int, memory_budget: int, streams: int) -> None:
        self.source = source
        self.size = size
        self.memory_budget = memory_budget
        self.streams = streams
        self.closed = False
        self.fetched = 0
        self.forgotten: list[int] = []

    async def read(self, offset: int, size: int, *, handle_id: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        buf = bytearray(size)
        await self.source.read_into(offset, memoryview(buf))
        self.fetched += size
        return bytes(buf)

    def forget_handle(self, handle_id: int) -> None:
        self.forgotten.append(handle_id)

    def statistics(self) -> Any:
        return SimpleNamespace(bytes_fetched=self.fetched, requests=0)

    async def aclose(self) -> None:
        self.closed = True


class FakeUpload(FakeClient):
    """Upload target (``UploadTarget``) writing into the volume of one upload transfer."""

    def __init__(self, engine: FakeEngine, transfer_id: str) -> None:
        super().__init__(engine, transfer_id)
        self.buf = engine.volumes[engine.transfer_volume[transfer_id]]
        self.put_bytes = 0

    async def write(self, offset: int, data: bytes, *, flush: bool = False) -> None:
        await trio.lowlevel.checkpoint()
        self._check()
        self.buf[offset : offset + len(data)] = data
        self.put_bytes += len(data)

    async def zero(self, offset: int, size: int, *, flush: bool = False) -> None:
        self._check()
        self.buf[offset : offset + size] = bytes(size)

    async def flush(self) -> None:
        self._check()
        self.engine.flushes += 1


def upload_opener(engine: FakeEngine) -> Any:
    """The restore's ``opener(transfer_url, proxy_url)`` over ``engine``'s transfers."""

    @contextlib.asynccontextmanager
    async def opener(url: str, proxy_url: str | None) -> AsyncIterator[FakeUpload]:
        yield FakeUpload(engine, url.removeprefix("fake://"))

    return opener
