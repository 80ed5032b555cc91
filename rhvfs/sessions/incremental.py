"""Incremental, differential and since-checkpoint backup sets of VMs (issue 5).

``IncrementalManager`` serves ``/vms/<vm>/@rhv-incremental/``,
``@rhv-differential/`` and ``@rhv-since/<checkpoint>/``. Listing such a
directory starts (or joins) the VM's ``IncrementalSession``: one engine VM
backup (``from_checkpoint_id`` = the base set's checkpoint, from the local
``ChainState``), one image transfer per disk, the dirty extents of each
incremental disk, and from them a qcow2 delta layout (``Qcow2Delta``) whose
size is known before anything is read. The listing has to start the backup:
the file sizes are the dirty extents. The set holds:

- ``vm--<set>.ovf``, ``vm--<set>.xml``, ``manifest--<set>.json`` (configuration
  and a manifest with from/to checkpoint ids, parent set and per-disk mode),
- ``<alias>--<diskid>--<set>.qcow2`` per incremental disk: a delta whose backing
  file names the base set's file of that disk,
- ``<alias>--<diskid>--<set>.raw`` per disk read in full (raw or backup=none
  disks, disks new since the base, a broken chain), marked in the manifest.

``<set>`` is the backup's to-checkpoint id (the backup id for raw-only sets),
so names never collide between sets. A set counts as completed only when every
file of it was read to the end and closed and the engine backup was finalized;
only then is it recorded in the chain. A missing or invalid base checkpoint
makes the set a full one, with a warning in the log and status.

Disks without incremental support in a set with a base cannot be part of an
incremental engine backup (the engine refuses them), so they are read from a
snapshot of just those disks, taken before the backup starts.

Invariants between awaits: at most one session per VM in ``_sessions`` (the
engine allows one backup per VM); a session's ``entries`` never change once
it is ready; a handle maps to exactly one session, which counts it.

Must not: know about inodes or pyfuse3; write anything but its own chain state
and journal entries.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, cast

import trio

from rhvfs import ARTIFACT_MARKER
from rhvfs.config import Config
from rhvfs.engine.types import Backup, Checkpoint, Disk, Snapshot
from rhvfs.errors import (
    Conflict,
    EngineError,
    ImageioError,
    NotFound,
    RhvfsError,
    SessionBroken,
    SessionClosed,
    SessionError,
    VmStateError,
    is_transient,
)
from rhvfs.imageio.types import Extent
from rhvfs.sessions import procid
from rhvfs.sessions.chain import ChainDisk, ChainSet, ChainState, PendingBackup, SetType
from rhvfs.sessions.journal import Journal, JournalEntry
from rhvfs.sessions.lifecycle import SessionLifecycle
from rhvfs.sessions.model import (
    MANIFEST_NAME,
    OVF_NAME,
    XML_NAME,
    Owner,
    SetEntry,
    blocks_for,
    escape_name,
    set_image_name,
)
from rhvfs.sessions.ports import (
    BlockSource,
    EngineLike,
    ImageioOpener,
    ReaderFactory,
    default_imageio_opener,
    default_reader_factory,
)
from rhvfs.sessions.qcow2delta import Change, Qcow2Delta
from rhvfs.sessions.setfiles import OwnerData, build_manifest, pad_to
from rhvfs.sessions.transfer_channel import TransferChannel

log = logging.getLogger(__name__)

#: ``full`` is ``@rhv/`` itself served through the engine backup API (see ``open_full``).
SetKind = Literal["incremental", "differential", "since", "full"]
SET_KINDS: tuple[SetKind, ...] = ("incremental", "differential", "since")
#: Directory name of each set kind under ``/vms/<vm>/``.
SET_DIRS: dict[SetKind, str] = {
    "incremental": "@rhv-incremental",
    "differential": "@rhv-differential",
    "since": "@rhv-since",
    "full": "@rhv",
}
KEY_SEP = "|"
BACKUP_OK_STATES = frozenset({"up", "down"})  # what the engine backs up
OPEN_TRIES = 3
MAX_NOTES = 50


class EngineWithBackups(EngineLike, Protocol):
    async def start_backup(
        self,
        vm_id: str,
        disk_ids: list[str],
        *,
        from_checkpoint_id: str | None = None,
        description: str = "",
        backup_id: str | None = None,
        require_consistency: bool = False,
    ) -> Backup: ...
    async def backup_disks(self, vm_id: str, backup_id: str) -> list[Disk]: ...
    async def finalize_backup(self, vm_id: str, backup_id: str) -> None: ...
    async def list_checkpoints(self, vm_id: str) -> list[Checkpoint]: ...


class DirtyClient(Protocol):
    """The imageio client calls a set needs (``rhvfs.imageio.ImageioClient``)."""

    @property
    def capabilities(self) -> Any: ...
    async def extents(self, context: Literal["zero", "dirty"] = "zero") -> Sequence[Any]: ...
    async def read_into(self, offset: int, buf: memoryview) -> None: ...


def set_key(set_id: str, inner: str) -> str:
    """The key of a file of an incremental set: ``<set_id>|config:vm.ovf`` / ``<set_id>|disk:<id>``."""
    return f"{set_id}{KEY_SEP}{inner}"


def is_incremental_key(key: str) -> bool:
    return KEY_SEP in key


def set_of_key(key: str) -> str:
    return key.split(KEY_SEP, 1)[0]


def config_names(set_id: str) -> dict[str, str]:
    """Unique config file names of a set: ``{"ovf": vm--<set>.ovf, "xml": ..., "manifest": ...}``."""
    return {
        "ovf": escape_name(f"vm--{set_id}.ovf"),
        "xml": escape_name(f"vm--{set_id}.xml"),
        "manifest": escape_name(f"manifest--{set_id}.json"),
    }


def disk_file_name(alias: str, disk_id: str, set_id: str, *, delta: bool) -> str:
    return escape_name(f"{alias}--{disk_id}--{set_id}.{'qcow2' if delta else 'raw'}")


def changes_from_dirty(extents: Sequence[Any]) -> list[Change]:
    """The dirty extents of ``context=dirty`` as changes (dirty zero extents stay zero)."""
    return [Change(e.start, e.length, zero=bool(e.zero)) for e in extents if e.dirty]


def reader_extents(
    size: int, wanted: Sequence[tuple[int, int]], extents: Sequence[Any]
) -> list[Extent]:
    """A zero-context extent map for a delta's reader: data only where the delta reads.

    ``wanted`` are the guest ranges of the delta's data clusters; ``extents``
    the disk's real zero map. Everything else is marked zero, so the reader
    never fetches (or prefetches) a byte the delta does not serve, and real
    zero parts of dirty clusters are served from memory.
    """
    nonzero = [(e.start, e.start + e.length) for e in extents if not (e.zero or e.hole)]
    data: list[tuple[int, int]] = []
    i = 0
    for ws, we in wanted:
        while i < len(nonzero) and nonzero[i][1] <= ws:
            i += 1
        j = i
        while j < len(nonzero) and nonzero[j][0] < we:
            s, e = max(ws, nonzero[j][0]), min(we, nonzero[j][1])
            if s < e:
                if data and data[-1][1] == s:
                    data[-1] = (data[-1][0], e)
                else:
                    data.append((s, e))
            j += 1
    out: list[Extent] = []
    pos = 0
    for s, e in data:
        if s > pos:
            out.append(Extent(pos, s - pos, zero=True))
        out.append(Extent(s, e - s, zero=False))
        pos = e
    if pos < size:
        out.append(Extent(pos, size - pos, zero=True))
    return out


def delta_file_extents(delta: Qcow2Delta, extents: Sequence[Any]) -> list[Extent]:
    """A zero-context extent map of a delta FILE for its reader: data where a data
    cluster holds non-zero guest bytes, zero elsewhere (metadata, zero parts of
    dirty clusters, the tail past the virtual size), so only those go over HTTP."""
    wanted = [(a.start, a.start + a.length) for a in delta.changed_ranges() if a.kind == "data"]
    guest = [
        (e.start, e.start + e.length)
        for e in reader_extents(delta.virtual_size, wanted, extents)
        if not e.zero
    ]
    data: list[tuple[int, int]] = []
    runs = [a for a in delta.changed_ranges() if a.kind == "data"]
    i = 0
    for gs, ge in guest:  # each lies inside one run: runs are separated by non-data
        while runs[i].start + runs[i].length <= gs:
            i += 1
        run = runs[i]
        assert run.file_offset is not None and run.start <= gs and ge <= run.start + run.length
        fs = run.file_offset + (gs - run.start)
        if data and data[-1][1] == fs:
            data[-1] = (data[-1][0], fs + ge - gs)
        else:
            data.append((fs, fs + ge - gs))
    out: list[Extent] = []
    pos = 0
    for s, e in data:
        if s > pos:
            out.append(Extent(pos, s - pos, zero=True))
        out.append(Extent(s, e - s, zero=False))
        pos = e
    if pos < delta.size:
        out.append(Extent(pos, delta.size - pos, zero=True))
    return out


async def _no_fetch(guest: int, length: int) -> bytes:
    raise AssertionError(f"metadata reads fetch no guest data ({guest}+{length})")


class DeltaSource:
    """``BlockSource`` in delta-file offsets: data clusters map back to guest offsets.

    The reader of a delta works in file offsets, where the data is dense and
    sequential, while the guest ranges behind it are scattered.
    """

    def __init__(self, delta: Qcow2Delta, channel: DiskChannel) -> None:
        self.delta = delta
        self.channel = channel

    async def read_into(self, offset: int, buf: memoryview) -> None:
        end = offset + len(buf)
        covered = max(offset, self.delta.metadata_size)
        if covered > offset:  # never asked for (zero in the reader's map); stay exact
            buf[: covered - offset] = bytes(covered - offset)
        for file_off, guest, n in self.delta.data_ranges(offset, len(buf)):
            view = buf[file_off - offset : file_off - offset + n]
            want = max(0, min(n, self.delta.virtual_size - guest))
            if want:
                await self.channel.read_into(guest, view[:want])
            if want < n:
                view[want:] = bytes(n - want)
        if end > self.delta.size:
            raise ValueError(f"read past the end of the delta: {offset}+{len(buf)}")


def _merge_into(intervals: list[tuple[int, int]], start: int, end: int) -> None:
    """Add [start, end) to a sorted list of disjoint intervals, merging neighbours."""
    if end <= start:
        return
    out: list[tuple[int, int]] = []
    placed = False
    for s, e in intervals:
        if e < start or s > end:
            if s > end and not placed:
                out.append((start, end))
                placed = True
            out.append((s, e))
        else:
            start, end = min(s, start), max(e, end)
    if not placed:
        out.append((start, end))
    out.sort()
    intervals[:] = out


@dataclasses.dataclass
class DiskPlan:
    """How one disk appears in a set."""

    disk: Disk
    mode: Literal["full", "incremental"]
    file: str
    key: str
    reason: str | None = None  # why full
    delta: Qcow2Delta | None = None
    backing_file: str | None = None
    snapshot_image_id: str | None = None  # read through the fallback snapshot
    dirty_bytes: int = 0


class DiskChannel(TransferChannel):
    """One disk's image transfer inside an incremental session; the reader's ``BlockSource``."""

    def __init__(self, session: IncrementalSession, plan: DiskPlan) -> None:
        super().__init__(disk=plan.disk, deps=session.deps, session_id=session.session_id)
        self.session = session
        self.plan = plan

    def _check_serving(self) -> None:
        if self.session.state != "ready":
            raise SessionClosed(f"set {self.session.set_id} is {self.session.state}")

    def _transfer_target(self) -> dict[str, Any]:
        if self.plan.snapshot_image_id:
            return {"snapshot_image_id": self.plan.snapshot_image_id}
        return {"disk_id": self.plan.disk.id, "backup_id": self.session.backup_id}

    def _transfer_label(self) -> str:
        return f"set {self.session.set_id or self.session.backup_id}"

    def _note_error(self, message: str) -> None:
        self.session.note(message, error=True)

    async def open(self) -> DirtyClient:
        """Start the transfer and open its imageio client; transient failures start a new one."""
        delay = max(self.session.deps.config.system_interval, 0.05)
        for attempt in range(1, OPEN_TRIES + 1):
            try:
                await self._recreate(self.generation)
                break
            except RhvfsError as e:
                if not is_transient(e) or attempt == OPEN_TRIES:
                    raise
                log.info(
                    "transfer of disk %s failed to open (%s); retrying in %.1fs",
                    self.plan.disk.id,
                    e,
                    delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, 10.0)
        assert self.client is not None
        return cast(DirtyClient, self.client)

    async def start_reader(
        self,
        extents: Sequence[Any],
        *,
        nursery: trio.Nursery,
        size: int | None = None,
        source: BlockSource | None = None,
    ) -> None:
        """The prefetching reader: over the disk (guest offsets), or for a delta over
        ``DeltaSource`` (delta-file offsets of ``size`` bytes)."""
        self.reader = await self._new_reader(
            source if source is not None else self,
            size=self.plan.disk.provisioned_size if size is None else size,
            extents=extents,
            memory_budget=self.session.disk_budget(),
            nursery=nursery,
        )

    def statistics(self) -> dict[str, Any]:
        stats = self.reader.statistics() if self.reader is not None else None
        return {
            "disk_id": self.plan.disk.id,
            "mode": self.plan.mode,
            "file": self.plan.file,
            "transfer_id": self.transfer.id if self.transfer else None,
            "dirty_bytes": self.plan.dirty_bytes,
            "bytes_fetched": getattr(stats, "bytes_fetched", None),
            "keepalives": self.keepalives,
        }


class SessionDeps:
    def __init__(
        self,
        *,
        engine: EngineWithBackups,
        config: Config,
        chain: ChainState,
        journal: Journal,
        process: procid.ProcessIdentity,
        imageio_opener: ImageioOpener,
        reader_factory: ReaderFactory,
        on_closed: Any,
        on_note: Any,
    ) -> None:
        self.engine = engine
        self.config = config
        self.chain = chain
        self.journal = journal
        self.process = process
        self.imageio_opener = imageio_opener
        self.reader_factory = reader_factory
        self.on_closed = on_closed
        self.on_note = on_note


class IncrementalSession(SessionLifecycle):
    """One engine backup of a VM, served as one incremental/differential/full set."""

    def __init__(
        self,
        owner: Owner,
        kind: SetKind,
        since: str | None,
        deps: SessionDeps,
        *,
        announced: Sequence[SetEntry] = (),
    ) -> None:
        super().__init__(config=deps.config)
        self.owner = owner
        #: for ``full``: the @rhv/ listing (names, keys, sizes) this session must serve
        self.announced = {e.key: e for e in announced}
        self.kind = kind
        self.since = since
        self.deps = deps
        self.session_id = uuid.uuid4().hex[:12]
        self.backup_id = str(uuid.uuid4())
        self.error: RhvfsError | None = None
        self.started_wall = time.time()
        self.started_ns = time.time_ns()
        self.set_id = ""
        self.set_type: SetType = "full"
        self.base: ChainSet | None = None
        self.backup: Backup | None = None
        self.backup_started = False
        self.snapshot: Snapshot | None = None
        self.snapshot_description: str | None = None
        self.plans: list[DiskPlan] = []
        self.channels: dict[str, DiskChannel] = {}
        self.entries: list[SetEntry] = []
        self.entries_by_key: dict[str, SetEntry] = {}
        self.contents: dict[str, bytes] = {}
        self.manifest_name = ""
        self.coverage: dict[str, list[tuple[int, int]]] = {}
        self.handles: set[int] = set()
        self.complete = False
        self.recorded = False
        self.warnings: list[str] = []
        self.bytes_read = 0
        self._journaled = False
        self._snapshot_images: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------

    def _note_cleanup_error(self, message: str) -> None:
        self.note(message, error=True)

    def _on_closed(self) -> None:
        self.deps.on_closed(self)

    def _label(self) -> str:
        return f"{self.session_id} ({self.kind} set of {self.owner.name})"

    @property
    def grace_s(self) -> float:
        """How long the set outlives its last use: the grace period, but never shorter than
        the VFS caches a listing, so a cached listing always names files of a live set."""
        cfg = self.deps.config
        return max(cfg.grace_period, cfg.listing_ttl + 1.0)

    def disk_budget(self) -> int:
        return max(16 * 1024 * 1024, self.deps.config.prefetch_memory // max(1, len(self.plans)))

    # -- start ----------------------------------------------------------------

    async def _start(self, nursery: trio.Nursery) -> None:
        try:
            await self._start_backup(nursery)
        except trio.Cancelled:
            raise
        except VmStateError as e:
            self._fail(e)
            self.request_close()
            return
        except RhvfsError as e:
            self._fail(SessionBroken(f"{self.kind} set of VM {self.owner.name} failed: {e}"))
            self.schedule_close(0)
            return
        except Exception as e:  # a bug must not hang every reader
            log.exception("incremental session %s of %s failed", self.session_id, self.owner.name)
            self._fail(SessionBroken(f"{self.kind} set of VM {self.owner.name} failed: {e!r}"))
            self.schedule_close(0)
            return
        self.state = "ready"
        self.ready.set()
        log.info(
            "%s set %s of VM %s ready: backup %s from checkpoint %s, %d disk(s), %d bytes, in %.2fs",
            self.set_type,
            self.set_id,
            self.owner.name,
            self.backup_id,
            self.backup.from_checkpoint_id if self.backup else None,
            len(self.plans),
            sum(e.size for e in self.entries),
            time.time() - self.started_wall,
        )
        # Nobody may open anything after a listing: end the backup after the grace period.
        self.schedule_close(self.grace_s)

    def _fail(self, error: RhvfsError) -> None:
        self.state = "broken"
        self.error = error
        self.note(str(error), error=True)
        self.ready.set()

    def _base(self, vm_id: str) -> ChainSet | None:
        chain = self.deps.chain
        if self.kind == "full":
            return None
        if self.kind == "incremental":
            return chain.newest(vm_id)
        if self.kind == "differential":
            return chain.newest_full(vm_id)
        assert self.since is not None
        found = chain.by_checkpoint(vm_id, self.since)
        if found is None:
            raise NotFound(
                f"checkpoint {self.since} of VM {self.owner.name} was not recorded by rhvfs"
            )
        return found

    async def _start_backup(self, nursery: trio.Nursery) -> None:
        engine = self.deps.engine
        vm = await engine.get_vm(self.owner.id)
        if (vm.status or "unknown") not in BACKUP_OK_STATES:
            raise VmStateError(f"VM {vm.name} is {vm.status}; an engine backup needs it up or down")
        data = await self._owner_data(vm)
        disks = [a.disk for a in data.attachments if not a.disk.shareable]
        if not disks:
            raise SessionError(f"VM {vm.name} has no disks to back up")

        base = self._base(vm.id)
        if base is None and self.kind not in ("since", "full"):
            self.warn(
                f"no completed set of VM {vm.name} to start from: this {self.kind} set is a full one"
            )
        if base is not None:
            checkpoints = {c.id: c for c in await engine.list_checkpoints(vm.id)}
            cp = checkpoints.get(base.checkpoint_id or "")
            if cp is None or (cp.state or "created") != "created":
                why = "is gone from the engine" if cp is None else f"is {cp.state}"
                self.warn(
                    f"chain of VM {vm.name} is broken: checkpoint {base.checkpoint_id} {why}; "
                    f"this {self.kind} set is a full one"
                )
                base = None

        capable = [d for d in disks if d.format == "cow" and d.backup == "incremental"]
        others = [d for d in disks if d not in capable]
        reasons = {d.id: ("raw disk" if d.format != "cow" else "backup mode none") for d in others}
        backup_disks = disks if base is None else capable
        if base is not None and others:
            await self._snapshot_for(vm.id, others)
        if base is not None and not capable:
            base = None  # nothing can be incremental: a snapshot-only full set
            backup_disks = []

        self._journal()
        if backup_disks:
            self.backup = await self._begin_backup(vm.id, backup_disks, base)
            if base is not None and self.backup.from_checkpoint_id is None:
                base = None
        self.base = base
        self.set_type = (
            "full"
            if base is None
            else ("differential" if self.kind == "differential" else "incremental")
        )
        cp_id = self.backup.to_checkpoint_id if self.backup else None
        self.set_id = cp_id or self.backup_id
        modes: dict[str, str] = {}
        if self.backup is not None:
            for d in await engine.backup_disks(vm.id, self.backup_id):
                modes[d.id] = d.backup_mode or "full"

        for d in disks:
            mode = "full"
            reason = reasons.get(d.id)
            prev = base.disk(d.id) if base is not None else None
            if base is not None and d.id not in reasons:
                if modes.get(d.id) == "incremental" and prev is not None:
                    mode = "incremental"
                else:
                    reason = (
                        "new since the base set" if prev is None else "the engine reads it in full"
                    )
            if base is None and reason is None:
                reason = "full set"
            snap_image = None
            if self.snapshot is not None and d.id in reasons:
                snap_image = self._snapshot_images.get(d.id)
            plan = DiskPlan(
                disk=d,
                mode="incremental" if mode == "incremental" else "full",
                file="",
                key=self._key(f"disk:{d.id}"),
                reason=reason,
                backing_file=prev.file if prev is not None and mode == "incremental" else None,
                snapshot_image_id=snap_image,
            )
            self.plans.append(plan)

        try:
            async with trio.open_nursery() as n:
                for plan in self.plans:
                    n.start_soon(
                        self._prepare_disk, plan, prev_format_of(base, plan.disk.id), nursery
                    )
        except BaseExceptionGroup as group:
            # report the first disk's error as itself, so callers see an rhvfs error
            for exc in group.exceptions:
                if isinstance(exc, Exception):
                    raise exc from None
            raise
        self._freeze(data)

    async def _prepare_disk(
        self, plan: DiskPlan, backing_format: str, nursery: trio.Nursery
    ) -> None:
        channel = DiskChannel(self, plan)
        self.channels[plan.disk.id] = channel
        client = await channel.open()
        zero = await client.extents("zero")
        size = sum(e.length for e in zero)
        if size != plan.disk.provisioned_size:
            raise EngineError(
                f"disk {plan.disk.id}: imageio reports {size} bytes, the engine {plan.disk.provisioned_size}"
            )
        if plan.mode == "incremental":
            try:
                dirty = await client.extents("dirty")
            except ImageioError as e:
                self.warn(f"disk {plan.disk.id} has no dirty extents ({e}); reading it in full")
                plan.mode, plan.reason, plan.backing_file = "full", "no dirty extents", None
            else:
                changes = changes_from_dirty(dirty)
                plan.dirty_bytes = sum(c.length for c in changes)
                plan.delta = Qcow2Delta(
                    virtual_size=plan.disk.provisioned_size,
                    changes=changes,
                    backing_file=plan.backing_file,
                    backing_format=backing_format,
                )
        plan.file = (
            set_image_name(plan.disk.alias, plan.disk.id)
            if self.kind == "full"
            else disk_file_name(
                plan.disk.alias, plan.disk.id, self.set_id, delta=plan.delta is not None
            )
        )
        if plan.delta is None:
            plan.dirty_bytes = plan.disk.provisioned_size
            await channel.start_reader(zero, nursery=nursery)
        else:
            await channel.start_reader(
                delta_file_extents(plan.delta, zero),
                nursery=nursery,
                size=plan.delta.size,
                source=DeltaSource(plan.delta, channel),
            )

    async def _snapshot_for(self, vm_id: str, disks: list[Disk]) -> None:
        """A snapshot of the disks an incremental backup cannot include (read in full)."""
        engine = self.deps.engine
        when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        proc = self.deps.process
        desc = f"{ARTIFACT_MARKER} {self.session_id} host={proc.host} pid={proc.pid} {when}"
        self.snapshot_description = desc
        self._journal()
        self.snapshot = await engine.create_snapshot(
            vm_id, description=desc, persist_memorystate=False, disk_ids=[d.id for d in disks]
        )
        self._journal()
        snap_disks = await engine.snapshot_disks(vm_id, self.snapshot.id)
        self._snapshot_images = {d.id: d.image_id for d in snap_disks if d.image_id}

    async def _begin_backup(self, vm_id: str, disks: list[Disk], base: ChainSet | None) -> Backup:
        engine = self.deps.engine
        from_cp = base.checkpoint_id if base is not None else None
        desc = f"{ARTIFACT_MARKER} {self.session_id} {self.kind}"
        self.deps.chain.add_pending(
            PendingBackup(
                backup_id=self.backup_id,
                vm_id=vm_id,
                process=self.deps.process,
                started=datetime.now(UTC).isoformat(),
            )
        )
        self.backup_started = True
        started = time.monotonic()
        try:
            backup = await engine.start_backup(
                vm_id,
                [d.id for d in disks],
                from_checkpoint_id=from_cp,
                description=desc,
                backup_id=self.backup_id,
            )
        except Conflict:
            raise
        except EngineError as e:
            if from_cp is None:
                raise
            # The engine refused the checkpoint (gone, invalid, bitmap missing): full set.
            self.warn(
                f"chain of VM {self.owner.name} is broken: the engine refused checkpoint "
                f"{from_cp} ({e}); this {self.kind} set is a full one"
            )
            self.deps.chain.remove_pending(self.backup_id)
            self.backup_id = str(uuid.uuid4())
            return await self._begin_backup(vm_id, disks, None)
        log.info(
            "backup %s of VM %s (from checkpoint %s) ready in %.2fs, to checkpoint %s",
            backup.id,
            self.owner.name,
            from_cp,
            time.monotonic() - started,
            backup.to_checkpoint_id,
        )
        return backup

    async def _owner_data(self, vm: Any) -> OwnerData:
        engine = self.deps.engine
        atts = await engine.disk_attachments(vm.id)
        nics = await engine.vm_nics(vm.id)
        ovf = await engine.vm_ovf(vm.id)
        xml = await engine.vm_xml(vm.id)
        clusters = {c.id: c.name for c in await engine.list_clusters()}
        sds = {s.id: s.name for s in await engine.list_storage_domains()}
        return OwnerData(
            kind="vm",
            entity=vm,
            attachments=tuple(atts),
            nics=tuple(nics),
            ovf=ovf.encode("utf-8") if isinstance(ovf, str) else bytes(ovf),
            xml=xml.encode("utf-8") if isinstance(xml, str) else bytes(xml),
            cluster_names=clusters,
            storage_domain_names=sds,
        )

    def _key(self, inner: str) -> str:
        """Keys of ``full`` sets are @rhv/'s own (``config:vm.ovf``, ``disk:<id>``)."""
        return inner if self.kind == "full" else set_key(self.set_id, inner)

    def _freeze(self, data: OwnerData) -> None:
        if self.kind == "full":
            names = {"ovf": OVF_NAME, "xml": XML_NAME, "manifest": MANIFEST_NAME}
        else:
            names = config_names(self.set_id)
        self.manifest_name = names["manifest"]
        manifest = self._manifest(data, names)
        mtime = self.started_ns
        contents = {names["ovf"]: data.ovf, names["xml"]: data.xml, names["manifest"]: manifest}
        if self.kind == "full":
            # serve exactly what the @rhv/ listing announced: padded config, same sizes
            for n in list(contents):
                ann = self.announced.get(self._key(f"config:{n}"))
                if ann is None:
                    raise SessionError(f"{n} of {self.owner.name} was not in the @rhv/ listing")
                contents[n] = pad_to(contents[n], ann.size, what=f"{n} of {self.owner.name}")
            for plan in self.plans:
                ann = self.announced.get(plan.key)
                if ann is None or ann.size != plan.disk.provisioned_size:
                    raise SessionError(
                        f"disk {plan.disk.id} of {self.owner.name} changed since it was listed"
                    )
        entries = [
            SetEntry(
                name=n,
                key=self._key(f"config:{n}"),
                size=len(c),
                blocks=blocks_for(len(c)),
                mtime_ns=mtime,
            )
            for n, c in contents.items()
        ]
        self.contents = {self._key(f"config:{n}"): c for n, c in contents.items()}
        for plan in self.plans:
            size = plan.delta.size if plan.delta is not None else plan.disk.provisioned_size
            allocated = plan.delta.size if plan.delta is not None else (plan.disk.actual_size or 0)
            entries.append(
                SetEntry(
                    name=plan.file,
                    key=plan.key,
                    size=size,
                    blocks=max(1, blocks_for(allocated)) if size else 0,
                    mtime_ns=mtime,
                    disk_id=plan.disk.id,
                )
            )
        self.entries = entries
        self.entries_by_key = {e.key: e for e in entries}
        self.coverage = {e.key: [] for e in entries}

    def _manifest(self, data: OwnerData, names: dict[str, str]) -> bytes:
        disks = [p.disk for p in self.plans]
        raw = build_manifest(
            data,
            disks=disks,
            file_names={p.disk.id: p.file for p in self.plans},
            snapshot_id=self.snapshot.id if self.snapshot else None,
            backup_time=datetime.fromtimestamp(self.started_wall, UTC),
            session_id=self.session_id,
        )
        doc = json.loads(raw)
        base = self.base
        doc["set_type"] = self.set_type
        doc["set_id"] = self.set_id
        doc["backup_id"] = self.backup.id if self.backup else None
        doc["checkpoint_id"] = self.backup.to_checkpoint_id if self.backup else None
        doc["from_checkpoint_id"] = base.checkpoint_id if base else None
        doc["to_checkpoint_id"] = doc["checkpoint_id"]
        doc["parent_set"] = (
            {"set_id": base.set_id, "set_type": base.set_type, "manifest": base.manifest_file}
            if base
            else None
        )
        doc["full_set_id"] = base.full_set_id if base else self.set_id
        doc["config_files"] = {
            "ovf": names["ovf"],
            "api_xml": names["xml"],
            "manifest": names["manifest"],
        }
        doc["warnings"] = list(self.warnings)
        by_id = {p.disk.id: p for p in self.plans}
        for d in doc["disks"]:
            p = by_id[d["id"]]
            d["backup_mode"] = p.mode
            d["file_format"] = "qcow2" if p.delta is not None else "raw"
            d["backing_file"] = p.backing_file if p.delta is not None else None
            d["full_reason"] = p.reason if p.mode == "full" else None
            d["dirty_bytes"] = p.dirty_bytes
        return (json.dumps(doc, indent=2) + "\n").encode("utf-8")

    # -- reads ----------------------------------------------------------------

    async def read(self, key: str, offset: int, size: int, *, handle_id: int) -> bytes:
        if self.state != "ready":
            if self.error is not None:
                raise self.error
            raise SessionClosed(f"set {self.set_id} of {self.owner.name} is {self.state}")
        entry = self.entries_by_key.get(key)
        if entry is None:
            raise NotFound(f"{key} is not part of set {self.set_id} of {self.owner.name}")
        if offset >= entry.size or size <= 0:
            return b""
        size = min(size, entry.size - offset)
        content = self.contents.get(key)
        if content is not None:
            data = content[offset : offset + size]
        else:
            assert entry.disk_id is not None
            channel = self.channels[entry.disk_id]
            reader = channel.reader
            if reader is None:
                raise SessionClosed(f"disk {entry.disk_id} of set {self.set_id} is closed")
            try:
                delta = channel.plan.delta
                if delta is None:
                    data = await reader.read(offset, size, handle_id=handle_id)
                else:
                    # metadata from memory; data clusters through the reader in file
                    # offsets, so sequential reads of the delta prefetch its scattered
                    # guest ranges ahead
                    parts = []
                    meta_end = min(offset + size, delta.metadata_size)
                    if offset < meta_end:
                        parts.append(await delta.read(offset, meta_end - offset, _no_fetch))
                    start = max(offset, delta.metadata_size)
                    if start < offset + size:
                        parts.append(
                            await reader.read(start, offset + size - start, handle_id=handle_id)
                        )
                    data = b"".join(parts)
            except (trio.Cancelled, SessionClosed):
                raise
            except RhvfsError as e:
                self.note(f"read of {entry.name} at {offset}+{size}: {e}", error=True)
                raise
            if len(data) != size:
                raise EngineError(f"read {len(data)} bytes for {size} at {offset} of {entry.name}")
        _merge_into(self.coverage[key], offset, offset + len(data))
        self.bytes_read += len(data)
        return data

    def fully_read(self) -> bool:
        """Every file of the set was read from its first to its last byte."""
        return all(e.size == 0 or self.coverage.get(e.key) == [(0, e.size)] for e in self.entries)

    def on_last_release(self) -> None:
        if self.state == "ready" and self.fully_read():
            if not self.complete:
                log.info(
                    "%s set %s of VM %s read completely",
                    self.set_type,
                    self.set_id,
                    self.owner.name,
                )
            self.complete = True
        self.schedule_close(self.grace_s)

    # -- cleanup --------------------------------------------------------------

    async def _cleanup(self) -> None:
        """Finalize transfers and the backup, remove the snapshot, record a complete set."""
        channels = list(self.channels.values())
        self.channels = {}
        async with trio.open_nursery() as n:
            for ch in channels:
                n.start_soon(self._close_channel, ch)
        finalized = True
        if self.backup_started:
            finalized = await self._finalize_backup()
        if self.snapshot_description is not None:
            await self._remove_snapshot()
        if self._journaled:
            mine = [e for e in self.deps.journal.entries() if e.session_id == self.session_id]
            if not mine or (not mine[0].transfer_ids and self.snapshot_description is None):
                self.deps.journal.remove(self.session_id)
                self._journaled = False
        if self.complete and not finalized:
            self.note(
                f"set {self.set_id} was read completely but its backup did not finalize: "
                "the chain does not advance",
                error=True,
            )
        if self.complete and finalized and not self.recorded:
            self._record()

    def _record(self) -> None:
        base = self.base
        self.deps.chain.record(
            ChainSet(
                set_id=self.set_id,
                owner_id=self.owner.id,
                set_type=self.set_type,
                checkpoint_id=self.backup.to_checkpoint_id if self.backup else None,
                from_checkpoint_id=base.checkpoint_id if base else None,
                parent_set_id=base.set_id if base else None,
                full_set_id=base.full_set_id if base else self.set_id,
                manifest_file=self.manifest_name,
                completed=datetime.now(UTC).isoformat(),
                disks=tuple(
                    ChainDisk(
                        disk_id=p.disk.id,
                        file=p.file,
                        file_format="qcow2" if p.delta is not None else "raw",
                        mode=p.mode,
                        backing_file=p.backing_file if p.delta is not None else None,
                    )
                    for p in self.plans
                ),
            )
        )
        self.recorded = True

    async def _close_channel(self, ch: DiskChannel) -> None:
        try:
            await ch.aclose()
        except Exception as e:
            self.note(f"closing transfer of disk {ch.plan.disk.id}: {e}", error=True)

    async def _finalize_backup(self) -> bool:
        cfg = self.deps.config
        deadline = trio.current_time() + cfg.system_timeout
        delay = max(cfg.system_interval, 0.05)
        while True:
            try:
                await self.deps.engine.finalize_backup(self.owner.id, self.backup_id)
                self.deps.chain.remove_pending(self.backup_id)
                self.backup_started = False
                return True
            except NotFound:
                self.deps.chain.remove_pending(self.backup_id)
                self.backup_started = False
                return self.backup is not None
            except Conflict as e:
                if trio.current_time() + delay > deadline:
                    self.note(f"finalizing backup {self.backup_id} failed: {e}", error=True)
                    return False
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except EngineError as e:
                self.note(f"finalizing backup {self.backup_id} failed: {e}", error=True)
                self.deps.chain.remove_pending(self.backup_id)
                return False

    async def _remove_snapshot(self) -> None:
        engine = self.deps.engine
        cfg = self.deps.config
        snap_id = self.snapshot.id if self.snapshot else None
        if snap_id is None:
            return
        deadline = trio.current_time() + cfg.system_timeout
        delay = max(cfg.system_interval, 0.05)
        while True:
            try:
                await engine.remove_snapshot(self.owner.id, snap_id)
            except NotFound:
                pass
            except EngineError as e:
                if trio.current_time() + delay > deadline:
                    self.note(f"removing snapshot {snap_id} failed: {e}", error=True)
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.snapshot = None
            self.snapshot_description = None
            return

    def _journal(self) -> None:
        self.deps.journal.put(
            JournalEntry(
                session_id=self.session_id,
                process=self.deps.process,
                owner_kind=self.owner.kind,
                owner_id=self.owner.id,
                owner_name=self.owner.name,
                started=datetime.fromtimestamp(self.started_wall, UTC).isoformat(),
                snapshot_description=self.snapshot_description,
                snapshot_id=self.snapshot.id if self.snapshot else None,
                transfer_ids=tuple(c.transfer.id for c in self.channels.values() if c.transfer),
            )
        )
        self._journaled = True

    # -- reporting ------------------------------------------------------------

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.note(message, error=False)

    def note(self, message: str, *, error: bool) -> None:
        log.warning("%s set of %s: %s", self.kind, self.owner.name, message)
        self.deps.on_note(self.owner, message, error)

    def status(self) -> dict[str, Any]:
        return {
            "owner": {"kind": self.owner.kind, "id": self.owner.id, "name": self.owner.name},
            "set_kind": self.kind,
            "set_type": self.set_type,
            "set_id": self.set_id,
            "backup_id": self.backup_id if self.backup_started or self.backup else None,
            "from_checkpoint_id": self.base.checkpoint_id if self.base else None,
            "state": self.state,
            "handles": len(self.handles),
            "bytes_read": self.bytes_read,
            "complete": self.complete,
            "warnings": list(self.warnings),
            "disks": [ch.statistics() for ch in self.channels.values()],
        }


