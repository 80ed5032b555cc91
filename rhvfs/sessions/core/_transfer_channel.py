"""One disk's image transfer inside a session: open, reopen on ``TicketGone``, keep alive, end.

``TransferChannel`` is the part the full-backup session (``full.BackupDiskChannel``)
and the incremental session (``incremental.IncrementalDiskChannel``) share. It
starts the transfer (its client-chosen id journaled BEFORE the engine call, so
gc finds it even if this process dies before the answer arrives), opens the
imageio client, serves as the reader's ``BlockSource`` (a gone ticket
recreates the transfer and the read is retried, at most
``MAX_TICKET_RECREATIONS`` times per read), keeps an idle transfer alive with a
4 KiB read every ``inactivity_timeout / 3`` seconds, builds the prefetching
reader, and on close finalizes the transfer (cancelling it when it is being
replaced or does not finalize: ``_cleanup``) and clears it from the journal;
``close_channels`` closes a session's channels concurrently.

Each transfer holds a place among the mount's ``max_transfers``
(``core._limits``; ``deps.limits``): taken before the transfer starts (waiting in
the queue if needed), kept while a ticket is replaced, given back when the
transfer is parked or closed. A channel whose reader was dropped is ``idle``:
while another transfer waits, it parks (its disk's next read starts a new
transfer). A channel of an engine-backup set uses its session's places
(``group_slot``) instead of its own.

Subclasses say what the transfer downloads (``_transfer_target``), when the
session no longer serves reads (``_check_serving``) and where errors go
(``_note_error``).

Invariants between awaits: ``generation`` changes only under ``_lock``; a
channel with a transfer holds a place (its own ``_slot`` or ``group_slot``);
``client`` is set exactly while a transfer of the current generation is open;
``inflight`` counts the client reads in progress.

Must not: decide sizes, names or set contents; touch the snapshot or the
engine backup; know about handles, inodes or pyfuse3.
"""

from __future__ import annotations

import abc
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from typing import Any, Protocol

import trio

from rhvfs.config import Config
from rhvfs.engine.types import Disk, ImageTransfer
from rhvfs.errors import EngineError, SessionClosed, TicketGone
from rhvfs.retry import RETRY_RECORD
from rhvfs.sessions.core._cleanup import cancel_transfer, finish_transfer
from rhvfs.sessions.core._journal import Journal
from rhvfs.sessions.core._limits import EngineLimits, Slot
from rhvfs.sessions.core._ports import (
    BlockSource,
    EngineLike,
    ImageioClientLike,
    ImageioOpener,
    ReaderFactory,
    ReaderLike,
)

log = logging.getLogger(__name__)

KEEPALIVE_BYTES = 4096
MAX_TICKET_RECREATIONS = 3


class ChannelDeps(Protocol):
    """What a channel uses of its session's dependencies (either kind of session's deps)."""

    @property
    def engine(self) -> EngineLike: ...
    @property
    def config(self) -> Config: ...
    @property
    def journal(self) -> Journal: ...
    @property
    def imageio_opener(self) -> ImageioOpener: ...
    @property
    def reader_factory(self) -> ReaderFactory: ...
    @property
    def limits(self) -> EngineLimits | None: ...


