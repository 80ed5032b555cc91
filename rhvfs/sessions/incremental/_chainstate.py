"""Chain state: which backup sets of each VM were completed, persisted locally.

A small JSON file per engine next to the session journal
(``<state_dir or $XDG_STATE_HOME/rhvfs>/<host>_<port>.chain.json``). It records,
per VM, the completed sets (full, incremental, differential) oldest first with
their checkpoint ids and per-disk file names, so the next incremental knows
its ``from_checkpoint_id`` and which file each delta's backing file names; and
the engine backups a live rhvfs process has started (``pending``), so a later
mount can finalize the leftovers of a killed one; and, per VM, every checkpoint
a backup rhvfs started created (``checkpoints``, recorded as soon as the backup
is ready, completed or not): the only checkpoints checkpoint retention
(``_retention``) may remove. A checkpoint removed by retention stays named by
its sets (``ChainSet.checkpoint_removed``): they can no longer be a base.

Sets of the snapshot chain (VMs with disks that have no engine incremental
backup) end at a VM snapshot instead of a checkpoint (``ChainSet.snapshot_id``):
the newest such snapshot of a VM is *kept* on the engine on purpose, as the
base of the next set (``kept_snapshots``), and gc must leave it alone.

A set is recorded only once every file of it was read to the end and closed
and its engine backup was finalized: a tool that fails mid-set does not
advance the chain (the checkpoint it created stays on the engine, unused; the
next set starts from the last completed one, which is still valid because
checkpoint bitmaps stay enabled).

Several mounts may share the file: every update is a locked
read-modify-write followed by an atomic rename. The file and its lock are
0600 in a 0700 directory (``rhvfs.private``).

Must not: talk to the engine, decide what a set contains.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rhvfs.backupset import SetType
from rhvfs.private import open_private, private_dir, write_private
from rhvfs.sessions.core._journal import default_journal_path
from rhvfs.sessions.core._procid import ProcessIdentity

log = logging.getLogger(__name__)

_VERSION = 1
#: Completed sets kept per VM (older ones are forgotten; their files stay valid).
MAX_SETS_PER_OWNER = 64


@dataclasses.dataclass(frozen=True)
class ChainDisk:
    """One disk's file in a completed set.

    ``file_format`` is the file's own format (``raw`` for full data, ``qcow2``
    for a delta); ``mode`` is ``full`` or ``incremental``; ``backing_file``
    names the previous set's file of this disk (deltas only).
    """

    disk_id: str
    file: str
    file_format: str
    mode: str
    backing_file: str | None = None


@dataclasses.dataclass(frozen=True)
class ChainSet:
    """A completed set. ``checkpoint_id`` is the engine checkpoint it ends at (None for
    sets without one); ``snapshot_id`` the VM snapshot it ends at and keeps on the engine
    (snapshot-chain sets only); ``full_set_id`` is the full set its chain starts at."""

    set_id: str
    owner_id: str
    set_type: SetType
    checkpoint_id: str | None
    from_checkpoint_id: str | None
    parent_set_id: str | None
    full_set_id: str
    manifest_file: str
    completed: str  # ISO 8601 UTC
    disks: tuple[ChainDisk, ...] = ()
    #: rhvfs removed the checkpoint (``keep_checkpoints``): no set can start from it
    checkpoint_removed: bool = False
    snapshot_id: str | None = None
    #: the VM's other snapshots when ``snapshot_id`` was taken: one taken after it (and
    #: still there) splits the layer the next set reads, which must then be a full one
    snapshots_before: tuple[str, ...] = ()

    def disk(self, disk_id: str) -> ChainDisk | None:
        return next((d for d in self.disks if d.disk_id == disk_id), None)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["disks"] = [dataclasses.asdict(x) for x in self.disks]
        d["snapshots_before"] = list(self.snapshots_before)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChainSet:
        return cls(
            set_id=str(d["set_id"]),
            owner_id=str(d["owner_id"]),
            set_type=SetType(d["set_type"]),
            checkpoint_id=d.get("checkpoint_id"),
            from_checkpoint_id=d.get("from_checkpoint_id"),
            parent_set_id=d.get("parent_set_id"),
            full_set_id=str(d["full_set_id"]),
            manifest_file=str(d.get("manifest_file", "")),
            completed=str(d.get("completed", "")),
            disks=tuple(ChainDisk(**x) for x in d.get("disks", ())),
            checkpoint_removed=bool(d.get("checkpoint_removed", False)),
            snapshot_id=d.get("snapshot_id"),
            snapshots_before=tuple(str(x) for x in d.get("snapshots_before", ())),
        )


@dataclasses.dataclass(frozen=True)
class PendingBackup:
    """An engine backup a live process started (removed once finalized); ``installation``
    and ``instance`` (None in older files) name the mount that started it."""

    backup_id: str
    vm_id: str
    process: ProcessIdentity
    started: str  # ISO 8601 UTC
    installation: str | None = None
    instance: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PendingBackup:
        return cls(
            backup_id=str(d["backup_id"]),
            vm_id=str(d["vm_id"]),
            process=ProcessIdentity(**d["process"]),
            started=str(d.get("started", "")),
            installation=d.get("installation"),
            instance=d.get("instance"),
        )


def default_chain_path(engine_url: str, *, state_dir: str | os.PathLike[str] | None = None) -> Path:
    journal = default_journal_path(engine_url, state_dir=state_dir)
    return journal.with_name(journal.stem + ".chain.json")


class ChainState:
    """The chain file. Methods are synchronous and quick; safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._tlock = threading.Lock()

    @classmethod
    def for_engine(
        cls, engine_url: str, *, state_dir: str | os.PathLike[str] | None = None
    ) -> ChainState:
        return cls(default_chain_path(engine_url, state_dir=state_dir))

    # -- queries --------------------------------------------------------------

    def sets(self, owner_id: str) -> list[ChainSet]:
        """Completed sets of ``owner_id``, oldest first."""
        with self._locked():
            return list(self._load_all().sets.get(owner_id, []))

    def newest(self, owner_id: str) -> ChainSet | None:
        """The newest completed set that can be a base (it ends at a checkpoint)."""
        usable = [s for s in self.sets(owner_id) if s.checkpoint_id]
        return usable[-1] if usable else None

    def newest_kept(self, owner_id: str) -> ChainSet | None:
        """The newest completed snapshot-chain set (the base of the next one): its
        ``snapshot_id`` is the snapshot kept on the engine for it."""
        usable = [s for s in self.sets(owner_id) if s.snapshot_id]
        return usable[-1] if usable else None

    def kept_snapshots(self) -> dict[str, str]:
        """VM id -> the snapshot kept on the engine as the base of its next set (gc must
        not remove these; older sets' snapshots were merged away, or may be)."""
        with self._locked():
            sets = self._load_all().sets
        kept: dict[str, str] = {}
        for owner, items in sets.items():
            snaps = [s.snapshot_id for s in items if s.snapshot_id]
            if snaps:
                kept[owner] = snaps[-1]
        return kept

    def newest_full(self, owner_id: str) -> ChainSet | None:
        fulls = [s for s in self.sets(owner_id) if s.set_type == "full" and s.checkpoint_id]
        return fulls[-1] if fulls else None

    def by_checkpoint(self, owner_id: str, checkpoint_id: str) -> ChainSet | None:
        """The newest completed set ending at ``checkpoint_id`` (a checkpoint rhvfs recorded)."""
        found = [s for s in self.sets(owner_id) if s.checkpoint_id == checkpoint_id]
        return found[-1] if found else None

    def pending(self) -> list[PendingBackup]:
        with self._locked():
            return list(self._load_all().pending.values())

    def owned_checkpoints(self, owner_id: str) -> list[str]:
        """Checkpoints of ``owner_id`` that rhvfs created and has not removed, oldest first:
        those recorded when their backup was ready, and (files written before they were
        recorded) those of completed sets."""
        with self._locked():
            state = self._load_all()
        made = list(state.checkpoints.get(owner_id, []))
        for s in state.sets.get(owner_id, []):
            if s.checkpoint_id and not s.checkpoint_removed and s.checkpoint_id not in made:
                made.append(s.checkpoint_id)
        return made

    # -- updates --------------------------------------------------------------

    def record(self, chain_set: ChainSet) -> None:
        """Append a completed set (replacing one with the same id)."""
        with self._locked():
            state = self._load_all()
            sets = state.sets
            mine = [s for s in sets.get(chain_set.owner_id, []) if s.set_id != chain_set.set_id]
            mine.append(chain_set)
            sets[chain_set.owner_id] = mine[-MAX_SETS_PER_OWNER:]
            self._store_all(state)
        log.info(
            "chain of %s: %s set %s completed (checkpoint %s, parent %s)",
            chain_set.owner_id,
            chain_set.set_type,
            chain_set.set_id,
            chain_set.checkpoint_id,
            chain_set.parent_set_id,
        )

    def add_pending(self, item: PendingBackup) -> None:
        with self._locked():
            state = self._load_all()
            state.pending[item.backup_id] = item
            self._store_all(state)

    def remove_pending(self, backup_id: str) -> None:
        with self._locked():
            state = self._load_all()
            if state.pending.pop(backup_id, None) is not None:
                self._store_all(state)

    def add_checkpoint(self, owner_id: str, checkpoint_id: str) -> None:
        """A backup rhvfs started created ``checkpoint_id`` (recorded once it is ready)."""
        with self._locked():
            state = self._load_all()
            mine = state.checkpoints.setdefault(owner_id, [])
            if checkpoint_id not in mine:
                mine.append(checkpoint_id)
                self._store_all(state)

    def forget_checkpoints(self, owner_id: str, checkpoint_ids: set[str], *, removed: bool) -> None:
        """``checkpoint_ids`` are gone from the engine: ``removed`` by rhvfs's retention (their
        sets are marked, they can be no base), or found missing (failed backups' checkpoints,
        which the engine drops; removed by someone else: the sets keep their ids, and a set
        from them finds the chain broken)."""
        if not checkpoint_ids:
            return
        with self._locked():
            state = self._load_all()
            made = state.checkpoints.get(owner_id, [])
            kept = [c for c in made if c not in checkpoint_ids]
            changed = len(kept) != len(made)
            if kept:
                state.checkpoints[owner_id] = kept
            else:
                state.checkpoints.pop(owner_id, None)
            if removed:
                sets = state.sets.get(owner_id, [])
                marked = [
                    dataclasses.replace(s, checkpoint_removed=True)
                    if s.checkpoint_id in checkpoint_ids and not s.checkpoint_removed
                    else s
                    for s in sets
                ]
                changed = changed or marked != sets
                state.sets[owner_id] = marked
            if changed:
                self._store_all(state)

    # -- file handling --------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._tlock:
            private_dir(self.path.parent)
            fd = open_private(self.path.with_name(self.path.name + ".lock"), os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    def _load_all(self) -> _State:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _State()
        try:
            raw = json.loads(text)
            sets = {
                owner: [ChainSet.from_json(x) for x in items]
                for owner, items in dict(raw.get("sets", {})).items()
            }
            pending = {
                bid: PendingBackup.from_json(d) for bid, d in dict(raw.get("pending", {})).items()
            }
            checkpoints = {
                owner: [str(c) for c in items]
                for owner, items in dict(raw.get("checkpoints", {})).items()
            }
            return _State(sets, pending, checkpoints)
        except (ValueError, TypeError, KeyError) as e:
            # Losing the chain only makes the next set a full one; keep a copy for a human.
            log.warning("chain state %s is unreadable (%s); starting a new one", self.path, e)
            os.replace(self.path, self.path.with_name(self.path.name + ".corrupt"))
            return _State()

    def _store_all(self, state: _State) -> None:
        doc = {
            "version": _VERSION,
            "sets": {o: [s.to_json() for s in items] for o, items in state.sets.items()},
            "pending": {b: p.to_json() for b, p in state.pending.items()},
            "checkpoints": {o: list(items) for o, items in state.checkpoints.items() if items},
        }
        write_private(self.path, json.dumps(doc, indent=1, sort_keys=True))


@dataclasses.dataclass
class _State:
    """The file's content: completed sets, pending backups, checkpoints rhvfs created."""

    sets: dict[str, list[ChainSet]] = dataclasses.field(default_factory=dict)
    pending: dict[str, PendingBackup] = dataclasses.field(default_factory=dict)
    checkpoints: dict[str, list[str]] = dataclasses.field(default_factory=dict)
