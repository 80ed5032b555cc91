"""Which file of a restore directory is what, and the disk each image feeds.

Owns the records the parts of a restore share: ``RestoreFile`` (one regular
file written into ``restore/<name>/``; it keeps its object across renames)
and ``RestoreDisk`` (one disk of the set's manifest: its state, the engine
disk and transfer this restore made for it, its upload stream, its file).

Recognition by name (any order of files, any tool; the names are
``rhvfs.backupset``'s): ``manifest.json``, ``vm.ovf``, ``vm.xml``, the options
file and the ``manifest--<set>.json`` / ``vm--<set>.ovf|xml`` files of
incremental-family sets are configuration, held in memory; a file is a disk image when its name is a manifest disk's
``file``, or an rsync temporary name for it (``.<file>.XXXXXX``, renamed
later) — ``identify`` binds it to that disk.

Must not: do I/O, talk to the engine, or decide when anything is complete.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Mapping

import trio

from rhvfs.backupset import (
    ConfigFileName,
    ConfigRole,
    Manifest,
    ManifestDisk,
    parse_file_name,
    rsync_target,
)
from rhvfs.errors import RestoreNameClash, RestoreTooLarge, RestoreWriteOnly
from rhvfs.sessions.core._progress import RateMeter
from rhvfs.sessions.restore._coverage import ImageCoverage
from rhvfs.sessions.restore._memory import ConfigMemory
from rhvfs.sessions.restore._options import OPTIONS_FILE
from rhvfs.sessions.restore._staging import StagedFile
from rhvfs.sessions.restore._state import DiskState
from rhvfs.sessions.restore._upload import UploadStream

#: Configuration files are held in memory up to this size (bytes) each; all of them
#: together up to ``staging_memory`` (``_memory``).
CONFIG_MAX_BYTES = 16 * 1024 * 1024


def is_config(name: str) -> bool:
    """True for a configuration file of a set or the options (or their rsync temporary
    names); names are recognised by ``rhvfs.backupset.parse_file_name``."""
    parsed = parse_file_name(name)
    return isinstance(parsed.file, ConfigFileName) or parsed.final == OPTIONS_FILE


def is_manifest(name: str) -> bool:
    parsed = parse_file_name(name)
    return not parsed.rsync_temp and parsed.config_role == ConfigRole.MANIFEST


class RestoreFile:
    """One regular file written into a restore directory (survives renames)."""

    _ids = itertools.count(1)

    def __init__(self, name: str, memory: ConfigMemory | None = None) -> None:
        self.id = next(self._ids)
        self.name = name
        self.memory = memory  # the mount's budget for ``mem`` (None: unbounded, tests)
        self.released = False  # the restore failed: ``mem`` was given back
        self.size = 0
        self.opens = 0
        self.mem: bytearray | None = bytearray()
        self.staged: StagedFile | None = None
        self.disk: RestoreDisk | None = None
        self.dropped = False  # data of an excluded disk: accepted, not kept
        self.closed_done = False  # the "last close" processing ran since the last write
        self.close_gen = 0  # bumped by every open/close: a grace timer acts only if unchanged
        self.times_set = False  # utimes while open (or unbound) and no write since
        self.coverage = ImageCoverage()  # what each byte is: the evidence of completeness
        self.mtime_ns = time.time_ns()  # shown as the file's mtime (wall clock, not a timer)

    def read(self, offset: int, size: int) -> bytes:
        """Read back what is held here: configuration, or staged data (holes read as zero)."""
        if self.mem is not None:
            return bytes(self.mem[offset : offset + size])
        if self.staged is not None:
            end = min(self.size, offset + size)
            return self.staged.read(offset, max(0, end - offset)).ljust(max(0, end - offset), b"\0")
        if self.released:
            raise RestoreWriteOnly(f"{self.name!r}: the restore failed; its files are not kept")
        raise RestoreWriteOnly(f"{self.name!r} was streamed to the engine; it cannot be read back")

    def write_config(self, offset: int, data: bytes) -> None:
        """Bytes of a configuration file, held in memory (up to ``CONFIG_MAX_BYTES``)."""
        assert self.mem is not None
        end = offset + len(data)
        if end > CONFIG_MAX_BYTES:
            raise RestoreTooLarge(
                f"{self.name!r} is larger than {CONFIG_MAX_BYTES} bytes: not a configuration file"
            )
        if self.memory is not None:
            self.memory.charge(self, end)
        if len(self.mem) < offset:
            self.mem.extend(bytes(offset - len(self.mem)))
        self.mem[offset:end] = data

    def release_memory(self) -> None:
        """The restore failed or is forgotten: give the configuration bytes back."""
        if self.mem is not None:
            self.mem = None
            self.released = True

    def drop_staged(self) -> None:
        """Forget what was staged for this file (its bytes go back to the budget)."""
        if self.staged is not None:
            self.staged.close()
            self.staged = None


@dataclasses.dataclass(eq=False)
class RestoreDisk:
    """One disk of the set and what this restore did for it so far."""

    set_disk: ManifestDisk
    selected: bool
    state: DiskState = DiskState.WAITING
    disk_id: str | None = None  # the engine disk this restore created
    transfer_id: str | None = None
    stream: UploadStream | None = None
    file: RestoreFile | None = None
    error: str | None = None
    bytes_written: int = 0
    #: bytes written over time, for the rates in ``.status`` and status.json
    meter: RateMeter = dataclasses.field(default_factory=RateMeter)
    lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)
    #: image complete (replaced by a fresh event when a write un-completes it)
    finish: trio.Event = dataclasses.field(default_factory=trio.Event)
    sealed: bool = False  # the upload task went past ``finish``: the image cannot change
    done: trio.Event = dataclasses.field(default_factory=trio.Event)  # upload task ended
    abort: bool = False

    def wrote(self, nbytes: int) -> None:
        """``nbytes`` of the image went into the disk's stream (now)."""
        self.bytes_written += nbytes
        self.meter.add(trio.current_time(), nbytes)


def identify(
    f: RestoreFile,
    manifest: Manifest | None,
    disks: Mapping[str, RestoreDisk],
    files: Mapping[int, RestoreFile],
) -> None:
    """Bind ``f`` to its manifest disk when its name says which one (``files``: the
    directory's live files, to tell a second file for one disk from a removed one)."""
    if f.disk is not None or manifest is None:
        return
    name = f.name
    for candidate in (name, rsync_target(name)):
        if candidate is None:
            continue
        d = manifest.disk_by_file(candidate)
        if d is None:
            continue
        disk = disks[d.id]
        if disk.file is not None and disk.file is not f and disk.file.id in files:
            raise RestoreNameClash(f"two files for disk {d.id} ({disk.file.name!r} and {name!r})")
        disk.file = f
        f.disk = disk
        f.closed_done = False  # closing it again now means "image complete"
        if not disk.selected:
            f.dropped = True
        if f.mem is not None and len(f.mem) == 0:
            f.mem = None
        return
