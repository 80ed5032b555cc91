"""The session journal: what live backup sessions and unfinished restores created on the engine.

A small JSON file per engine (default ``$XDG_STATE_HOME/rhvfs/<host>_<port>.json``)
recording, per session, the snapshot (its description before the engine call,
its id after) and the transfer ids it created, so ``collect_garbage`` can find
leftovers of a killed rhvfs -- transfers carry no description. A restore's
entry (``owner_kind`` "restore") records its disks, transfers, VMs and
templates instead, each before the engine call that creates it. Several mounts
of the same engine may share the file: every update is a locked
read-modify-write followed by an atomic rename. The file and its lock are
0600 in a 0700 directory (``rhvfs.private``); it holds ids, never a ticket.
Each entry names the installation and mount instance that wrote it;
``Journal.installation`` is the ``Installation`` of the journal's directory
(shared by every user of one ``Journal`` object, i.e. by both managers of a mount).

Must not: talk to the engine, decide what is garbage (see ``gc.py``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rhvfs.private import default_state_dir, open_private, private_dir, write_private
from rhvfs.sessions.core._installation import Installation
from rhvfs.sessions.core._model import Owner
from rhvfs.sessions.core._procid import ProcessIdentity

log = logging.getLogger(__name__)

_VERSION = 1


@dataclasses.dataclass(frozen=True)
class JournalEntry:
    """What one session created. ``snapshot_id`` is None until the engine answered;
    ``installation`` and ``instance`` are None in entries of older versions."""

    session_id: str
    process: ProcessIdentity
    owner_kind: str
    owner_id: str
    owner_name: str
    started: str  # ISO 8601, UTC
    snapshot_description: str | None = None
    snapshot_id: str | None = None
    transfer_ids: tuple[str, ...] = ()
    installation: str | None = None
    instance: str | None = None
    # A restore's entry (``owner_kind`` "restore", ``owner_name`` its directory; see
    # ``_restore_leftovers``): what it created, each recorded before the engine call.
    disk_ids: tuple[str, ...] = ()
    vm_ids: tuple[str, ...] = ()
    template_ids: tuple[str, ...] = ()
    #: kinds ("vm", "template") whose create call was made but has not answered yet: the
    #: object may exist without its id here; it carries ``marker`` in its comment
    pending: tuple[str, ...] = ()
    marker: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in _ID_TUPLES:
            d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JournalEntry:
        return cls(
            session_id=str(d["session_id"]),
            process=ProcessIdentity(**d["process"]),
            owner_kind=str(d["owner_kind"]),
            owner_id=str(d["owner_id"]),
            owner_name=str(d.get("owner_name", "")),
            started=str(d.get("started", "")),
            snapshot_description=d.get("snapshot_description"),
            snapshot_id=d.get("snapshot_id"),
            transfer_ids=tuple(d.get("transfer_ids", ())),
            installation=d.get("installation"),
            instance=d.get("instance"),
            disk_ids=tuple(d.get("disk_ids", ())),
            vm_ids=tuple(d.get("vm_ids", ())),
            template_ids=tuple(d.get("template_ids", ())),
            pending=tuple(d.get("pending", ())),
            marker=d.get("marker"),
        )


#: The tuple fields of an entry (lists in JSON).
_ID_TUPLES = ("transfer_ids", "disk_ids", "vm_ids", "template_ids", "pending")


def session_entry(
    journal: Journal,
    *,
    session_id: str,
    process: ProcessIdentity,
    owner: Owner,
    started_wall: float,
    transfer_ids: Iterable[str],
    **fields: Any,
) -> JournalEntry:
    """The journal entry of a live session of ``owner`` (either kind of backup session),
    stamped with this installation and mount instance; ``fields``: snapshot description/id."""
    ownership = journal.installation.ownership()
    return JournalEntry(
        session_id=session_id,
        process=process,
        installation=ownership.installation,
        instance=ownership.instance,
        owner_kind=owner.kind,
        owner_id=owner.id,
        owner_name=owner.name,
        started=datetime.fromtimestamp(started_wall, UTC).isoformat(),
        transfer_ids=tuple(transfer_ids),
        **fields,
    )


def default_journal_path(
    engine_url: str, *, state_dir: str | os.PathLike[str] | None = None
) -> Path:
    """``<state_dir or $XDG_STATE_HOME/rhvfs>/<host>_<port>.json`` for ``engine_url``."""
    directory = default_state_dir() if state_dir is None else Path(state_dir)
    parts = urlsplit(engine_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = re.sub(r"[^A-Za-z0-9.-]", "_", parts.hostname or "engine")
    return directory / f"{host}_{port}.json"


class Journal:
    """A JSON file of ``JournalEntry`` records keyed by session id.

    Methods are synchronous and quick (a few small file operations); they are
    safe to call from several threads and processes.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, installation: Installation | None = None
    ) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        #: the installation whose state directory holds this journal (this mount's instance)
        self.installation = installation or Installation(self.path.parent)

    @classmethod
    def for_engine(
        cls, engine_url: str, *, state_dir: str | os.PathLike[str] | None = None
    ) -> Journal:
        return cls(default_journal_path(engine_url, state_dir=state_dir))

    def entries(self) -> list[JournalEntry]:
        with self._locked():
            return list(self._load().values())

    def put(self, entry: JournalEntry) -> None:
        """Record (or replace) the entry of ``entry.session_id``."""
        with self._locked():
            data = self._load()
            data[entry.session_id] = entry
            self._store(data)

    def add_transfer(self, session_id: str, transfer_id: str) -> None:
        with self._locked():
            data = self._load()
            entry = data.get(session_id)
            if entry is None or transfer_id in entry.transfer_ids:
                return
            data[session_id] = dataclasses.replace(
                entry, transfer_ids=(*entry.transfer_ids, transfer_id)
            )
            self._store(data)

    def remove_transfer(self, session_id: str, transfer_id: str) -> None:
        with self._locked():
            data = self._load()
            entry = data.get(session_id)
            if entry is None or transfer_id not in entry.transfer_ids:
                return
            data[session_id] = dataclasses.replace(
                entry, transfer_ids=tuple(t for t in entry.transfer_ids if t != transfer_id)
            )
            self._store(data)

    def remove(self, session_id: str) -> None:
        with self._locked():
            data = self._load()
            if data.pop(session_id, None) is not None:
                self._store(data)

    # -- file handling ------------------------------------------------------

    def _locked(self) -> _FileLock:
        return _FileLock(self.path.with_name(self.path.name + ".lock"), self._lock)

    def _load(self) -> dict[str, JournalEntry]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            raw = json.loads(text)
            return {
                sid: JournalEntry.from_json(d) for sid, d in dict(raw.get("entries", {})).items()
            }
        except (ValueError, TypeError, KeyError) as e:
            # A corrupt journal must not stop mounts; keep a copy for a human.
            log.warning("journal %s is unreadable (%s); starting a new one", self.path, e)
            os.replace(self.path, self.path.with_name(self.path.name + ".corrupt"))
            return {}

    def _store(self, data: dict[str, JournalEntry]) -> None:
        doc = {"version": _VERSION, "entries": {sid: e.to_json() for sid, e in data.items()}}
        write_private(self.path, json.dumps(doc, indent=1, sort_keys=True))


class _FileLock:
    """flock on a sidecar file plus a thread lock (flock is per open file description)."""

    def __init__(self, path: Path, tlock: threading.Lock) -> None:
        self._path = path
        self._tlock = tlock
        self._fd = -1

    def __enter__(self) -> None:
        self._tlock.acquire()
        try:
            private_dir(self._path.parent)
            self._fd = open_private(self._path, os.O_RDWR)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
            self._tlock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        finally:
            self._fd = -1
            self._tlock.release()
