"""One backup session: a snapshot of an owner, lazy per-disk transfers, keep-alive, cleanup.

A ``BackupSession`` lives in its own task (``run``) inside the manager's
nursery. It checks the owner's state, records intent in the journal, creates
ONE snapshot for all disks (VMs; templates are read directly), reads the
configuration as of that snapshot, and then serves reads. Each disk gets a
``BackupDiskChannel`` on first use: an image transfer of the snapshot volume, an
imageio client, the extent map (once) and a prefetching reader. The channel is
the reader's ``BlockSource``: a ``TicketGone`` recreates the transfer and the
read is retried, and an idle transfer is kept alive with a 4 KiB read. When
the last handle of a disk is released its reader (and its buffers) is freed;
the transfer and extent map stay for the life of the session. New readers get
the session's prefetch memory shared by the disks open at that moment.
The transfer handling is ``transfer_channel.TransferChannel`` and the task,
grace timer and shielded cleanup ``lifecycle.SessionLifecycle``, both shared
with the incremental session.

When asked to close (grace timer, unmount) every transfer is finalized, the
snapshot removed (retrying while the engine keeps it locked) and the journal
entry cleared, shielded from cancellation under a deadline; what that leaves
(``_leftovers``) the manager retries in the background.

Invariants that hold between awaits: ``state`` only moves forward
(starting -> ready|broken -> closing -> closed); ``channels`` only grows while
ready; a channel's ``generation`` changes only under its lock; ``handles``
maps every open handle to its key, and a channel has a reader only while (or
just after) some handle of its disk is open.

Must not: know about inodes, handles' files or pyfuse3; decide set sizes
(the manager's ``freeze`` callback does).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import trio

from rhvfs.backupset import OwnerData, disk_id_of_key
from rhvfs.engine.types import Disk, Snapshot, Template, Vm
from rhvfs.errors import (
    Conflict,
    DataIntegrityError,
    EngineError,
    NotFound,
    RhvfsError,
    SessionBroken,
    SessionClosed,
    VmStateError,
    internal_error,
)
from rhvfs.retry import Backoff, RetryPolicy, poll
from rhvfs.sessions.core._cleanup import busy_policy, find_snapshot, remove_snapshot, retryable
from rhvfs.sessions.core._gc import snapshot_description
from rhvfs.sessions.core._journal import session_entry
from rhvfs.sessions.core._lifecycle import SessionLifecycle, SessionServices
from rhvfs.sessions.core._limits import Slot
from rhvfs.sessions.core._model import Owner, SetEntry, clip_read
from rhvfs.sessions.core._owner_data import OwnerDataFetcher, image_disks
from rhvfs.sessions.core._pending import CleanupStep, snapshot_step
from rhvfs.sessions.core._ports import (
    ReaderLike,
)
from rhvfs.sessions.core._transfer_channel import TransferChannel, close_channels, park_channels

log = logging.getLogger(__name__)

# Reader counters a disk's status adds up over all its readers, retired ones included.
_SUMMED_STATISTICS = ("bytes_fetched", "requests", "cache_hits", "cache_waits")

#: VM states a backup can start from.
BACKUP_OK_STATES = frozenset({"up", "down", "paused"})
#: States that never resolve by waiting: error out at once.
BACKUP_REFUSED_STATES = {
    "suspended": "VM {name} is suspended; resume or power it off to back it up",
    "not_responding": "VM {name} is not responding; fix it or power it off to back it up",
    "unknown": "VM {name} is in an unknown state; fix it or power it off to back it up",
}
#: How long to wait for a VM in a transitional state (image_locked, migrating...).
STATE_WAIT_S = 30.0
MIN_READER_BUDGET = 16 * 1024 * 1024


def _never(error: BaseException) -> bool:
    return False


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackupSessionDeps(SessionServices):
    """What a session needs from its manager (one object, so sessions stay cheap to build)."""

    fetch_owner_data: OwnerDataFetcher
    freeze: Callable[[BackupSession], None]
    on_closed: Callable[[BackupSession], None]
    on_error: Callable[[Owner, str], None]


class BackupDiskChannel(TransferChannel):
    """One disk's transfer inside a session: the snapshot volume (VMs) or the disk (templates)."""

    def __init__(self, session: BackupSession, disk: Disk) -> None:
        super().__init__(disk=disk, deps=session.deps, session_id=session.session_id)
        self.session = session
        self.extents: list[Any] | None = None
        self.memory_budget = 0  # bytes promised to the live reader
        self.retired_stats: list[Any] = []  # statistics of readers dropped earlier
        self._open_lock = trio.Lock()

    def _check_serving(self) -> None:
        if self.session.state not in ("ready",):
            raise SessionClosed(f"session of {self.session.owner.name} is {self.session.state}")

    def _transfer_target(self) -> dict[str, Any]:
        if self.session.owner.kind == "template":
            return {"disk_id": self.disk.id}
        return {"snapshot_image_id": self.disk.image_id}

    def _transfer_label(self) -> str:
        return f"volume {self.disk.image_id}"

    def _note_error(self, message: str) -> None:
        self.session.note_error(message)

    async def ensure_reader(
        self, nursery: trio.Nursery, *, budget: Callable[[], int]
    ) -> ReaderLike:
        """The disk's reader, created on first use with ``budget()`` bytes of prefetch memory."""
        if self.reader is not None:
            return self.reader
        self.busy()
        async with self._open_lock:
            if self.reader is not None:
                return self.reader
            if self.client is None:
                await self._recreate(self.generation)
            assert self.client is not None
            if self.extents is None:
                self.extents = list(await self.client.extents())  # once per disk
            extents = self.extents
            size = sum(e.length for e in extents)
            if size != self.disk.provisioned_size:
                raise DataIntegrityError(
                    f"disk {self.disk.id}: imageio reports {size} bytes, the engine {self.disk.provisioned_size}"
                )
            memory_budget = budget()
            self.reader = await self._new_reader(
                self, size=size, extents=extents, memory_budget=memory_budget, nursery=nursery
            )
            self.memory_budget = memory_budget
            return self.reader

    async def drop_reader(self) -> None:
        """Free the reader's buffers (no handle reads this disk now); the transfer stays
        (until another disk waits for a transfer: ``TransferChannel.idle``)."""
        reader, self.reader = self.reader, None
        self.memory_budget = 0
        if reader is not None:
            self.retired_stats.append(reader.statistics())
            await reader.aclose()
        if self.reader is None:
            self.idle()

    def statistics(self) -> dict[str, Any]:
        stats = list(self.retired_stats)
        if self.reader is not None:
            stats.append(self.reader.statistics())
        return {
            "disk_id": self.disk.id,
            "transfer_id": self.transfer.id if self.transfer else None,
            "recreated": self.recreations,
            "keepalives": self.keepalives,
            # cache_hits / cache_waits: reads whose chunk was ready / still being fetched
            **{k: sum(getattr(x, k, 0) for x in stats) for k in _SUMMED_STATISTICS},
        }