class TransferChannel(abc.ABC):
    """A disk's transfer and imageio client; the ``BlockSource`` of the disk's reader."""

    def __init__(self, *, disk: Disk, deps: ChannelDeps, session_id: str) -> None:
        self.disk = disk
        self.deps = deps
        self.session_id = session_id
        self.transfer: ImageTransfer | None = None
        self.client: ImageioClientLike | None = None
        self.reader: ReaderLike | None = None
        self.generation = 0
        self.recreations = 0
        self.keepalives = 0
        self.inflight = 0
        self.last_activity = trio.current_time()
        self._keepalive_started = False
        self._stack: AsyncExitStack | None = None
        self._lock = trio.Lock()
        #: the place among the mount's transfers this channel holds (None: none, or unlimited)
        self._slot: Slot | None = None
        #: places held by the session for all its disks (engine-backup sets); then no own slot
        self.group_slot: Slot | None = None
        self._nursery: trio.Nursery | None = None

    # -- hooks ----------------------------------------------------------------

    @abc.abstractmethod
    def _check_serving(self) -> None:
        """Raise ``SessionClosed`` when the session no longer serves reads."""
        raise NotImplementedError

    @abc.abstractmethod
    def _transfer_target(self) -> dict[str, Any]:
        """``start_transfer`` keywords naming what to download (disk, snapshot volume, backup)."""
        raise NotImplementedError

    @abc.abstractmethod
    def _transfer_label(self) -> str:
        """What the transfer reads, for the log (``volume <id>``, ``set <id>``)."""
        raise NotImplementedError

    @abc.abstractmethod
    def _note_error(self, message: str) -> None:
        raise NotImplementedError

    # -- BlockSource ----------------------------------------------------------

    async def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` from ``offset``; a gone ticket recreates the transfer and retries."""
        attempts = 0
        while True:
            self._check_serving()
            client, gen = self.client, self.generation
            if client is None:
                await self._recreate(gen)
                continue
            self.inflight += 1
            try:
                await client.read_into(offset, buf)
                return
            except TicketGone as e:
                attempts += 1
                if attempts > MAX_TICKET_RECREATIONS:
                    raise
                log.info(
                    "transfer %s of disk %s lost its ticket (%s); recreating it",
                    self.transfer.id if self.transfer else None,
                    self.disk.id,
                    e,
                    extra={"what": f"read of disk {self.disk.id}", **RETRY_RECORD},
                )
                await self._recreate(gen)
            finally:
                self.inflight -= 1
                self.last_activity = trio.current_time()

    # -- transfer -------------------------------------------------------------

    async def _recreate(self, seen_generation: int) -> None:
        """Replace the transfer and client, unless another task already did since ``seen_generation``."""
        async with self._lock:
            if self.generation != seen_generation:
                return
            await self._end_transfer(cancel=True)
            await self._take_slot()
            journal = self.deps.journal
            started = time.monotonic()
            tid = str(uuid.uuid4())
            journal.add_transfer(self.session_id, tid)
            try:
                transfer = await self.deps.engine.start_transfer(
                    **self._transfer_target(),
                    direction="download",
                    format="raw",
                    inactivity_timeout=self.deps.config.inactivity_timeout,
                    transfer_id=tid,
                )
            except EngineError:
                # The facade cancels a transfer that failed to start.
                journal.remove_transfer(self.session_id, tid)
                self._drop_slot()
                raise
            if transfer.id != tid:  # the engine chose its own id
                journal.add_transfer(self.session_id, transfer.id)
                journal.remove_transfer(self.session_id, tid)
            self.transfer = transfer
            log.info(
                "transfer %s of disk %s (%s) ready in %.2fs",
                transfer.id,
                self.disk.id,
                self._transfer_label(),
                time.monotonic() - started,
            )
            url = transfer.transfer_url or transfer.proxy_url
            if not url:
                raise EngineError(f"transfer {transfer.id} has no transfer_url")
            stack = AsyncExitStack()
            try:
                self.client = await stack.enter_async_context(self.deps.imageio_opener(url))
            except BaseException:
                await stack.aclose()
                raise
            self._stack = stack
            if self.generation > 0:
                self.recreations += 1
            self.generation += 1
            self.last_activity = trio.current_time()

    async def _take_slot(self) -> None:
        """A place among the mount's transfers, waiting in line for it (never failing)."""
        limits = self.deps.limits
        if self.group_slot is not None or self._slot is not None or limits is None:
            return
        slot = limits.transfers.request({"session_id": self.session_id, "disk_id": self.disk.id})
        if slot.state == "queued":
            log.info(
                "transfer of disk %s queued at position %s (max_transfers %d)",
                self.disk.id,
                slot.position,
                limits.transfers.limit,
            )
            try:
                await slot.wait()
            except BaseException:
                slot.release()
                raise
        self._slot = slot

    def _drop_slot(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()

    def idle(self) -> None:
        """No reader uses the transfer now: park it when another transfer waits for a place."""
        if self._slot is not None and self._nursery is not None:
            self._slot.idle(self._give_way)

    def busy(self) -> None:
        """A reader is about to use the transfer again."""
        if self._slot is not None:
            self._slot.busy()

    def _give_way(self) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._park_for_queue)

    async def _park_for_queue(self) -> None:
        # A keep-alive read in flight: let it finish (it is one 4 KiB read; no event marks
        # its end, and a loop here is rare and short).
        while self.inflight:  # noqa: ASYNC110
            await trio.sleep(0.01)
        log.info("transfer of disk %s gives its place to a queued transfer", self.disk.id)
        try:
            await self.park()
        except Exception as e:
            self._note_error(f"parking transfer of disk {self.disk.id}: {e}")

    async def _end_transfer(self, *, cancel: bool) -> None:
        """Close the client and end the transfer (finalize, or cancel when it is being replaced)."""
        stack, self._stack, self.client = self._stack, None, None
        if stack is not None:
            try:
                await stack.aclose()
            except Exception as e:  # a broken connection must not stop the cleanup
                log.debug("closing imageio client of disk %s: %s", self.disk.id, e)
        transfer = self.transfer
        if transfer is None:
            return
        # Forgotten only once ended (or failed for good): a park cancelled by the session's
        # close leaves it to the cleanup's ``aclose`` instead of to nobody.
        try:
            if cancel:
                await cancel_transfer(self.deps.engine, transfer.id)
            else:
                await finish_transfer(self.deps.engine, transfer.id)
        except EngineError as e:
            self.transfer = None
            self._note_error(f"ending transfer {transfer.id} of disk {self.disk.id}: {e}")
            return  # kept in the journal: the session hands it to the background retry
        self.transfer = None
        self.deps.journal.remove_transfer(self.session_id, transfer.id)

    # -- reader and keep-alive ------------------------------------------------

    async def _new_reader(
        self,
        source: BlockSource,
        *,
        size: int,
        extents: Sequence[Any],
        memory_budget: int,
        nursery: trio.Nursery,
    ) -> ReaderLike:
        """A prefetching reader over ``source`` with as many streams as the config and
        the transfer (OPTIONS ``max_readers``) allow; starts the keep-alive once."""
        assert self.client is not None
        self._nursery = nursery
        max_readers = int(getattr(self.client.capabilities, "max_readers", 1) or 1)
        streams = max(1, min(self.deps.config.prefetch_streams, max_readers))
        reader = await self.deps.reader_factory(
            source,
            size=size,
            extents=list(extents),
            memory_budget=memory_budget,
            streams=streams,
            nursery=nursery,
        )
        if self.deps.config.inactivity_timeout > 0 and not self._keepalive_started:
            self._keepalive_started = True
            nursery.start_soon(self._keepalive)
        return reader

    async def _keepalive(self) -> None:
        interval = self.deps.config.inactivity_timeout / 3
        buf = memoryview(bytearray(min(KEEPALIVE_BYTES, max(1, self.disk.provisioned_size))))
        while True:
            await trio.sleep_until(self.last_activity + interval)
            if self.client is None:
                # Parked (or not opened yet): no ticket to keep alive; the next read opens one.
                self.last_activity = trio.current_time()
                continue
            if self.inflight:
                # A request in flight keeps the ticket active; look again a bit later.
                await trio.sleep(interval / 4)
                continue
            if trio.current_time() < self.last_activity + interval:  # same float as the deadline
                continue
            try:
                await self.read_into(0, buf)
                self.keepalives += 1
                log.debug("kept transfer of disk %s alive", self.disk.id)
            except SessionClosed:
                return
            except Exception as e:  # keep trying; a failing keep-alive must not end the session
                log.warning("keep-alive read of disk %s failed: %s", self.disk.id, e)
                self.last_activity = trio.current_time()

    # -- park and close -------------------------------------------------------

    async def park(self) -> None:
        """Finalize the transfer while no reader uses it (the engine keeps a disk locked for
        a transfer's life); the next read starts a new transfer of the same volume."""
        if self.reader is not None or self.inflight:
            return
        async with self._lock:
            if self.reader is not None or self.inflight:
                return
            if self.transfer is not None or self.client is not None:
                log.info("transfer of disk %s parked: no reader", self.disk.id)
                await self._end_transfer(cancel=False)
            self._drop_slot()

    # -- close ----------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the reader, then finalize the transfer and clear it from the journal."""
        reader, self.reader = self.reader, None
        if reader is not None:
            try:
                await reader.aclose()
            except Exception as e:
                log.debug("closing reader of disk %s: %s", self.disk.id, e)
        async with self._lock:
            try:
                await self._end_transfer(cancel=False)
            finally:
                self._drop_slot()


async def park_channels(channels: Iterable[TransferChannel]) -> None:
    """Park ``channels`` (see ``TransferChannel.park``); a failing one is noted, never raised."""
    for ch in list(channels):
        try:
            await ch.park()
        except Exception as e:
            ch._note_error(f"parking transfer of disk {ch.disk.id}: {e}")


async def close_channels(channels: Iterable[TransferChannel]) -> None:
    """Close ``channels`` concurrently (a session's cleanup); a failing one is noted on its
    session and never stops the others."""

    async def close_one(ch: TransferChannel) -> None:
        try:
            await ch.aclose()
        except Exception as e:
            ch._note_error(f"closing transfer of disk {ch.disk.id}: {e}")

    async with trio.open_nursery() as nursery:
        for ch in channels:
            nursery.start_soon(close_one, ch)
