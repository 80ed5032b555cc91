"""One engine backup of a VM, served as one incremental/differential/full set.

``IncrementalSession`` starts the VM backup (``from_checkpoint_id`` = the base
set's checkpoint), plans every disk (delta or full data, see
``incremental_channel``), freezes the set's listing and configuration files,
serves reads while tracking which bytes of each file were read, and on close
finalizes the transfers and the backup, removes the fallback snapshot and,
for a set read completely, records it in the chain state.

A VM with a disk the engine cannot back up incrementally gets its incremental
sets from a snapshot chain instead (``_start_snapshot_chain``): no engine
backup; one snapshot of every disk; each disk's volume of that snapshot (the
layer written since the snapshot the chain kept) read alone with a shallow
transfer, its allocated extents the delta's changes. A completed set records
its snapshot in the chain (kept: no longer this session's to remove, and gone
from the journal) and then removes the one it replaces; an incomplete one
removes its own snapshot like any other. Its task, close
request and grace timer are the shared ``SessionLifecycle``; what the cleanup
leaves (``_leftovers``) the manager retries in the background.

Invariants between awaits: ``entries`` never change once the session is ready;
``coverage`` only grows; ``complete`` is set only on a last release with every
file read from its first to its last byte; the chain records a set only when
it is complete and its backup finalized; a snapshot-chain set's snapshot is
either removed or recorded as kept, never both, and the snapshot it replaces is
removed only after it was recorded.

Must not: know about inodes or pyfuse3, handle ids beyond counting them, or
other VMs' sessions (the manager owns those).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import trio

from rhvfs.backupset import (
    ConfigFiles,
    ConfigKey,
    ConfigRole,
    DiskKey,
    OwnerData,
    ParentSet,
    Qcow2Delta,
    SetFileKey,
    SetKind,
    SetLineage,
    SetType,
    build_manifest,
    config_file_names,
    image_file_name,
    pad_to,
)
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
    internal_error,
)
from rhvfs.intervals import Intervals
from rhvfs.sessions.core._cleanup import finalize_backup, remove_snapshot
from rhvfs.sessions.core._gather import gather
from rhvfs.sessions.core._gc import artifact_description, snapshot_description
from rhvfs.sessions.core._journal import session_entry
from rhvfs.sessions.core._lifecycle import SessionLifecycle, SessionServices
from rhvfs.sessions.core._limits import Slot
from rhvfs.sessions.core._model import Owner, SetEntry, blocks_for, clip_read
from rhvfs.sessions.core._owner_data import OwnerDataFetcher
from rhvfs.sessions.core._pending import CleanupStep, backup_step, snapshot_step
from rhvfs.sessions.core._ports import (
    EngineLike,
)
from rhvfs.sessions.core._transfer_channel import close_channels, park_channels
from rhvfs.sessions.incremental._chainstate import (
    ChainDisk,
    ChainSet,
    ChainState,
    PendingBackup,
)
from rhvfs.sessions.incremental._channel import IncrementalDiskChannel, SetDiskPlan
from rhvfs.sessions.incremental._delta import (
    DeltaSource,
    changes_from_dirty,
    changes_from_layer,
    delta_file_extents,
    layer_cluster_size,
)
from rhvfs.sessions.incremental._retention import prune_checkpoints

log = logging.getLogger(__name__)

BACKUP_OK_STATES = frozenset({"up", "down"})  # what the engine backs up


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
    async def remove_checkpoint(self, vm_id: str, checkpoint_id: str) -> None: ...


async def _no_fetch(guest: int, length: int) -> bytes:
    raise AssertionError(f"metadata reads fetch no guest data ({guest}+{length})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class IncrementalSessionDeps(SessionServices):
    """What an incremental session needs from its manager."""

    engine: EngineWithBackups
    chain: ChainState
    fetch_owner_data: OwnerDataFetcher
    on_closed: Callable[[IncrementalSession], None]
    on_note: Callable[[Owner, str, bool], None]


class IncrementalSession(SessionLifecycle):
    """One engine backup of a VM, served as one incremental/differential/full set."""

    def __init__(
        self,
        owner: Owner,
        kind: SetKind,
        since: str | None,
        deps: IncrementalSessionDeps,
        *,
        announced: Sequence[SetEntry] = (),
        read_id: str | None = None,
        slot: Slot | None = None,
    ) -> None:
        # ``read_id``: for a ``full`` set read through the router, the read it serves; the
        # backup id and the set id are the read id, the configuration is the router's.
        super().__init__(
            owner,
            config=deps.config,
            read_id=read_id,
            cleanups=deps.cleanups,
            limits=deps.limits,
            slot=slot,
        )
        #: a handle was opened at least once (a listing alone ends after the grace period)
        self.ever_opened = False
        #: the router read the set's configuration files completely (read-bound sets)
        self.config_read = False
        #: for ``full``: the @rhv/ listing (names, keys, sizes) this session must serve
        self.announced = {e.key: e for e in announced}
        self.kind = kind
        self.since = since
        self.deps = deps
        self.session_id = uuid.uuid4().hex[:12]
        self.backup_id = read_id or str(uuid.uuid4())
        self.set_id = ""
        self.set_type = SetType.FULL
        self.base: ChainSet | None = None
        self.backup: Backup | None = None
        self.backup_started = False
        self.snapshot: Snapshot | None = None
        self.snapshot_description: str | None = None
        self.plans: list[SetDiskPlan] = []
        self.channels: dict[str, IncrementalDiskChannel] = {}
        self.entries: list[SetEntry] = []
        self.entries_by_key: dict[str, SetEntry] = {}
        self.contents: dict[str, bytes] = {}
        self.manifest_name = ""
        self.coverage: dict[str, Intervals] = {}  # key -> bytes read so far
        self.handles: set[int] = set()
        self.complete = False
        self.recorded = False
        self.warnings: list[str] = []
        self._journaled = False
        self._snapshot_images: dict[str, str] = {}
        #: a set of the snapshot chain: its snapshot is kept once the set is complete
        self.snapshot_chain = False
        #: the snapshot the chain kept before this set (removed once this one is kept)
        self._superseded_snapshot: str | None = None
        #: the VM's other snapshots right after this set's was taken (for the chain)
        self._snapshots_before: tuple[str, ...] = ()
        #: this set's places among the mount's transfers (one request for all its disks)
        self._transfers: Slot | None = None

    # -- lifecycle ------------------------------------------------------------

    def _note_cleanup_error(self, message: str) -> None:
        self.note(message, error=True)

    def _on_closed(self) -> None:
        self.deps.on_closed(self)

    def _label(self) -> str:
        return f"{self.session_id} ({self.kind} set of {self.owner.name})"

    def _queue_label(self) -> dict[str, Any]:
        return {
            "owner": {"kind": self.owner.kind, "id": self.owner.id, "name": self.owner.name},
            "session_id": self.session_id,
            "set_kind": str(self.kind),
            "read_id": self.read_id,
        }

    async def _park(self) -> None:
        await park_channels(self.channels.values())

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
            self._fail(
                SessionBroken(
                    f"{self.kind} set of VM {self.owner.name} failed: {internal_error(e)}"
                )
            )
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
        if found is None or found.checkpoint_removed:
            raise NotFound(
                f"checkpoint {self.since} of VM {self.owner.name} was not recorded by rhvfs"
                if found is None
                else f"checkpoint {self.since} of VM {self.owner.name} was removed "
                "(keep_checkpoints)"
            )
        return found

    async def _start_backup(self, nursery: trio.Nursery) -> None:
        engine = self.deps.engine
        vm = await engine.get_vm(self.owner.id)
        if (vm.status or "unknown") not in BACKUP_OK_STATES:
            raise VmStateError(f"VM {vm.name} is {vm.status}; an engine backup needs it up or down")
        data = await self.deps.fetch_owner_data(self.owner, vm)
        disks = [a.disk for a in data.attachments if not a.disk.shareable]
        if not disks:
            raise SessionError(f"VM {vm.name} has no disks to back up")

        capable = [d for d in disks if d.format == "cow" and d.backup == "incremental"]
        others = [d for d in disks if d not in capable]
        reasons = {d.id: ("raw disk" if d.format != "cow" else "backup mode none") for d in others}
        if self.kind == "incremental" and others:
            await self._start_snapshot_chain(vm.id, vm.name, disks, reasons)
            await self._open_disks(data, nursery)
            return

        base = self._base(vm.id)
        if base is None and self.kind not in ("since", "full"):
            self.warn(
                f"no completed set of VM {vm.name} to start from: this {self.kind} set is a full one",
                expected=True,
            )
        if base is not None and base.checkpoint_removed:
            self.warn(
                f"checkpoint {base.checkpoint_id} of the base set {base.set_id} of VM {vm.name} "
                f"was removed (keep_checkpoints); this {self.kind} set is a full one"
            )
            base = None
        if base is not None:
            checkpoints = {c.id: c for c in await engine.list_checkpoints(vm.id)}
            cp = checkpoints.get(base.checkpoint_id or "")
            if not self._base_intact(
                vm.name,
                f"checkpoint {base.checkpoint_id}",
                None if cp is None else cp.state or "created",
                usable="created",
            ):
                base = None

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
            SetType.FULL
            if base is None
            else (SetType.DIFFERENTIAL if self.kind == "differential" else SetType.INCREMENTAL)
        )
        cp_id = self.backup.to_checkpoint_id if self.backup else None
        self.set_id = self.read_id or cp_id or self.backup_id
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
            plan = SetDiskPlan(
                disk=d,
                mode="incremental" if mode == "incremental" else "full",
                file="",
                key=self._key(DiskKey(d.id)),
                reason=reason,
                backing_file=prev.file if prev is not None and mode == "incremental" else None,
                snapshot_image_id=snap_image,
            )
            self.plans.append(plan)
        await self._open_disks(data, nursery)

    def _base_intact(self, vm_name: str, what: str, state: str | None, *, usable: str) -> bool:
        """Whether the base set's artifact on the engine (``what``: its checkpoint, or its
        kept snapshot) is there (``state`` None: gone) and ``usable``; if not, warn that the
        VM's chain is broken: this set is a full one."""
        if state == usable:
            return True
        why = "is gone from the engine" if state is None else f"is {state}"
        self.warn(
            f"chain of VM {vm_name} is broken: {what} {why}; this {self.kind} set is a full one"
        )
        return False

    async def _start_snapshot_chain(
        self, vm_id: str, vm_name: str, disks: list[Disk], reasons: dict[str, str]
    ) -> None:
        """Plan an incremental set of the snapshot chain (a VM with disks the engine cannot
        back up incrementally): one snapshot of every disk, one point in time for all.

        The base is the newest set whose snapshot is still kept on the engine. The volume
        of the new snapshot is the layer written since the kept one: read alone (shallow),
        its allocated ranges are the changes, served as a delta on the base set's file.
        Disks without a layer over the kept snapshot (new, resized) and a set without a
        usable base are read in full. The kept snapshot is replaced once the set completes.
        """
        engine = self.deps.engine
        self.snapshot_chain = True
        base = self.deps.chain.newest_kept(vm_id)
        self._superseded_snapshot = base.snapshot_id if base is not None else None
        prev_disks: dict[str, Disk] = {}
        if base is None:
            self.warn(
                f"no completed snapshot-chain set of VM {vm_name} to start from: "
                "this incremental set is a full one",
                expected=True,
            )
        else:
            snaps = {x.id: x for x in await engine.list_snapshots(vm_id)}
            kept = snaps.get(base.snapshot_id or "")
            if not self._base_intact(
                vm_name,
                f"its kept snapshot {base.snapshot_id}",
                None if kept is None else kept.status or "ok",
                usable="ok",
            ):
                base = None
            else:
                assert kept is not None  # it is there: its state is "ok"
                prev_disks = {d.id: d for d in await engine.snapshot_disks(vm_id, kept.id)}
        await self._snapshot_for(vm_id, disks)
        assert self.snapshot is not None
        others = [
            x.id
            for x in await engine.list_snapshots(vm_id)
            if x.id != self.snapshot.id and (x.type or "regular") != "active"
        ]
        self._snapshots_before = tuple(others)
        if base is not None:
            known = {base.snapshot_id, *base.snapshots_before}
            later = [x for x in others if x not in known]
            if later:
                # Its volume holds what was written since it was taken: the new snapshot's
                # own layer then lacks what came between the kept snapshot and that one.
                self.warn(
                    f"chain of VM {vm_name} is broken: snapshot {later[0]} was taken after "
                    f"the kept snapshot {base.snapshot_id}; this incremental set is a full one"
                )
                base = None
        self.base = base
        self.set_type = SetType.FULL if base is None else SetType.INCREMENTAL
        self.set_id = self.backup_id
        for d in disks:
            prev = base.disk(d.id) if base is not None else None
            before = prev_disks.get(d.id)
            reason: str | None = "full set"
            if base is not None:
                if prev is None or before is None:
                    reason = "new since the base set"
                elif before.provisioned_size != d.provisioned_size:
                    reason = "resized since the base set"
                else:
                    reason = None
            self.plans.append(
                SetDiskPlan(
                    disk=d,
                    mode="full" if reason else "incremental",
                    file="",
                    key=self._key(DiskKey(d.id)),
                    reason=reason,
                    backing_file=prev.file if prev is not None and reason is None else None,
                    snapshot_image_id=self._snapshot_images.get(d.id),
                    shallow=reason is None,
                )
            )
            if self._snapshot_images.get(d.id) is None:
                raise EngineError(f"snapshot {self.snapshot.id} has no volume of disk {d.id}")
        log.info(
            "snapshot-chain set %s of VM %s: snapshot %s, base %s (kept snapshot %s); "
            "disks without incremental backup: %s",
            self.set_id,
            vm_name,
            self.snapshot.id,
            base.set_id if base else None,
            base.snapshot_id if base else None,
            reasons,
        )

    async def _open_disks(self, data: OwnerData, nursery: trio.Nursery) -> None:
        """Open every planned disk's transfer and reader, then freeze the set's listing."""
        base = self.base
        limits = self.deps.limits
        if limits is not None and self.plans:
            # The backup opens every disk's transfer at once: one request for all of them
            # (clamped to max_transfers), so two sets never hold part of what each needs.
            self._transfers = await limits.transfers.acquire(
                {**self._queue_label(), "disks": len(self.plans)}, count=len(self.plans)
            )
        await gather(
            *(
                functools.partial(
                    self._prepare_disk, plan, prev_format_of(base, plan.disk.id), nursery
                )
                for plan in self.plans
            )
        )
        self._freeze(data)

    async def _prepare_disk(
        self, plan: SetDiskPlan, backing_format: str, nursery: trio.Nursery
    ) -> None:
        channel = IncrementalDiskChannel(self, plan)
        channel.group_slot = self._transfers
        self.channels[plan.disk.id] = channel
        client = await channel.open()
        zero = await client.extents("zero")
        size = sum(e.length for e in zero)
        if size != plan.disk.provisioned_size:
            raise EngineError(
                f"disk {plan.disk.id}: imageio reports {size} bytes, the engine {plan.disk.provisioned_size}"
            )
        if plan.mode == "incremental" and plan.shallow:
            try:
                cluster = layer_cluster_size(zero)
            except ValueError as e:
                raise EngineError(f"disk {plan.disk.id}: the snapshot layer: {e}") from e
            changes = changes_from_layer(zero)
            plan.dirty_bytes = sum(c.length for c in changes)
            plan.delta = Qcow2Delta(
                virtual_size=plan.disk.provisioned_size,
                changes=changes,
                backing_file=plan.backing_file,
                backing_format=backing_format,
                cluster_size=cluster,
            )
        elif plan.mode == "incremental":
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
        plan.file = image_file_name(
            plan.disk.alias,
            plan.disk.id,
            None if self.kind == "full" else self.set_id,
            delta=plan.delta is not None,
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
        """A snapshot of ``disks``: those an incremental backup cannot include (read in
        full), or every disk of a snapshot-chain set."""
        engine = self.deps.engine
        desc = snapshot_description(
            self.session_id,
            self.deps.process,
            datetime.now(UTC),
            owner=self.deps.journal.installation.ownership(),
        )
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
        owner = self.deps.journal.installation.ownership()
        now = datetime.now(UTC)
        desc = artifact_description(
            self.session_id, self.deps.process, now, owner=owner, kind=self.kind
        )
        self.deps.chain.add_pending(
            PendingBackup(
                backup_id=self.backup_id,
                vm_id=vm_id,
                process=self.deps.process,
                started=now.isoformat(),
                installation=owner.installation,
                instance=owner.instance,
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
        if backup.to_checkpoint_id:
            # rhvfs's from now on, completed or not: retention may remove it (``_retention``)
            self.deps.chain.add_checkpoint(vm_id, backup.to_checkpoint_id)
        log.info(
            "backup %s of VM %s (from checkpoint %s) ready in %.2fs, to checkpoint %s",
            backup.id,
            self.owner.name,
            from_cp,
            time.monotonic() - started,
            backup.to_checkpoint_id,
        )
        return backup

    def _key(self, inner: ConfigKey | DiskKey) -> str:
        """Keys of ``full`` sets are @rhv/'s own (``config:vm.ovf``, ``disk:<id>``)."""
        return inner.encode() if self.kind == "full" else SetFileKey(self.set_id, inner).encode()

    def _freeze(self, data: OwnerData) -> None:
        names = config_file_names(None if self.kind == "full" else self.set_id)
        self.manifest_name = names[ConfigRole.MANIFEST]
        manifest = self._manifest(data, names)
        mtime = self.started_ns
        contents = {
            names[ConfigRole.OVF]: data.ovf,
            names[ConfigRole.XML]: data.xml,
            names[ConfigRole.MANIFEST]: manifest,
        }
        if self.kind == "full":
            # serve exactly what the @rhv/ listing announced: padded config, same sizes
            for n in list(contents):
                ann = self.announced.get(self._key(ConfigKey(n)))
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
                key=self._key(ConfigKey(n)),
                size=len(c),
                blocks=blocks_for(len(c)),
                mtime_ns=mtime,
            )
            for n, c in contents.items()
        ]
        self.contents = {self._key(ConfigKey(n)): c for n, c in contents.items()}
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
        self.coverage = {e.key: Intervals() for e in entries}

    def _manifest(self, data: OwnerData, names: dict[ConfigRole, str]) -> bytes:
        manifest = build_manifest(
            data,
            disks=[p.disk for p in self.plans],
            file_names={p.disk.id: p.file for p in self.plans},
            snapshot_id=self.snapshot.id if self.snapshot else None,
            backup_time=datetime.fromtimestamp(self.started_wall, UTC),
            session_id=self.session_id,
        )
        base = self.base
        checkpoint_id = self.backup.to_checkpoint_id if self.backup else None
        by_id = {p.disk.id: p for p in self.plans}
        disks = []
        for d in manifest.disks:
            p = by_id[d.id]
            disks.append(
                dataclasses.replace(
                    d,
                    backup_mode=p.mode,
                    file_format="qcow2" if p.delta is not None else "raw",
                    backing_file=p.backing_file if p.delta is not None else None,
                    full_reason=p.reason if p.mode == "full" else None,
                    dirty_bytes=p.dirty_bytes,
                )
            )
        return dataclasses.replace(
            manifest,
            set_type=self.set_type,
            checkpoint_id=checkpoint_id,
            disks=tuple(disks),
            config_files=ConfigFiles(
                ovf=names[ConfigRole.OVF] if data.ovf_available else None,
                api_xml=names[ConfigRole.XML],
                manifest=names[ConfigRole.MANIFEST],
            ),
            lineage=SetLineage(
                set_id=self.set_id,
                backup_id=self.backup.id if self.backup else None,
                from_checkpoint_id=base.checkpoint_id if base else None,
                to_checkpoint_id=checkpoint_id,
                parent=(
                    ParentSet(
                        set_id=base.set_id, set_type=base.set_type, manifest=base.manifest_file
                    )
                    if base
                    else None
                ),
                full_set_id=base.full_set_id if base else self.set_id,
                warnings=tuple(self.warnings),
            ),
        ).to_json()

    # -- reads ----------------------------------------------------------------

    async def read(self, key: str, offset: int, size: int, *, handle_id: int) -> bytes | memoryview:
        """Often a view of a cache buffer: use it before the next await (``rhvfs.cache``)."""
        if self.state != "ready":
            if self.error is not None:
                raise self.error
            raise SessionClosed(f"set {self.set_id} of {self.owner.name} is {self.state}")
        entry = self.entries_by_key.get(key)
        size = clip_read(entry, key, offset, size, where=f"set {self.set_id} of {self.owner.name}")
        if not size:
            return b""
        assert entry is not None
        content = self.contents.get(key)
        data: bytes | memoryview
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
                    parts: list[bytes | memoryview] = []
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
        self.coverage[key].add(offset, offset + len(data))
        self.bytes_read += len(data)
        self.note_progress(key, offset, len(data), name=entry.name, size=entry.size)
        return data

    def fully_read(self) -> bool:
        """Every file of the set was read from its first to its last byte (for a read-bound
        set: every image here, and the configuration by the router)."""
        if self.read_id is not None and not self.config_read:
            return False
        return all(
            e.size == 0 or (e.key in self.coverage and self.coverage[e.key].covers(0, e.size))
            for e in self.entries
            if self.read_id is None or e.disk_id is not None
        )

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
        if self.complete or self.retiring:
            # A completed set ends at once: the next read of the directory is a new set
            # (a new checkpoint), never this one again.
            self.request_close()
            return
        cfg = self.deps.config
        self.schedule_close(cfg.read_idle_limit, park_after_s=cfg.grace_period)

    # -- cleanup --------------------------------------------------------------

    async def _cleanup(self) -> None:
        """Finalize transfers and the backup, remove the snapshot, record a complete set."""
        channels = list(self.channels.values())
        self.channels = {}
        await close_channels(channels)
        if self._transfers is not None:
            self._transfers.release()
            self._transfers = None
        finalized = True
        if self.backup_started:
            finalized = await self._finalize_backup()
        if (
            self.snapshot_chain
            and self.complete
            and finalized
            and not self.recorded
            and self.snapshot is not None
        ):
            await self._keep_snapshot()
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
            await self._retain_checkpoints()

    async def _retain_checkpoints(self) -> None:
        """The chain advanced: remove this VM's old rhvfs checkpoints (``_retention``), while
        this session still holds the VM's backup slot; bounded, never failing the set."""
        keep = self.deps.config.keep_checkpoints
        if keep <= 0 or self.backup is None or not self.backup.to_checkpoint_id:
            return
        # within the cleanup's own deadline, leaving it a second: a slow removal is retried
        # after the next set, it must not make the cleanup look timed out
        deadline = min(
            trio.current_time() + max(self.deps.config.system_timeout, 1.0),
            trio.current_effective_deadline() - 1.0,
        )
        with trio.move_on_at(deadline) as scope:
            removed = await prune_checkpoints(
                self.deps.engine,
                self.deps.chain,
                self.owner.id,
                keep=keep,
                vm_name=self.owner.name,
                warn=lambda message: self.note(message, error=False),
            )
            if removed:
                log.info(
                    "VM %s: removed %d old checkpoint(s) (keep_checkpoints %d)",
                    self.owner.name,
                    len(removed),
                    keep,
                )
        if scope.cancelled_caught:
            self.note(
                f"checkpoint retention of VM {self.owner.name} timed out; next time", error=False
            )

    async def _keep_snapshot(self) -> None:
        """A complete snapshot-chain set: record it with its snapshot, which from then on
        is intentional state (gc leaves kept snapshots alone), drop the snapshot from the
        journal (crash cleanup no longer removes it), then remove the snapshot it replaces."""
        assert self.snapshot is not None
        self._record()
        journal = self.deps.journal
        for entry in journal.entries():
            if entry.session_id == self.session_id:
                journal.put(dataclasses.replace(entry, snapshot_description=None, snapshot_id=None))
        log.info(
            "snapshot %s of VM %s kept as the base of its next incremental set",
            self.snapshot.id,
            self.owner.name,
        )
        self.snapshot = None
        self.snapshot_description = None
        if self._superseded_snapshot is not None:
            await self._remove_superseded()

    async def _remove_superseded(self) -> None:
        snap_id = self._superseded_snapshot
        try:
            await remove_snapshot(self.deps.engine, self.owner.id, snap_id, config=self.deps.config)
        except EngineError as e:
            self.note(f"removing the previously kept snapshot {snap_id} failed: {e}", error=True)
            return
        self._superseded_snapshot = None

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
                snapshot_id=(
                    self.snapshot.id if self.snapshot_chain and self.snapshot is not None else None
                ),
                snapshots_before=self._snapshots_before if self.snapshot_chain else (),
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

    async def _finalize_backup(self) -> bool:
        try:
            finalized = await finalize_backup(
                self.deps.engine, self.owner.id, self.backup_id, config=self.deps.config
            )
        except EngineError as e:
            # Conflict: its transfers still ran at the deadline. Either way the backup stays
            # pending in the chain state: retried in the background (``_leftovers``), and
            # finalized by a later mount should this one die first.
            self.note(f"finalizing backup {self.backup_id} failed: {e}", error=True)
            return False
        self.deps.chain.remove_pending(self.backup_id)
        self.backup_started = False
        # gone (404): finalized only if the engine had created it at all
        return finalized or self.backup is not None

    async def _remove_snapshot(self) -> None:
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
            self.note(f"removing snapshot {snap_id} failed: {e}", error=True)
            return
        self.snapshot = None
        self.snapshot_description = None

    def _leftovers(self) -> list[CleanupStep]:
        steps = self._journaled_transfer_steps(self.deps) if self._journaled else []
        if self.backup_started:
            backup_id = self.backup_id
            steps.append(
                backup_step(
                    self.deps.engine,
                    self.owner.id,
                    backup_id,
                    config=self.deps.config,
                    on_done=lambda: self.deps.chain.remove_pending(backup_id),
                )
            )
        if self.snapshot_chain and self.recorded and self._superseded_snapshot is not None:
            steps.append(
                snapshot_step(
                    self.deps.engine,
                    self.owner.id,
                    self._superseded_snapshot,
                    description=None,
                    config=self.deps.config,
                )
            )
        if self.snapshot_description is not None:
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

    def _journal(self) -> None:
        journal = self.deps.journal
        journal.put(
            session_entry(
                journal,
                session_id=self.session_id,
                process=self.deps.process,
                owner=self.owner,
                started_wall=self.started_wall,
                transfer_ids=[c.transfer.id for c in self.channels.values() if c.transfer],
                snapshot_description=self.snapshot_description,
                snapshot_id=self.snapshot.id if self.snapshot else None,
            )
        )
        self._journaled = True

    # -- reporting ------------------------------------------------------------

    def warn(self, message: str, *, expected: bool = False) -> None:
        """A warning for the manifest and status; ``expected`` ones (a VM's first set is a
        full one) are only logged at INFO."""
        self.warnings.append(message)
        self.note(message, error=False, level=logging.INFO if expected else logging.WARNING)

    def note(self, message: str, *, error: bool, level: int = logging.WARNING) -> None:
        log.log(level, "%s set of %s: %s", self.kind, self.owner.name, message)
        self.deps.on_note(self.owner, message, error)

    def status(self) -> dict[str, Any]:
        return {
            "owner": {"kind": self.owner.kind, "id": self.owner.id, "name": self.owner.name},
            "set_kind": self.kind,
            "set_type": self.set_type,
            "set_id": self.set_id,
            "read_id": self.read_id,
            "backup_id": self.backup_id if self.backup_started or self.backup else None,
            "from_checkpoint_id": self.base.checkpoint_id if self.base else None,
            "state": self.state,
            "queue_position": self.queue_position,
            "handles": len(self.handles),
            "bytes_read": self.bytes_read,
            "complete": self.complete,
            "warnings": list(self.warnings),
            "disks": [ch.statistics() for ch in self.channels.values()],
            "point_in_time": {
                "read_id": self.read_id,
                "method": "backup",
                "backup_id": self.backup_id if self.backup_started or self.backup else None,
                "taken": datetime.fromtimestamp(self.started_wall, UTC).isoformat(),
            },
            # A read of @rhv/ gets its configuration from the router: only images here.
            **self.progress_status(
                (e.key, e.name, e.size)
                for e in self.entries
                if self.read_id is None or e.disk_id is not None
            ),
        }


def prev_format_of(base: ChainSet | None, disk_id: str) -> str:
    prev = base.disk(disk_id) if base is not None else None
    return "raw" if prev is None or prev.file_format == "raw" else "qcow2"
