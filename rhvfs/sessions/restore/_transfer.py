"""The upload transfers of one restored disk, each under a place among the mount's transfers.

``UploadChannel`` is the ``UploadTarget`` a disk's ``UploadStream`` writes to.
It opens an upload transfer when the disk's upload starts (``open``) and
again whenever a request needs one after parking: it first takes a
place among the mount's ``max_transfers`` (``core._limits``, shared with the
backup sessions; a request beyond the limit waits in the FIFO queue, visible
in ``status.json``), starts the transfer on the disk, and opens the imageio
client. While no request uses it the place is ``idle``: when another transfer
waits for a place, the channel *parks* once it has been quiet for
``quiet_s`` seconds (an image being written never gives way mid-stream):
it flushes, finalizes the transfer (the data written so far stays on the
disk) and gives the place back. The next request of the disk takes a place
again and starts a new upload transfer on the same disk.

**Keep-alive.** The engine cancels an upload transfer whose imageio ticket
saw no request for its ``inactivity_timeout`` (imageio's ``idle_time``: the
seconds since the last request ended, 0 while one runs; any request, a flush
too, resets it). The tool's writes are no evidence of requests: the stream
holds up to a chunk, and zero runs, until more data comes. So the channel
itself keeps every open transfer alive, whatever the disk's task is doing
(the tool writing this or other images slowly, staging replay, a chain
waiting to settle or applying its deltas, other disks finalizing): while a
transfer is open and no request is in flight, a flush goes out once
``keepalive_s`` (at most a third of the inactivity timeout) passed since the
last request ended. A failed keep-alive is left to the next real request
(which retries or fails the upload).

So a restore holds places only while one of its disks' transfers is open:
an image that is complete and waits for the rest of its set, or whose tool
paused, gives way to the others (a set with more disks than
``max_transfers`` cannot deadlock: no disk waits for a place while holding
one). ``flush`` of a parked channel does nothing (its data was flushed and
finalized when it parked), so keep-alive flushes never reopen a transfer.

Invariants (between awaits; trio is single-threaded): a channel with an
open transfer holds a place (``_slot``); ``_target`` is set exactly while a
transfer is open; opening and parking run under ``_lock``; ``_users`` counts
the requests in progress (they are not parked under); ``_io`` the requests
sent to the open transfer and not answered yet, ``_last_io`` when the last one
ended (or the transfer opened).

Must not: decide what to write or when an image is complete (``_upload``,
``_images``); remove the disk (``_rollback``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from rhvfs.errors import EngineError, RestoreFailed, RhvfsError, is_transient
from rhvfs.sessions.core._limits import EngineLimits, Slot
from rhvfs.sessions.restore._ports import RestoreEngine, UploadOpener
from rhvfs.sessions.restore._upload import UploadTarget

log = logging.getLogger(__name__)

#: An open, idle upload gives its place to a waiting transfer after this long without a
#: request (seconds).
QUIET_S = 1.0


class UploadChannel:
    """One disk's upload transfers, opened on demand and parked when others wait."""

    def __init__(
        self,
        *,
        engine: RestoreEngine,
        opener: UploadOpener,
        limits: EngineLimits | None,
        disk_id: str,
        label: dict[str, Any],
        inactivity_timeout_s: int,
        on_transfer: Callable[[str | None], None],
        note: Callable[[str], None],
        keepalive_s: Callable[[], float],
        quiet_s: float = QUIET_S,
    ) -> None:
        self._engine = engine
        self._opener = opener
        self._limits = limits
        self.disk_id = disk_id
        self._label = label
        self._inactivity_timeout_s = inactivity_timeout_s
        self._keepalive_s = keepalive_s  # read at each use (tests shorten it)
        self._on_transfer = on_transfer
        self._note = note
        self.quiet_s = quiet_s
        self._lock = trio.Lock()
        self._slot: Slot | None = None
        self._stack: AsyncExitStack | None = None
        self._target: UploadTarget | None = None
        self.transfer_id: str | None = None
        self._users = 0
        self._last_used = trio.current_time()
        self._quiet = trio.Event()
        self._quiet.set()
        self._nursery: trio.Nursery | None = None
        self._parking: trio.CancelScope | None = None
        self._waits: set[trio.CancelScope] = set()  # requests waiting for a place
        self._closed = False
        self._io = 0
        self._last_io = trio.current_time()
        self._keeper: trio.CancelScope | None = None
        #: keep-alive flushes sent
        self.keepalives = 0
        #: transfers started (1 + the times the channel was reopened after parking)
        self.transfers = 0
        self.parks = 0

    def start(self, nursery: trio.Nursery) -> None:
        """Where parking and the keep-alive run (the disk task's nursery)."""
        self._nursery = nursery
        if self._keeper is None and not self._closed:
            self._keeper = trio.CancelScope()
            nursery.start_soon(self._keep_alive, self._keeper)

    async def open(self) -> None:
        """Open the first transfer now (waiting in line for a place)."""
        async with self._use():
            pass

    @property
    def is_open(self) -> bool:
        return self._target is not None

    # -- UploadTarget ------------------------------------------------------------------

    async def write(self, offset: int, data: bytes, *, flush: bool = False) -> None:
        async with self._use() as target:
            assert target is not None
            await self._request(target.write(offset, data, flush=flush))

    async def zero(self, offset: int, size: int, *, flush: bool = False) -> None:
        async with self._use() as target:
            assert target is not None
            await self._request(target.zero(offset, size, flush=flush))

    async def flush(self) -> None:
        """Flush the open transfer; a parked channel has nothing unflushed."""
        if self._target is None:
            return
        async with self._use(activity=False, reopen=False) as target:
            if target is not None:
                await self._request(target.flush())

    async def _request(self, request: Awaitable[None]) -> None:
        """One request to the open transfer; when it ends, the ticket's idle time restarts."""
        self._io += 1
        try:
            await request
        finally:
            self._io -= 1
            self._last_io = trio.current_time()

    # -- keep-alive ------------------------------------------------------------------------

    def keepalive_interval_s(self) -> float:
        """Seconds without a request after which an open transfer is flushed."""
        return max(0.001, min(self._keepalive_s(), self._inactivity_timeout_s / 3))

    async def _keep_alive(self, scope: trio.CancelScope) -> None:
        """Flush the open transfer whenever no request ended for ``keepalive_interval_s``."""
        with scope:
            while not self._closed:
                interval = self.keepalive_interval_s()
                due = self._last_io + interval - trio.current_time()
                if due > 0:
                    await trio.sleep(due)
                    continue
                if self._target is None or self._io:
                    # parked (the next request opens a new transfer), or a request is in
                    # flight (the ticket is active): look again an interval later
                    await trio.sleep(interval)
                    continue
                try:
                    await self.flush()
                    self.keepalives += 1
                except RhvfsError as e:
                    if not is_transient(e):
                        # the next request fails the upload (or retries) with this error
                        log.warning("keep-alive of disk %s: %s", self.disk_id, e)
                        return
                    log.info("keep-alive of disk %s: %s; retrying", self.disk_id, e)
                    self._last_io = trio.current_time()  # again an interval later

    # -- opening and parking ---------------------------------------------------------------

    @asynccontextmanager
    async def _use(
        self, *, activity: bool = True, reopen: bool = True
    ) -> AsyncIterator[UploadTarget | None]:
        if self._closed:
            raise RestoreFailed(f"the upload of disk {self.disk_id} has ended")
        self._users += 1
        if self._quiet.is_set():
            self._quiet = trio.Event()
        if self._slot is not None:
            self._slot.busy()
        try:
            async with self._lock:
                if reopen:
                    await self._open()
            yield self._target
        finally:
            self._users -= 1
            if activity:
                self._last_used = trio.current_time()
            if self._users == 0:
                self._quiet.set()
                if self._slot is not None and self._target is not None:
                    self._slot.idle(self._give_way)

    async def _open(self) -> None:
        """A place, then a new upload transfer and its client (caller holds ``_lock``)."""
        if self._target is not None:
            return
        if self._closed:
            raise RestoreFailed(f"the upload of disk {self.disk_id} has ended")
        if self._slot is None and self._limits is not None:
            slot = self._limits.transfers.request(self._label)
            if slot.state == "queued":
                self._note(
                    f"disk {self.disk_id} waits for a transfer place (position {slot.position}, "
                    f"max_transfers {self._limits.transfers.limit})"
                )
                scope = trio.CancelScope()
                self._waits.add(scope)
                try:
                    with scope:
                        await slot.wait()
                except BaseException:
                    slot.release()
                    raise
                finally:
                    self._waits.discard(scope)
                if scope.cancelled_caught:
                    slot.release()
                    raise RestoreFailed(f"the upload of disk {self.disk_id} has ended")
            self._slot = slot
        try:
            transfer = await self._engine.start_transfer(
                disk_id=self.disk_id,
                direction="upload",
                format="raw",
                inactivity_timeout=self._inactivity_timeout_s,
                timeout_policy="cancel",
            )
        except BaseException:
            self._drop_slot()
            raise
        self.transfer_id = transfer.id
        self._on_transfer(transfer.id)
        self.transfers += 1
        if transfer.transfer_url is None:
            raise EngineError(f"transfer {transfer.id} has no transfer_url")
        stack = AsyncExitStack()
        try:
            self._target = await stack.enter_async_context(
                self._opener(transfer.transfer_url, transfer.proxy_url)
            )
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._last_io = trio.current_time()  # opening it (OPTIONS) touched the ticket
        if self.transfers > 1:
            log.info("upload of disk %s reopened (transfer %s)", self.disk_id, transfer.id)

    def _drop_slot(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()

    def _give_way(self) -> None:
        """Another transfer waits for a place: park once quiet (never blocks)."""
        if self._nursery is None or self._parking is not None or self._closed:
            return
        self._parking = trio.CancelScope()
        self._nursery.start_soon(self._park_when_quiet, self._parking)

    async def _park_when_quiet(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
                while True:
                    if self._target is None:
                        return
                    if self._users:
                        await self._quiet.wait()
                        continue
                    wait = self._last_used + self.quiet_s - trio.current_time()
                    if wait <= 0:
                        break
                    await trio.sleep(wait)
            if scope.cancelled_caught:
                return
            async with self._lock:
                if self._target is None or self._users:
                    # a request came meanwhile: it reopens or finds the transfer open; asked
                    # again at its end (``Slot.idle``) while someone still waits
                    return
                self._note(f"disk {self.disk_id} gives its transfer place to a waiting transfer")
                self.parks += 1
                try:
                    await self._end(cancel=False)
                except RhvfsError as e:
                    self._note(f"parking the upload of disk {self.disk_id}: {e}")
                    raise RestoreFailed(
                        f"finalizing the parked upload of disk {self.disk_id} failed: {e}"
                    ) from e
        finally:
            if self._parking is scope:
                self._parking = None

    async def _end(self, *, cancel: bool) -> None:
        """Close the client, end the open transfer, give the place back (caller holds the lock
        or the channel is closed)."""
        stack, self._stack = self._stack, None
        target, self._target = self._target, None
        transfer_id, self.transfer_id = self.transfer_id, None
        try:
            if stack is not None:
                try:
                    if target is not None and not cancel:
                        await target.flush()  # nothing is finalized unflushed
                finally:
                    await stack.aclose()
            if transfer_id is not None:
                if cancel:
                    await self._engine.cancel_transfer(transfer_id)
                else:
                    await self._engine.finalize_transfer(transfer_id)
        except BaseException:
            # the caller fails the upload and cancels the transfer still named here
            self.transfer_id = transfer_id
            raise
        finally:
            self._drop_slot()
        self._on_transfer(None)

    def stop(self) -> None:
        """No more requests, no more parking, and requests waiting for a place give up (the
        restore failed or the upload ends; ``aclose`` follows)."""
        self._closed = True
        if self._parking is not None:
            self._parking.cancel()
        if self._keeper is not None:
            self._keeper.cancel()
        for scope in self._waits:
            scope.cancel()

    async def aclose(self, *, cancel: bool = False) -> None:
        """The disk's upload ends: finalize (or ``cancel``) the open transfer; no more requests."""
        self.stop()
        async with self._lock:
            if self.transfer_id is None and self._target is None:
                self._drop_slot()
                return
            await self._end(cancel=cancel)