def prev_format_of(base: ChainSet | None, disk_id: str) -> str:
    prev = base.disk(disk_id) if base is not None else None
    return "raw" if prev is None or prev.file_format == "raw" else "qcow2"


class IncrementalManager:
    """Incremental, differential and since-checkpoint sets of VMs, one session per VM."""

    def __init__(
        self,
        engine: EngineWithBackups,
        config: Config,
        *,
        chain: ChainState,
        journal: Journal,
        imageio_opener: ImageioOpener | None = None,
        reader_factory: ReaderFactory | None = None,
        cleanup_on_start: bool = True,
    ) -> None:
        self.engine = engine
        self.config = config
        self.chain = chain
        self.journal = journal
        self._process = procid.current()
        self._opener = imageio_opener or default_imageio_opener(config)
        self._reader_factory = reader_factory or default_reader_factory(config)
        self._cleanup_on_start = cleanup_on_start
        self._nursery: trio.Nursery | None = None
        self._sessions: dict[str, IncrementalSession] = {}
        self._handles: dict[int, tuple[IncrementalSession, str]] = {}
        self._handle_ids = itertools.count(1)
        self._notes: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_NOTES)
        self._started = 0
        self._completed = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._cleanup_on_start:
                    nursery.start_soon(self.finalize_leftovers)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def finalize_leftovers(self) -> list[str]:
        """Finalize engine backups started by rhvfs processes that are gone.

        A backup refuses to finalize (409) while its transfers are unfinished; the
        session gc cancels those, so a conflict is retried until ``system_timeout``.
        """
        done: list[str] = []
        cfg = self.config

        async def finalize(p: PendingBackup) -> None:
            deadline = trio.current_time() + cfg.system_timeout
            delay = max(cfg.system_interval, 0.05)
            while True:
                try:
                    await self.engine.finalize_backup(p.vm_id, p.backup_id)
                except NotFound:
                    pass
                except Conflict as e:
                    if trio.current_time() + delay > deadline:
                        log.info("leftover backup %s of VM %s: %s", p.backup_id, p.vm_id, e)
                        return
                    await trio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                except RhvfsError as e:
                    log.info("leftover backup %s of VM %s: %s", p.backup_id, p.vm_id, e)
                    return
                self.chain.remove_pending(p.backup_id)
                done.append(f"finalized leftover backup {p.backup_id} of VM {p.vm_id}")
                log.info("%s", done[-1])
                return

        async with trio.open_nursery() as nursery:
            for p in self.chain.pending():
                if p.process != self._process and procid.is_alive(p.process) is False:
                    nursery.start_soon(finalize, p)
        return done

    # -- listings -------------------------------------------------------------

    def since_checkpoints(self, owner: Owner) -> list[str]:
        """Checkpoints rhvfs recorded for ``owner`` (``@rhv-since/<id>/``), oldest first."""
        if owner.kind != "vm":
            return []
        seen: list[str] = []
        for s in self.chain.sets(owner.id):
            if s.checkpoint_id and s.checkpoint_id not in seen:
                seen.append(s.checkpoint_id)
        return seen

    async def list_set(
        self, owner: Owner, kind: SetKind, since: str | None = None
    ) -> list[SetEntry]:
        """Start or join ``owner``'s set of ``kind``; its files (sizes exact)."""
        session = await self._session(owner, kind, since)
        return list(session.entries)

    async def _session(
        self,
        owner: Owner,
        kind: SetKind,
        since: str | None,
        announced: Sequence[SetEntry] = (),
    ) -> IncrementalSession:
        if owner.kind != "vm":
            raise NotFound(f"templates have no {kind} sets")
        if kind == "since" and since not in self.since_checkpoints(owner):
            raise NotFound(f"checkpoint {since} of {owner.name} was not recorded by rhvfs")
        if self._nursery is None:
            raise SessionError("the incremental manager is not running")
        deadline = trio.current_time() + max(self.config.system_timeout, 1.0)
        while True:
            session = self._sessions.get(owner.id)
            if session is None:
                session = self._new_session(owner, kind, since, announced)
                await self._nursery.start(session.run)
            await session.ready.wait()
            if session.state == "ready" and (session.kind, session.since) == (kind, since):
                if not session.handles:
                    session.schedule_close(session.grace_s)
                return session
            if session.state == "broken" and (session.kind, session.since) == (kind, since):
                assert session.error is not None
                raise session.error
            # Another kind of set (or a closing one) holds the VM's only backup: wait for it.
            if trio.current_time() >= deadline:
                raise SessionError(
                    f"a {session.kind} set of VM {owner.name} is still being read; try again later"
                )
            if session.state == "ready" and not session.handles:
                session.request_close()
            with trio.move_on_at(deadline):
                await session.closed.wait()

    def _new_session(
        self, owner: Owner, kind: SetKind, since: str | None, announced: Sequence[SetEntry] = ()
    ) -> IncrementalSession:
        deps = SessionDeps(
            engine=self.engine,
            config=self.config,
            chain=self.chain,
            journal=self.journal,
            process=self._process,
            imageio_opener=self._opener,
            reader_factory=self._reader_factory,
            on_closed=self._closed,
            on_note=self._note,
        )
        session = IncrementalSession(owner, kind, since, deps, announced=announced)
        self._sessions[owner.id] = session
        self._started += 1
        return session

    def _closed(self, session: IncrementalSession) -> None:
        if self._sessions.get(session.owner.id) is session:
            del self._sessions[session.owner.id]
        for h in [h for h, (s, _) in self._handles.items() if s is session]:
            del self._handles[h]
        if session.recorded:
            self._completed += 1

    def _note(self, owner: Owner, message: str, error: bool) -> None:
        self._notes.append(
            {
                "time": datetime.now(UTC).isoformat(),
                "owner": owner.name,
                "level": "error" if error else "warning",
                "message": message,
            }
        )

    # -- @rhv/ through the backup API ----------------------------------------

    async def backs_up_with_checkpoints(self, owner: Owner) -> bool:
        """Whether ``@rhv/`` of ``owner`` is read from a full engine backup: a VM that is up,
        with a disk that supports incremental backup.

        Down VMs keep the snapshot-based full read: a backup adds a checkpoint bitmap
        to their volumes, which changes the disks' allocated size and with it the stable
        mtime that tools like restic rely on for unchanged VMs. Their chain starts with
        the first ``@rhv-incremental/`` set (a full one).
        """
        if owner.kind != "vm":
            return False
        vm = await self.engine.get_vm(owner.id)
        if vm.status != "up":  # the engine backs up VMs that are up or down, not paused ones
            return False
        atts = await self.engine.disk_attachments(owner.id)
        return any(a.disk.format == "cow" and a.disk.backup == "incremental" for a in atts)

    async def open_full(self, owner: Owner, key: str, announced: Sequence[SetEntry]) -> int:
        """Open ``key`` of ``owner``'s ``@rhv/`` served by a full engine backup.

        ``announced`` is the ``@rhv/`` listing (the BackupManager's): the set serves
        the same names, keys and sizes, with the checkpoint in its manifest, and
        once read completely it is the full set later incrementals start from.
        """
        session = self._sessions.get(owner.id)
        if session is None or session.kind != "full" or session.state != "ready":
            session = await self._session(owner, "full", None, announced)
        return await self.open(owner, key)

    # -- handles --------------------------------------------------------------

    async def open(self, owner: Owner, key: str) -> int:
        session = self._sessions.get(owner.id)
        if session is None or session.state != "ready" or key not in session.entries_by_key:
            raise NotFound(
                f"{key} is not part of a live set of {owner.name} (list the set directory again)"
            )
        session.cancel_grace()
        handle = next(self._handle_ids)
        session.handles.add(handle)
        self._handles[handle] = (session, key)
        return handle

    async def read(self, handle: int, offset: int, size: int) -> bytes:
        try:
            session, key = self._handles[handle]
        except KeyError:
            raise SessionClosed(f"handle {handle} is not open") from None
        return await session.read(key, offset, size, handle_id=handle)

    async def release(self, handle: int) -> None:
        item = self._handles.pop(handle, None)
        if item is None:
            return
        session = item[0]
        session.handles.discard(handle)
        for ch in session.channels.values():
            forget = getattr(ch.reader, "forget_handle", None)
            if forget is not None:
                forget(handle)
        if not session.handles:
            session.on_last_release()

    async def aclose_all(self) -> None:
        for s in list(self._sessions.values()):
            s.request_close()
        for s in list(self._sessions.values()):
            await s.closed.wait()

    def status(self) -> dict[str, Any]:
        return {
            "sessions": [s.status() for s in self._sessions.values()],
            "totals": {"sets_started": self._started, "sets_completed": self._completed},
            "notes": list(self._notes),
        }