class BackupSession(SessionLifecycle):
    """A point-in-time view of one owner's disks and configuration."""

    def __init__(
        self,
        owner: Owner,
        deps: BackupSessionDeps,
        *,
        read_id: str | None = None,
        slot: Slot | None = None,
    ) -> None:
        super().__init__(
            owner,
            config=deps.config,
            read_id=read_id,
            cleanups=deps.cleanups,
            limits=deps.limits,
            slot=slot,
        )
        self.deps = deps
        #: the router's check that the data is the configuration's point in time passed
        self.verified = False
        self.session_id = read_id or uuid.uuid4().hex[:12]
        self.last_error: str | None = None
        self.ready_at: float | None = None
        self.snapshot: Snapshot | None = None
        self.snapshot_description: str | None = None
        self.entity: Vm | Template | None = None
        self.data: OwnerData | None = None
        self.disks: list[Disk] = []
        # Filled by the manager's freeze(): the frozen listing and config contents.
        self.entries: list[SetEntry] = []
        self.disk_entries: list[SetEntry] = []
        self.entries_by_key: dict[str, SetEntry] = {}
        self.contents: dict[str, bytes | RhvfsError] = {}
        self.channels: dict[str, BackupDiskChannel] = {}
        self.handles: dict[int, str] = {}  # handle id -> key
        self._journaled = False

    # -- task (SessionLifecycle hooks) ------------------------------------------

    def _crashed(self, error: Exception) -> bool:
        # A bug in one session must not take the mount down: end this session only.
        log.exception("session %s of %s crashed", self.session_id, self.owner.name)
        self.error = SessionBroken(f"backup of {self.owner.name} failed: {internal_error(error)}")
        self.state = "broken"
        self.note_error(str(self.error))
        return True

    def _note_cleanup_error(self, message: str) -> None:
        self.note_error(message)

    def _on_closed(self) -> None:
        self.deps.on_closed(self)

    def _label(self) -> str:
        return f"{self.session_id} of {self.owner.name}"

    def _queue_label(self) -> dict[str, Any]:
        return {
            "owner": {"kind": self.owner.kind, "id": self.owner.id, "name": self.owner.name},
            "session_id": self.session_id,
            "read_id": self.read_id,
        }

    async def _park(self) -> None:
        await park_channels(self.channels.values())

    def request_close(self) -> None:
        # "closing" at once, not when run() wakes up: an open() in between must not join
        # a session that is about to end (seen with grace_period=0 and qemu-img's reopen).
        if self.state not in ("broken", "closed"):
            self.state = "closing"
        super().request_close()

    # -- start ----------------------------------------------------------------

    async def _start(self, nursery: trio.Nursery) -> None:
        try:
            if self.owner.kind == "vm":
                await self._start_vm()
            else:
                await self._start_template()
            self.deps.freeze(self)
        except trio.Cancelled:
            raise
        except VmStateError as e:
            self._fail(e)
            self.request_close()  # nothing to keep: the next open checks the state again
            return
        except RhvfsError as e:
            await self._cleanup()  # before anyone sees the failure: nothing is left behind
            self._fail(SessionBroken(f"backup of {self.owner.kind} {self.owner.name} failed: {e}"))
            self.schedule_close(self.deps.config.grace_period)
            return
        except Exception as e:  # a bug must not hang every reader
            log.exception("session %s of %s failed", self.session_id, self.owner.name)
            await self._cleanup()
            self._fail(SessionBroken(f"backup of {self.owner.name} failed: {internal_error(e)}"))
            self.schedule_close(self.deps.config.grace_period)
            return
        self.state = "ready"
        self.ready_at = time.time()
        self.ready.set()
        if not self.handles:
            # Whoever asked for it may have given up meanwhile (e.g. while it was queued):
            # it ends as an unused one does; an open now cancels this.
            cfg = self.deps.config
            if self.read_id is None:
                self.schedule_close(cfg.grace_period)
            else:
                self.schedule_close(cfg.read_idle_limit, park_after_s=cfg.grace_period)
        log.info(
            "session %s of %s %s ready: snapshot %s, %d disk(s), in %.2fs",
            self.session_id,
            self.owner.kind,
            self.owner.name,
            self.snapshot.id if self.snapshot else None,
            len(self.disks),
            self.ready_at - self.started_wall,
        )

    def _fail(self, error: RhvfsError) -> None:
        self.state = "broken"
        self.error = error
        self.note_error(str(error))
        self.ready.set()

    def _state_wait_policy(self) -> RetryPolicy:
        """Waiting for an owner in a transitional state: a steady look, at most ``STATE_WAIT_S``."""
        cfg = self.deps.config
        interval = max(0.1, min(cfg.system_interval, 5.0))
        return RetryPolicy.for_polling(
            interval_s=interval,
            max_interval_s=interval,
            factor=1.0,
            timeout_s=min(STATE_WAIT_S, cfg.system_timeout),
        )

    async def _wait_for_backup_state(self) -> Vm:
        engine = self.deps.engine
        last: list[Vm] = []

        async def probe() -> Vm | None:
            vm = await engine.get_vm(self.owner.id)
            last[:] = [vm]
            status = vm.status or "unknown"
            if status in BACKUP_OK_STATES:
                return vm
            if status in BACKUP_REFUSED_STATES:
                raise VmStateError(BACKUP_REFUSED_STATES[status].format(name=vm.name))
            log.info("VM %s is %s; waiting before backing it up", vm.name, status)
            return None

        def still_busy(_: str) -> VmStateError:
            vm = last[-1]
            return VmStateError(
                f"VM {vm.name} is {vm.status or 'unknown'}; wait until it is up, down or paused "
                "and try again"
            )

        return await poll(
            probe,
            policy=self._state_wait_policy(),
            what=f"wait for VM {self.owner.name} to be up, down or paused",
            timeout_error=still_busy,
            retry_on=_never,  # engine errors are final here (the engine retried them)
        )

    async def _start_vm(self) -> None:
        engine = self.deps.engine
        vm = await self._wait_for_backup_state()
        self.entity = vm
        now = datetime.now(UTC)
        desc = snapshot_description(
            self.session_id,
            self.deps.process,
            now,
            owner=self.deps.journal.installation.ownership(),
        )
        self.snapshot_description = desc
        self._journal(snapshot_description=desc)
        started = time.monotonic()
        snap = await self._create_snapshot(vm, desc)
        self.snapshot = snap
        self._journal(snapshot_description=desc, snapshot_id=snap.id)
        log.info(
            "snapshot %s of VM %s created in %.2fs", snap.id, vm.name, time.monotonic() - started
        )
        disks = await engine.snapshot_disks(vm.id, snap.id)
        data = await self.deps.fetch_owner_data(self.owner, vm)
        try:
            snap_ovf = await engine.snapshot_ovf(vm.id, snap.id)
        except EngineError as e:
            log.info("no OVF on snapshot %s (%s); using the VM's", snap.id, e)
            snap_ovf = None
        if snap_ovf:
            data = dataclasses.replace(data, ovf=snap_ovf.encode("utf-8"))
        self.data = data
        att_ids = [a.disk.id for a in self.data.attachments]
        order = {d: i for i, d in enumerate(att_ids)}
        disks = [d for d in disks if d.image_id and not d.shareable]
        self.disks = sorted(disks, key=lambda d: order.get(d.id, len(order)))

    async def _create_snapshot(self, vm: Vm, description: str) -> Snapshot:
        engine = self.deps.engine
        cfg = self.deps.config
        # Transient failures are retried for system_timeout, a lock (409) only a little:
        # a reader is blocked in open() meanwhile.
        backoff = Backoff(busy_policy(cfg))
        conflict_deadline = trio.current_time() + min(cfg.system_timeout, 2 * STATE_WAIT_S)
        async for attempt in backoff:
            if attempt:
                # A lost answer may still have created it: look before creating another.
                found = await self._find_snapshot_by_description(vm.id, description)
                if found is not None:
                    return found
            try:
                return await engine.create_snapshot(
                    vm.id,
                    description=description,
                    # Only a running guest has memory to save.
                    persist_memorystate=cfg.memory_state and vm.status == "up",
                )
            except EngineError as e:
                delay = backoff.next_delay_s()
                deadline = conflict_deadline if isinstance(e, Conflict) else backoff.deadline
                if not retryable(e) or delay is None or trio.current_time() + delay > deadline:
                    raise
                log.info("snapshot of VM %s: %s; retrying in %.1fs", vm.name, e, delay)
        raise AssertionError("unreachable: every attempt returns, raises or is retried")

    async def _find_snapshot_by_description(self, vm_id: str, description: str) -> Snapshot | None:
        try:
            return await find_snapshot(self.deps.engine, vm_id, description=description)
        except EngineError:
            return None

    async def _start_template(self) -> None:
        engine = self.deps.engine
        last: list[Template] = []

        async def probe() -> Template | None:
            tpl = await engine.get_template(self.owner.id)
            last[:] = [tpl]
            return tpl if tpl.status in (None, "ok") else None

        tpl = await poll(
            probe,
            policy=self._state_wait_policy(),
            what=f"wait for template {self.owner.name} to be ok",
            timeout_error=lambda _: VmStateError(
                f"template {last[-1].name} is {last[-1].status}; try again later"
            ),
            retry_on=_never,
        )
        self.entity = tpl
        self._journal()
        self.data = await self.deps.fetch_owner_data(self.owner, tpl)
        self.disks = image_disks(self.data)

    def _journal(self, **fields: Any) -> None:
        journal = self.deps.journal
        journal.put(
            session_entry(
                journal,
                session_id=self.session_id,
                process=self.deps.process,
                owner=self.owner,
                started_wall=self.started_wall,
                transfer_ids=[c.transfer.id for c in self.channels.values() if c.transfer],
                **fields,
            )
        )
        self._journaled = True

    # -- reads ----------------------------------------------------------------

    async def read(self, key: str, offset: int, size: int, *, handle_id: int) -> bytes | memoryview:
        if self.state != "ready":
            if self.error is not None:
                raise self.error
            raise SessionClosed(f"session of {self.owner.name} is {self.state}")
        size = clip_read(
            self.entries_by_key.get(key),
            key,
            offset,
            size,
            where=f"the backup set of {self.owner.name}",
        )
        if not size:
            return b""
        data: bytes | memoryview
        disk_id = disk_id_of_key(key)
        if disk_id is None:
            content = self.contents.get(key)
            if isinstance(content, RhvfsError):
                raise content
            if content is None:
                raise NotFound(f"{key} has no content")
            data = content[offset : offset + size]
        else:
            channel = self.channels.get(disk_id)
            if channel is None:
                disk = next(d for d in self.disks if d.id == disk_id)
                channel = self.channels[disk_id] = BackupDiskChannel(self, disk)
            try:
                reader = channel.reader
                if reader is None:
                    assert self._nursery is not None
                    reader = await channel.ensure_reader(self._nursery, budget=self._disk_budget)
                data = await reader.read(offset, size, handle_id=handle_id)
            except (trio.Cancelled, SessionClosed):
                raise
            except RhvfsError as e:
                self.note_error(f"read of disk {disk_id} at {offset}+{size}: {e}")
                raise
            if len(data) != size:
                raise DataIntegrityError(
                    f"reader returned {len(data)} bytes for {size} at {offset} of disk {disk_id}"
                )
        self.bytes_read += len(data)
        entry = self.entries_by_key.get(key)
        self.note_progress(
            key,
            offset,
            len(data),
            name=entry.name if entry is not None else key,
            size=entry.size if entry is not None else offset + len(data),
        )
        return data

    def add_handle(self, handle_id: int, key: str) -> None:
        self.cancel_grace()
        self.handles[handle_id] = key

    async def remove_handle(self, handle_id: int) -> None:
        """Forget a released handle; the last one of a disk frees that disk's read buffers."""
        key = self.handles.pop(handle_id, None)
        disk_id = disk_id_of_key(key) if key else None
        channel = self.channels.get(disk_id) if disk_id else None
        if channel is None or channel.reader is None:
            return
        if key in self.handles.values():
            channel.reader.forget_handle(handle_id)
        else:
            # Memory stays bounded by the disks being read, not by all disks read so far.
            await channel.drop_reader()

    def _disk_budget(self) -> int:
        """Prefetch memory for a new reader: the session's budget shared by the disks open now.

        A tool that reads disks one after the other (tar, cp) gives each the whole
        budget (a released disk's reader is freed); disks read at the same time
        share it. Never less than ``MIN_READER_BUDGET`` (the reader needs whole chunks).
        """
        total = self.deps.config.prefetch_memory
        open_disks = {disk_id_of_key(k) for k in self.handles.values()} - {None}
        share = total // max(1, len(open_disks))
        in_use = sum(ch.memory_budget for ch in self.channels.values() if ch.reader is not None)
        return max(MIN_READER_BUDGET, min(share, total - in_use))

    # -- cleanup --------------------------------------------------------------

    async def _cleanup(self) -> None:
        """Finalize transfers, remove the snapshot, clear the journal. Idempotent; never raises."""
        channels = list(self.channels.values())
        self.channels = {}
        await close_channels(channels)
        if self.owner.kind == "vm" and self.snapshot_description is not None:
            removed = await self._remove_snapshot()
            if not removed:
                return  # keep the journal entry: the background retry (or gc) finishes it
        if self._journaled:
            try:
                mine = [e for e in self.deps.journal.entries() if e.session_id == self.session_id]
                if not mine or not mine[0].transfer_ids:
                    self.deps.journal.remove(self.session_id)
                    self._journaled = False
            except OSError as e:
                self.note_error(f"cannot update the journal {self.deps.journal.path}: {e}")

    def _leftovers(self) -> list[CleanupStep]:
        steps = self._journaled_transfer_steps(self.deps) if self._journaled else []
        if self.owner.kind == "vm" and self.snapshot_description is not None:
            steps.append(
                snapshot_step(
                    self.deps.engine,
                    self.owner.id,
                    self.snapshot.id if self.snapshot else None,
                    description=self.snapshot_description,
                    config=self.deps.config,
                )
            )
        return steps

    async def _remove_snapshot(self) -> bool:
        snap_id = self.snapshot.id if self.snapshot else None
        try:
            await remove_snapshot(
                self.deps.engine,
                self.owner.id,
                snap_id,
                description=self.snapshot_description,
                config=self.deps.config,
            )
        except EngineError as e:
            self.note_error(f"removing snapshot {snap_id} failed: {e}")
            return False
        self.snapshot = None
        self.snapshot_description = None
        return True

    # -- reporting ------------------------------------------------------------

    def note_error(self, message: str) -> None:
        self.last_error = message
        log.warning("session %s of %s: %s", self.session_id, self.owner.name, message)
        self.deps.on_error(self.owner, message)

    def status(self) -> dict[str, Any]:
        elapsed = max(time.time() - (self.ready_at or self.started_wall), 1e-6)
        return {
            "owner": {"kind": self.owner.kind, "id": self.owner.id, "name": self.owner.name},
            "session_id": self.session_id,
            "read_id": self.read_id,
            "state": self.state,
            "queue_position": self.queue_position,
            "snapshot_id": self.snapshot.id if self.snapshot else None,
            "started": datetime.fromtimestamp(self.started_wall, UTC).isoformat(),
            "handles": len(self.handles),
            "bytes_read": self.bytes_read,
            "rate_bytes_per_s": math.floor(self.bytes_read / elapsed),
            "disks": [ch.statistics() for ch in self.channels.values()],
            "last_error": self.last_error,
            "point_in_time": {
                "read_id": self.read_id,
                "method": "template" if self.owner.kind == "template" else "snapshot",
                "taken": (
                    datetime.fromtimestamp(self.ready_at, UTC).isoformat()
                    if self.ready_at
                    else None
                ),
            },
            # A read of the set expects each of its images (the router serves its
            # configuration); other reads show what they read.
            **self.progress_status(
                (e.key, e.name, e.size)
                for e in (self.entries if self.read_id else ())
                if e.disk_id is not None
            ),
        }
