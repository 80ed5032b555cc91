"""Restore sessions: a backup set written into ``restore/<name>/`` becomes a VM again.

``RestoreManager`` owns every restore of a mount and the nursery their engine
work runs in; ``RestoreSession`` is one ``restore/<name>/`` directory. The VFS
(``rhvfs.vfs.restore``) owns names, directories and inodes and calls the
session with ``RestoreFile`` objects (a file keeps its object across renames).

How a set is recognised (any order of files, any tool):

- ``manifest.json`` and ``vm.ovf`` are kept in memory and parsed when closed
  (last handle released). The manifest names each disk's image file.
- A file is a disk image when its name is a manifest disk's ``file``, or an
  rsync temporary name for it (``.<file>.XXXXXX``, renamed later). Its writes
  stream to the engine (``restore_upload``); data that arrives before the
  manifest explains the file is staged locally (``restore_staging``, bounded).
- The first write of set data freezes the options (``restore_options``: the
  ``rhvfs-restore.conf`` file in the directory over the mount defaults).
- When the manifest is parsed, before any engine change: the options are
  checked against the set, the target cluster and storage domains must
  exist and have room, and the target name must be free (or
  ``vm_force_overwrite`` given and the VM down). A refusal fails the
  session: the closing call and every later write get an errno (EEXIST for
  a name clash, ENOSPC for no room, EINVAL for bad input, EIO otherwise).
- A disk is created (original id unless taken, else a new one) and its
  upload transfer started at its image's first write (an idle transfer is
  kept alive with flushes). **An image is complete** when its file is
  closed, has exactly the manifest's size, and either its times were set
  (tar, ``cp -a``/``--preserve``, rsync, restic and Bacula set them when a
  file is written: complete at once) or it was not reopened for
  ``close_grace_s`` (dd, plain cp). Then the transfer is flushed and
  finalized. A shorter image is truncated when its times are set (that call
  fails with EIO) or after ``truncated_after_s`` without a reopen (restic
  writes a file in many opens, out of order); a longer one is refused.

**The set is complete** when ``manifest.json`` and ``vm.ovf`` were closed and
parsed, and every selected disk (all, minus ``vm_exclude_disks``, or
``vm_disks``; ``vm_disks = none`` restores configuration only) finished its
upload. Then, in the background: an overwritten VM is removed (only now, and
only if down), the VM is created from the OVF (without its disk and NIC
devices; ``regenerate_ids`` when the original id is still in use), the disks
are attached (interface/bootable/active from the set or the options), the
NICs added (MACs auto, original, new, or explicit), a template made from it
if ``template_name`` asks (needs ``create_template`` on the engine facade;
``remove_base_vm`` then removes the VM), and the VM started if
``vm_switchon``. A template set instead becomes a template imported from its
OVF (``create_template_from_ovf``) whose disk references are rewritten to the
uploaded disks (its name: ``template_name``, ``vm_name`` or the directory).
Any failure rolls back what this restore created (transfers cancelled, disks,
VM and template removed); so do ``rmdir restore/<name>`` of an unfinished
restore and stopping the mount. ``.status`` (``status_json``) shows the
phase: ``receiving`` → ``uploading`` → ``creating_vm`` → ``done`` | ``failed``
(``settled`` turns true once a failed restore finished cleaning up).

**Chains** (a full set with its incrementals, or with one differential,
copied into one directory: ``manifest--<set>.json`` files, or a
``manifest.json`` with a checkpoint) are assembled by ``restore_chain``: the
full set streams as above, the deltas are staged, and every disk's upload is
finalized only once the chain is complete and its deltas were applied; see
that module for when a chain counts as complete and what is refused.

Must not: know about inodes, directories or FUSE; touch anything on the
engine it did not create, except the VM an overwrite replaces.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from rhvfs.backupset import (
    OVF_NAME,
    ConfigFileName,
    ConfigRole,
    Manifest,
    ManifestDisk,
    OvfInfo,
    check_consistent,
    parse_file_name,
    parse_manifest,
    parse_ovf,
    rsync_target,
)
from rhvfs.config import Config
from rhvfs.engine.types import (
    StorageDomain,
    Vm,
)
from rhvfs.errors import NotFound, RestoreError, RhvfsError
from rhvfs.sessions.restore import _vm as restore_vm
from rhvfs.sessions.restore._chain import ChainAssembly
from rhvfs.sessions.restore._options import (
    OPTIONS_FILE,
    OPTIONS_MAX_BYTES,
    RestoreOptions,
    build_options,
    parse_lines,
    unknown_disk_keys,
)
from rhvfs.sessions.restore._ports import (
    RestoreEngine,
    UploadOpener,
    default_upload_opener,
    errno_of,
)
from rhvfs.sessions.restore._ports import restore_error as _err
from rhvfs.sessions.restore._staging import StagedFile, StagingArea
from rhvfs.sessions.restore._upload import UploadStream

log = logging.getLogger(__name__)

STATUS_FILE = ".status"
#: An image closed with its full size and not reopened for this long is complete (seconds).
#: Tools that set the file's times after writing it (tar, cp -a, rsync, restic, Bacula)
#: complete it at once with that call; this wait is for the rest (dd, plain cp).
CLOSE_GRACE_S = 5.0
#: A closed image shorter than its disk, not reopened for this long, is truncated (seconds).
TRUNCATED_AFTER_S = 300.0
#: An idle upload sends a flush this often, so the engine does not time the transfer out.
KEEPALIVE_S = 20.0
#: Configuration files are held in memory up to this size (bytes).
CONFIG_MAX_BYTES = 16 * 1024 * 1024


def _is_config(name: str) -> bool:
    """Held in memory: a set's configuration file or the options, also under rsync's name."""
    parsed = parse_file_name(name)
    return isinstance(parsed.file, ConfigFileName) or parsed.final == OPTIONS_FILE


def _is_manifest(name: str) -> bool:
    parsed = parse_file_name(name)
    return not parsed.rsync_temp and parsed.config_role == ConfigRole.MANIFEST


# -- files and disks ------------------------------------------------------------


class RestoreFile:
    """One regular file written into a restore directory (survives renames)."""

    _ids = itertools.count(1)

    def __init__(self, name: str) -> None:
        self.id = next(self._ids)
        self.name = name
        self.size = 0
        self.opens = 0
        self.mem: bytearray | None = bytearray()
        self.staged: StagedFile | None = None
        self.disk: _Disk | None = None
        self.dropped = False  # data of an excluded disk: accepted, not kept
        self.closed_done = False  # the "last close" processing ran since the last write
        self.close_gen = 0  # bumped by every open/close: a grace timer acts only if unchanged
        self.times_set = False  # utimes while open and no write since: done at the close
        self.mtime_ns = time.time_ns()


@dataclasses.dataclass(eq=False)
class _Disk:
    set_disk: ManifestDisk
    selected: bool
    state: str = "waiting"  # waiting, creating, uploading, finalizing, uploaded, failed, skipped
    disk_id: str | None = None  # the engine disk this restore created
    transfer_id: str | None = None
    stream: UploadStream | None = None
    file: RestoreFile | None = None
    error: str | None = None
    bytes_written: int = 0
    lock: trio.Lock = dataclasses.field(default_factory=trio.Lock)
    finish: trio.Event = dataclasses.field(default_factory=trio.Event)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    abort: bool = False
    staged_replayed: bool = False


# -- the session ------------------------------------------------------------------


class RestoreSession:
    """One ``restore/<name>/`` directory: files in, a VM out."""

    def __init__(self, manager: RestoreManager, name: str) -> None:
        self.manager = manager
        self.name = name
        self.phase = "receiving"
        self.error: str | None = None
        self.errno = 0
        self.vm_id: str | None = None
        self.template_id: str | None = None
        self.files: dict[int, RestoreFile] = {}
        self.options: RestoreOptions | None = None
        self.manifest: Manifest | None = None
        self.ovf: bytes | None = None
        self.ovf_info: OvfInfo | None = None
        self.disks: dict[str, _Disk] = {}
        self.created_disks: list[str] = []
        self.created_vm: str | None = None
        self.overwrite_vm: Vm | None = None
        self.target_name: str | None = None
        self.log: list[str] = []
        self.started = time.time()
        self._completion_started = False
        self._finished = trio.Event()
        self._manifest_lock = trio.Lock()
        self.chain = ChainAssembly(self)

    # -- status -------------------------------------------------------------

    def note(self, text: str) -> None:
        log.info("restore %s: %s", self.name, text)
        self.log.append(f"{time.strftime('%H:%M:%S')} {text}")
        del self.log[:-50]

    def status(self) -> dict[str, Any]:
        disks = []
        for d in self.disks.values():
            stats = d.stream.statistics() if d.stream is not None else None
            disks.append(
                {
                    "id": d.set_disk.id,
                    "alias": d.set_disk.alias,
                    "file": d.set_disk.file,
                    "size": d.set_disk.size,
                    "selected": d.selected,
                    "state": d.state,
                    "new_disk_id": d.disk_id,
                    "bytes_written": d.bytes_written,
                    "bytes_uploaded": stats.bytes_put if stats else 0,
                    "bytes_zeroed": stats.bytes_zeroed if stats else 0,
                    "put_requests": stats.put_requests if stats else 0,
                    "zero_requests": stats.zero_requests if stats else 0,
                    "error": d.error,
                }
            )
        return {
            "name": self.name,
            "phase": self.phase,
            # false while a failed restore still removes what it created
            "settled": self._finished.is_set(),
            "error": self.error,
            "errno": errno.errorcode.get(self.errno) if self.errno else None,
            "vm_id": self.vm_id,
            "vm_name": self.target_name,
            "template_id": self.template_id,
            "kind": self.manifest.kind if self.manifest else None,
            "source": (
                {"id": self.manifest.owner_id, "name": self.manifest.owner_name}
                if self.manifest
                else None
            ),
            "manifest": self.manifest is not None,
            "ovf": self.ovf_info is not None,
            "disks": disks,
            "options": self.options.as_dict() if self.options else None,
            "chain": self.chain.status(),
            "staged_bytes": sum(f.staged.charged_bytes for f in self.files.values() if f.staged),
            "log": list(self.log),
        }

    def status_json(self) -> bytes:
        return (json.dumps(self.status(), indent=2) + "\n").encode()

    async def wait_finished(self) -> None:
        await self._finished.wait()

    # -- failure and rollback ---------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self.phase == "failed":
            raise _err(f"restore {self.name} failed: {self.error}", self.errno or errno.EIO)
        if self.phase == "done":
            raise _err(
                f"restore {self.name} is done (vm {self.vm_id}); nothing more to write", errno.EROFS
            )

    def fail(self, exc: BaseException | str) -> None:
        """Mark the session failed and roll back in the background. Idempotent."""
        if self.phase in ("failed", "done"):
            return
        text = exc.detail if isinstance(exc, RhvfsError) and exc.detail else str(exc)
        self.error = text
        self.errno = errno_of(exc) if isinstance(exc, BaseException) else errno.EIO
        self.phase = "failed"
        self.note(f"failed: {text}")
        self.chain.decided.set()
        for d in self.disks.values():
            d.abort = True
            d.finish.set()
        self.manager.spawn(self._rollback)

    async def abandon(self, reason: str) -> None:
        """Roll back now (no nursery any more): used when the manager stops mid-restore."""
        if self.phase in ("done", "failed"):
            return
        self.error = reason
        self.errno = errno.ECANCELED
        self.phase = "failed"
        self.note(f"failed: {reason}")
        self.chain.decided.set()
        for d in self.disks.values():
            d.abort = True
            d.finish.set()
        await self._rollback()

    async def _rollback(self) -> None:
        with trio.CancelScope(shield=True):
            for d in self.disks.values():
                if d.state in ("creating", "uploading", "finalizing"):
                    await d.done.wait()
            engine = self.manager.engine
            if self.created_vm is not None:
                try:
                    await engine.remove_vm(self.created_vm)
                    self.note(f"rolled back: removed vm {self.created_vm}")
                except NotFound:
                    pass
                except Exception as e:
                    self.note(f"rollback: cannot remove vm {self.created_vm}: {e}")
            if self.template_id is not None:
                try:
                    await engine.remove_template(self.template_id)
                    self.note(f"rolled back: removed template {self.template_id}")
                except Exception as e:
                    self.note(f"rollback: cannot remove template {self.template_id}: {e}")
            for disk_id in self.created_disks:
                try:
                    await engine.get_disk(disk_id)
                except NotFound:
                    continue  # a failed upload removes its disk (the engine's endWithFailure)
                except Exception:
                    pass
                try:
                    await engine.remove_disk(disk_id)
                    self.note(f"rolled back: removed disk {disk_id}")
                except NotFound:
                    pass
                except Exception as e:
                    self.note(f"rollback: cannot remove disk {disk_id}: {e}")
            for f in self.files.values():
                if f.staged is not None:
                    f.staged.close()
                    f.staged = None
            self._finished.set()

    # -- files ------------------------------------------------------------------

    def new_file(self, name: str) -> RestoreFile:
        self._raise_if_failed()
        f = RestoreFile(name)
        self.touch()
        if not _is_config(name):
            f.mem = None  # anything but configuration is streamed or staged, never held in memory
        self.files[f.id] = f
        self._identify(f)
        return f

    def _identify(self, f: RestoreFile) -> None:
        """Bind ``f`` to its manifest disk when its name says which one."""
        if f.disk is not None or self.manifest is None:
            return
        name = f.name
        for candidate in (name, rsync_target(name)):
            if candidate is None:
                continue
            d = self.manifest.disk_by_file(candidate)
            if d is None:
                continue
            disk = self.disks[d.id]
            if disk.file is not None and disk.file is not f and disk.file.id in self.files:
                raise _err(
                    f"two files for disk {d.id} ({disk.file.name!r} and {name!r})", errno.EEXIST
                )
            disk.file = f
            f.disk = disk
            f.closed_done = False  # closing it again now means "image complete"
            if not disk.selected:
                f.dropped = True
            if f.mem is not None and len(f.mem) == 0:
                f.mem = None
            return

    def touch(self) -> None:
        """Directory activity (a chain is settled only after ``close_grace_s`` without it)."""
        self.chain.touch()

    def open(self, f: RestoreFile) -> None:
        self.touch()
        f.opens += 1
        f.close_gen += 1  # reopened (restic writes a file in many opens): not complete yet

    async def rename(self, f: RestoreFile, new_name: str) -> None:
        old = f.name
        f.name = new_name
        if f.disk is not None:
            if new_name != f.disk.set_disk.file and rsync_target(old) != new_name:
                f.name = old
                raise _err(
                    f"{old!r} holds disk {f.disk.set_disk.id}; it cannot be renamed to {new_name!r}",
                    errno.EINVAL,
                )
            return
        self._identify(f)
        f.closed_done = False
        if f.disk is not None:
            await self._replay_staged(f)
        if f.opens == 0:
            try:
                await self._closed(f)
            except RhvfsError as e:
                self.fail(e)
                raise

    def remove_file(self, f: RestoreFile) -> None:
        """Unlink: a disk image already streaming cannot be taken back."""
        if f.disk is not None and f.disk.state not in ("waiting", "skipped"):
            if self.phase not in ("failed", "done"):
                raise _err(f"{f.name!r} is being uploaded; it cannot be removed", errno.EBUSY)
        if f.staged is not None:
            f.staged.close()
            f.staged = None
        if f.disk is not None and f.disk.file is f:
            f.disk.file = None
        self.files.pop(f.id, None)

    def read(self, f: RestoreFile, offset: int, size: int) -> bytes:
        if f.mem is not None:
            return bytes(f.mem[offset : offset + size])
        if f.staged is not None:
            end = min(f.size, offset + size)
            return f.staged.read(offset, max(0, end - offset)).ljust(max(0, end - offset), b"\0")
        raise _err(f"{f.name!r} was streamed to the engine; it cannot be read back", errno.EACCES)

    async def write(self, f: RestoreFile, offset: int, data: bytes) -> int:
        try:
            return await self._write(f, offset, data)
        except RhvfsError as e:
            self.fail(e)
            raise

    async def _write(self, f: RestoreFile, offset: int, data: bytes) -> int:
        self._raise_if_failed()
        self.touch()
        n = len(data)
        end = offset + n
        if f.name == OPTIONS_FILE and f.disk is None:
            if self.options is not None:
                raise _err(
                    f"{OPTIONS_FILE} must be written before the set's data; the options are frozen",
                    errno.EBUSY,
                )
            if end > OPTIONS_MAX_BYTES:
                raise _err(f"{OPTIONS_FILE} is larger than {OPTIONS_MAX_BYTES} bytes", errno.EFBIG)
        else:
            self._freeze_options()
        if f.disk is not None:
            await self._disk_write(f, offset, data)
        elif f.mem is not None and _is_config(f.name):
            if end > CONFIG_MAX_BYTES:
                raise _err(
                    f"{f.name!r} is larger than {CONFIG_MAX_BYTES} bytes: not a configuration file",
                    errno.EFBIG,
                )
            if len(f.mem) < offset:
                f.mem.extend(bytes(offset - len(f.mem)))
            f.mem[offset:end] = data
        else:
            self._stage(f, offset, data)
        f.size = max(f.size, end)
        f.mtime_ns = time.time_ns()
        f.closed_done = False
        f.times_set = False
        return n

    def _stage(self, f: RestoreFile, offset: int, data: bytes) -> None:
        if f.staged is None:
            f.staged = self.manager.staging.open_file(f"restore/{self.name}/{f.name}")
            if f.mem:
                f.staged.write(0, bytes(f.mem))
        f.mem = None
        f.staged.write(offset, data)

    async def truncate(self, f: RestoreFile, size: int) -> None:
        """``ftruncate``/``O_TRUNC``: sparse-aware tools set an image's final size this way."""
        self._raise_if_failed()
        if f.mem is not None:
            if size < len(f.mem):
                del f.mem[size:]
            f.size = size
            return
        if size < f.size and f.disk is not None and f.disk.state != "waiting" and not f.dropped:
            raise _err(f"{f.name!r}: cannot shrink an image that is being uploaded", errno.EINVAL)
        if f.disk is not None and size > f.disk.set_disk.size:
            self.fail(
                _err(
                    f"{f.name!r}: {size} bytes is larger than the disk's {f.disk.set_disk.size}",
                    errno.EFBIG,
                )
            )
            self._raise_if_failed()
        f.size = size

    async def fsync(self, f: RestoreFile) -> None:
        """``fsync``: wait until the image's written data is on the engine."""
        self._raise_if_failed()
        d = f.disk
        if d is not None and d.stream is not None and d.state == "uploading":
            try:
                await d.stream.drain()
            except RhvfsError as e:
                self.fail(e)
                raise

    async def flush(self, f: RestoreFile) -> None:
        """``close(2)`` of a handle. On the last handle configuration is parsed here, so
        an error reaches the tool as the errno of its ``close``; an image's queued data
        is sent (errors reach ``close`` too), its completion is decided later."""
        if self.phase == "done":
            return
        self._raise_if_failed()
        if f.opens > 1 or f.closed_done or f.size == 0:
            # Not the last close, or an empty file: dd opens, dup2()s and closes the
            # original descriptor (a FLUSH) before writing. ``release`` decides then.
            await self.fsync(f)
            return
        if f.disk is not None:
            await self.fsync(f)  # PUT errors reach close()
            if f.times_set and not f.dropped:
                f.closed_done = True  # the image is complete: decided here, not in release
                await self._complete_and_wait(f)
            return
        try:
            await self._closed(f)
        except RhvfsError as e:
            self.fail(e)
            raise

    async def release(self, f: RestoreFile) -> None:
        self.touch()
        f.opens = max(0, f.opens - 1)
        if f.opens > 0 or f.closed_done or self.phase in ("failed", "done"):
            return
        try:
            await self._closed(f)
        except RhvfsError as e:
            self.fail(e)

    async def _closed(self, f: RestoreFile) -> None:
        """The last handle of ``f`` closed: parse configuration, or complete an image."""
        if f.id not in self.files or f.closed_done:
            return
        f.closed_done = True
        if f.disk is None and f.mem is not None:
            if f.name == OPTIONS_FILE:
                if self.options is not None:
                    raise _err(
                        f"{OPTIONS_FILE} written after the set's data: too late", errno.EBUSY
                    )
                parse_lines(bytes(f.mem).decode("utf-8", "replace"), source=OPTIONS_FILE)
                return
            if _is_manifest(f.name):
                await self.chain.manifest_closed(f)
            elif f.name == (self.manifest.ovf_file if self.manifest else OVF_NAME):
                self.ovf = bytes(f.mem)
                try:
                    self.ovf_info = parse_ovf(self.ovf)
                    if self.manifest is not None:
                        check_consistent(self.manifest, self.ovf_info)
                except RestoreError as e:
                    raise _err(e.detail, errno.EINVAL) from None
                self.note(f"vm.ovf read: {self.ovf_info.name} ({self.ovf_info.vm_id})")
            await self._maybe_complete()
            return
        d = f.disk
        if d is None or f.dropped:
            return
        f.close_gen += 1
        if f.times_set:
            await self._image_complete(f)
            return
        self.manager.spawn(functools.partial(self._settle_after_grace, f, f.close_gen))

    async def _settle_after_grace(self, f: RestoreFile, gen: int) -> None:
        """Closed and not reopened: complete a full-size image after ``close_grace_s``; a
        short one may still be written by a tool that reopens files (restic), so it counts
        as truncated only after ``truncated_after_s`` (or at once when its times are set)."""
        await trio.sleep(self.manager.close_grace_s)
        d = f.disk
        if f.close_gen != gen or f.opens > 0 or self.phase in ("failed", "done") or d is None:
            return
        if f.size < d.set_disk.size:
            await trio.sleep(max(0.0, self.manager.truncated_after_s - self.manager.close_grace_s))
            if f.close_gen != gen or f.opens > 0 or self.phase in ("failed", "done"):
                return
        try:
            await self._image_complete(f)
        except RhvfsError as e:
            self.fail(e)

    async def _image_complete(self, f: RestoreFile) -> None:
        """Finish ``f``'s upload (idempotent); a short image is truncated, a long one wrong."""
        d = f.disk
        assert d is not None
        if d.finish.is_set() or f.dropped:
            return
        if f.size != d.set_disk.size:
            if f.size < d.set_disk.size:
                raise _err(
                    f"image {f.name!r} is truncated: closed at {f.size} of {d.set_disk.size} bytes",
                    errno.EIO,
                )
            raise _err(
                f"image {f.name!r} is {f.size} bytes, the disk {d.set_disk.size}", errno.EFBIG
            )
        await self._ensure_upload(d)
        await self._replay_staged(f)
        d.finish.set()

    async def set_times(self, f: RestoreFile) -> None:
        """``utimes``: tools set times once a file is written. On a closed image it is
        complete now (no grace wait) and a failure of its upload is this call's errno; on
        an open one (cp sets them through the descriptor, then closes) the close completes it."""
        d = f.disk
        if d is None or f.dropped or self.phase == "done":
            return
        if f.opens > 0:
            f.times_set = True
            return
        await self._complete_and_wait(f)

    async def _complete_and_wait(self, f: RestoreFile) -> None:
        d = f.disk
        assert d is not None
        self._raise_if_failed()
        f.close_gen += 1  # a pending grace timer has nothing left to do
        try:
            await self._image_complete(f)
            if not self.chain.gate_open():
                # a chain's image waits for the later sets' files, which this very tool
                # may still have to write: only its data so far must have gone out
                if d.stream is not None:
                    await d.stream.drain()
                return
            await d.done.wait()
            if d.state == "failed":
                raise _err(f"upload of {d.set_disk.alias} failed: {d.error or self.error}")
        except RhvfsError as e:
            self.fail(e)
            raise

    # -- the manifest and the checks before any engine change --------------------

    def _freeze_options(self) -> None:
        if self.options is not None:
            return
        file_values: dict[str, str] = {}
        for f in self.files.values():
            if f.name == OPTIONS_FILE and f.mem is not None and f.disk is None:
                file_values = parse_lines(
                    bytes(f.mem).decode("utf-8", "replace"), source=OPTIONS_FILE
                )
        try:
            self.options = build_options(
                defaults=self.manager.config.restore_defaults, file_values=file_values
            )
        except RestoreError as e:
            raise _err(e.detail, errno.EINVAL) from None
        self.note("options frozen")

    async def _manifest_closed(self, f: RestoreFile) -> None:
        async with self._manifest_lock:
            if self.manifest is not None:
                return
            assert f.mem is not None
            try:
                manifest = parse_manifest(bytes(f.mem))
                if self.ovf_info is not None:
                    check_consistent(manifest, self.ovf_info)
            except RestoreError as e:
                raise _err(e.detail, errno.EINVAL) from None
            self._freeze_options()
            opts = self.options
            assert opts is not None
            bad = unknown_disk_keys(opts, manifest.disk_keys())
            if bad:
                raise _err(
                    f"options name disks that are not in the set: {', '.join(bad)}", errno.EINVAL
                )
            self.note(
                f"manifest read: {manifest.kind} {manifest.owner_name} ({manifest.owner_id}), "
                f"{len(manifest.disks)} disk(s), {len(manifest.nics)} nic(s)"
            )
            await self._preflight(manifest, opts)
            self.manifest = manifest
            for d in manifest.disks:
                self.disks[d.id] = _Disk(set_disk=d, selected=opts.selects(d.id, d.alias))
                if not self.disks[d.id].selected:
                    self.disks[d.id].state = "skipped"
            for other in list(self.files.values()):
                self._identify(other)
        for other in list(self.files.values()):
            if other.disk is not None:
                await self._replay_staged(other)
                if other.opens == 0 and other.size and not other.closed_done:
                    await self._closed(other)

    async def _preflight(self, manifest: Manifest, opts: RestoreOptions) -> None:
        """Every check that can refuse the restore before the engine is changed."""
        engine = self.manager.engine
        kind = manifest.kind
        if kind == "template":
            name = opts.template_name or opts.vm_name or self.name
        else:
            name = opts.vm_name or self.name
        self.target_name = name
        clusters = await engine.list_clusters()
        wanted = opts.cluster or manifest.cluster_id or manifest.cluster_name
        if not any(wanted in (c.id, c.name) for c in clusters):
            alt = manifest.cluster_name if opts.cluster is None else None
            if alt is None or not any(alt == c.name for c in clusters):
                raise _err(f"cluster {wanted!r} does not exist on the engine", errno.EINVAL)
        if kind == "vm" and opts.template_name and getattr(engine, "create_template", None) is None:
            raise _err(
                "this engine facade cannot make a template from a VM (no create_template): "
                "template_name is only supported for template sets",
                errno.ENOTSUP,
            )
        if kind == "template" or opts.template_name:
            tname = name if kind == "template" else opts.template_name
            if any(t.name == tname for t in await engine.list_templates()):
                raise _err(f"a template named {tname!r} already exists", errno.EEXIST)
        if kind == "vm":
            existing = await engine.find_vm(name)
            if existing is not None:
                if not opts.vm_force_overwrite:
                    raise _err(
                        f"a VM named {name!r} already exists ({existing.id}); set "
                        "vm_force_overwrite = yes to replace it, or vm_name to restore a copy",
                        errno.EEXIST,
                    )
                if existing.status != "down":
                    raise _err(
                        f"VM {name!r} is {existing.status}; overwrite only replaces a VM that is down",
                        errno.EBUSY,
                    )
                self.overwrite_vm = existing
                self.note(f"will replace vm {name} ({existing.id}) once the disks are uploaded")
        sds = await engine.list_storage_domains()
        need: dict[str, int] = {}
        for d in manifest.disks:
            if not opts.selects(d.id, d.alias):
                continue
            sd = self._storage_domain_of(d, opts, sds)
            # a sparse disk needs what it held (thin provisioning), a preallocated one its size
            held = d.actual_size if d.sparse and d.actual_size is not None else d.size
            need[sd.id] = need.get(sd.id, 0) + held
        for sd_id, nbytes in need.items():
            sd = next(s for s in sds if s.id == sd_id)
            if sd.available is not None and nbytes > sd.available:
                raise _err(
                    f"storage domain {sd.name} has {sd.available} bytes free; the disks to "
                    f"restore on it need {nbytes}",
                    errno.ENOSPC,
                )

    def _storage_domain_of(
        self, d: ManifestDisk, opts: RestoreOptions, sds: Sequence[StorageDomain]
    ) -> StorageDomain:
        wanted = opts.storage_domain.get(d.id, d.alias)
        candidates = [wanted] if wanted else [d.storage_domain_id, d.storage_domain_name]
        for c in candidates:
            for sd in sds:
                if c and c in (sd.id, sd.name):
                    return sd
        raise _err(
            f"storage domain {candidates[0] or candidates[-1]!r} of disk {d.alias} does not exist "
            "(set storage_domain in the options)",
            errno.EINVAL,
        )

    # -- the data path ------------------------------------------------------------

    async def _disk_write(self, f: RestoreFile, offset: int, data: bytes) -> None:
        d = f.disk
        assert d is not None
        if f.dropped:
            return
        if offset + len(data) > d.set_disk.size:
            raise _err(
                f"{f.name!r}: write at {offset}+{len(data)} is beyond the disk's {d.set_disk.size} bytes",
                errno.EFBIG,
            )
        await self._ensure_upload(d)
        if f.staged is not None:
            await self._replay_staged(f)
        assert d.stream is not None
        await d.stream.write(offset, data)
        d.bytes_written += len(data)

    async def _replay_staged(self, f: RestoreFile) -> None:
        """Stream what was staged for ``f`` before its disk was known, in offset order."""
        d = f.disk
        if d is None or f.dropped:
            if f.staged is not None and f.dropped:
                f.staged.close()
                f.staged = None
            return
        if f.mem is not None and len(f.mem):
            data, f.mem = bytes(f.mem), None
            await self._ensure_upload(d)
            assert d.stream is not None
            await d.stream.write(0, data)
            d.bytes_written += len(data)
        f.mem = None
        if f.staged is None:
            return
        staged, f.staged = f.staged, None
        await self._ensure_upload(d)
        assert d.stream is not None
        try:
            step = 8 * 1024 * 1024
            for start, end in staged.ranges():
                for pos in range(start, end, step):
                    data = staged.read(pos, min(step, end - pos))
                    await d.stream.write(pos, data)
                    d.bytes_written += len(data)
            self.note(f"replayed {staged.charged_bytes} staged bytes of {f.name}")
        finally:
            staged.close()

    async def _ensure_upload(self, d: _Disk) -> None:
        if d.stream is not None:
            return
        async with d.lock:
            if d.stream is not None:
                return
            if self.phase == "receiving":
                self.phase = "uploading"
            d.state = "creating"
            try:
                d.stream = await self.manager.start(self._disk_task, d)
            except BaseException:
                d.state = "failed"
                d.done.set()
                raise

    async def _disk_task(self, d: _Disk, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        engine = self.manager.engine
        sd_disk = d.set_disk
        opts = self.options
        assert opts is not None
        started = False
        try:
            sds = await engine.list_storage_domains()
            sd = self._storage_domain_of(sd_disk, opts, sds)
            alias = opts.disk_names.get(sd_disk.id, sd_disk.alias) or sd_disk.alias
            disk_id: str | None = sd_disk.id
            try:
                await engine.get_disk(sd_disk.id)
                disk_id = None  # the original still exists: let the engine pick a new id
            except NotFound:
                pass
            t0 = trio.current_time()
            backup = (
                sd_disk.backup
                if sd_disk.backup == "incremental" and sd_disk.format == "cow"
                else None
            )
            disk = await engine.create_disk(
                alias=alias,
                provisioned_size=sd_disk.size,
                format=sd_disk.format,
                sparse=sd_disk.sparse,
                storage_domain=sd.id,
                disk_id=disk_id,
                backup=backup,
                description=sd_disk.description,
                content_type=sd_disk.content_type or "data",
            )
            d.disk_id = disk.id
            self.created_disks.append(disk.id)
            self.note(
                f"created disk {alias} ({disk.id}, {sd_disk.size} bytes, {sd_disk.format}) on "
                f"{sd.name} in {trio.current_time() - t0:.1f} s"
            )
            transfer = await engine.start_transfer(
                disk_id=disk.id,
                direction="upload",
                format="raw",
                inactivity_timeout=max(self.manager.config.inactivity_timeout, 60),
                timeout_policy="cancel",
            )
            d.transfer_id = transfer.id
            assert transfer.transfer_url is not None
            failure: RhvfsError | None = None
            async with self.manager.opener(transfer.transfer_url, transfer.proxy_url) as target:
                async with trio.open_nursery() as nursery:
                    stream = UploadStream(target, size=sd_disk.size)
                    stream.start(nursery)
                    d.state = "uploading"
                    started = True
                    task_status.started(stream)
                    while not (d.finish.is_set() and (d.abort or self.chain.gate_open())):
                        with trio.move_on_after(self.manager.keepalive_s):
                            await d.finish.wait()
                            await self.chain.wait_gate()
                        if (
                            not (d.finish.is_set() and self.chain.gate_open())
                            and stream.idle_s() >= self.manager.keepalive_s
                        ):
                            # the tool pauses (restic between packs): a flush keeps the
                            # transfer from the engine's inactivity timeout
                            await stream.keepalive()
                    try:
                        if d.abort:
                            raise _err("upload aborted")
                        await self.chain.apply(d, stream)
                        d.state = "finalizing"
                        stats = await stream.finish()
                    except RhvfsError as e:
                        await stream.abort()
                        failure = e
            if failure is not None:
                raise failure
            await engine.finalize_transfer(transfer.id)
            d.transfer_id = None
            d.state = "uploaded"
            self.note(
                f"uploaded {alias}: {stats.bytes_received} bytes written, {stats.bytes_put} PUT "
                f"in {stats.put_requests} requests, {stats.bytes_zeroed} zeroed"
            )
        except BaseException as raw:
            failed: BaseException = raw
            if isinstance(raw, RhvfsError) and not isinstance(raw, RestoreError):
                failed = _err(f"upload of disk {sd_disk.alias} failed: {raw}", errno_of(raw))
            elif isinstance(raw, Exception) and not isinstance(raw, RhvfsError):
                failed = _err(f"upload of disk {sd_disk.alias} failed: {raw!r}")
            d.state = "failed"
            d.error = str(failed)
            with trio.CancelScope(shield=True):
                if d.transfer_id is not None:
                    try:
                        await engine.cancel_transfer(d.transfer_id)
                    except Exception as ce:
                        self.note(f"cancel transfer {d.transfer_id}: {ce}")
            if not isinstance(raw, Exception):
                raise  # cancellation
            if not started:
                if failed is raw:
                    raise
                raise failed from raw
            self.fail(failed)
        finally:
            d.done.set()
        await self._maybe_complete()

    # -- completion: the VM ----------------------------------------------------------

    def _complete(self) -> bool:
        if self.manifest is None or self.ovf_info is None or self.phase in ("failed", "done"):
            return False
        if not self.chain.gate_open():
            return False
        return all(d.state in ("uploaded", "skipped") for d in self.disks.values())

    async def _maybe_complete(self) -> None:
        if self._completion_started or not self._complete():
            return
        self._completion_started = True
        self.phase = "creating_vm"
        self.note("set complete")
        for f in self.files.values():
            if f.staged is not None:  # extra files nobody claimed
                f.staged.close()
                f.staged = None
        self.manager.spawn(self._create_vm)

    async def _create_vm(self) -> None:
        try:
            await restore_vm.create_vm(self)
        except Exception as e:
            self.fail(e if isinstance(e, RhvfsError) else _err(f"creating the vm: {e}"))
            return
        self.phase = "done"
        self.note(f"done: vm {self.vm_id}")
        self._finished.set()


# -- the manager --------------------------------------------------------------------


class RestoreManager:
    """All restores of a mount, and the nursery their engine work runs in."""

    def __init__(
        self,
        engine: RestoreEngine,
        config: Config,
        *,
        opener: UploadOpener | None = None,
        staging: StagingArea | None = None,
        close_grace_s: float = CLOSE_GRACE_S,
        truncated_after_s: float = TRUNCATED_AFTER_S,
        keepalive_s: float = KEEPALIVE_S,
    ) -> None:
        self.close_grace_s = close_grace_s
        self.truncated_after_s = truncated_after_s
        self.keepalive_s = keepalive_s
        self.engine = engine
        self.config = config
        self.opener = opener or default_upload_opener(config)
        self.staging = staging or StagingArea(config.staging_dir, limit_bytes=config.staging_limit)
        self.sessions: dict[str, RestoreSession] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The service: owns the nursery of every upload and VM creation until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                for session in self.sessions.values():
                    await session.abandon("rhvfs stopped before the restore finished")
            self.staging.close()

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RestoreError("the restore service is not running")
        return self._nursery

    def spawn(self, fn: Callable[[], Any]) -> None:
        self._require_nursery().start_soon(fn)

    async def start(self, fn: Any, *args: Any) -> Any:
        return await self._require_nursery().start(fn, *args)

    def create(self, name: str) -> RestoreSession:
        """``mkdir restore/<name>``."""
        if name in self.sessions:
            raise _err(f"restore/{name} exists", errno.EEXIST)
        if not name or name.startswith(".") or "/" in name:
            raise _err(f"{name!r} is not a usable restore name", errno.EINVAL)
        session = RestoreSession(self, name)
        self.sessions[name] = session
        session.note("created")
        return session

    def get(self, name: str) -> RestoreSession:
        try:
            return self.sessions[name]
        except KeyError:
            raise NotFound(f"restore/{name}") from None

    def remove(self, name: str) -> None:
        """``rmdir restore/<name>``: forget a restore; an unfinished one is cancelled and rolled back.

        Refused (EBUSY) only while the VM is being created: that step is short and
        cancelling it half-way would leave more to undo.
        """
        session = self.get(name)
        if session.phase == "creating_vm":
            raise _err(f"restore/{name} is creating the VM; wait until it is done", errno.EBUSY)
        if session.phase in ("receiving", "uploading"):
            session.fail(_err("cancelled: the restore directory was removed", errno.ECANCELED))
        for f in session.files.values():
            if f.staged is not None:
                f.staged.close()
                f.staged = None
        del self.sessions[name]

    def status(self) -> dict[str, Any]:
        return {
            name: {"phase": s.phase, "vm_id": s.vm_id, "error": s.error}
            for name, s in self.sessions.items()
        }
