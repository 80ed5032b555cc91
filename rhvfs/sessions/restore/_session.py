"""One restore: a backup set written into ``restore/<name>/`` becomes a VM again.

``RestoreSession`` is the coordinator of one ``restore/<name>/`` directory.
The VFS (``rhvfs.vfs.restore``) owns names, directories and inodes and calls
it with ``RestoreFile`` objects (a file keeps its object across renames);
the session dispatches each call to the part that owns it:

- ``_files``: which file is what (configuration, image of which disk);
- ``_config``: the options (frozen at the first write of set data: the
  ``rhvfs-restore.conf`` file in the directory over the mount defaults), and
  ``manifest.json`` and ``vm.ovf``, kept in memory and parsed when closed;
  once the manifest is parsed, ``_preflight`` runs the checks before any
  engine change. A refusal fails the session: the closing call and every
  later write raise the refusal's class (``RestoreNameClash``,
  ``RestoreNoSpace``, ``RestoreInputError``, ...; ``rhvfs.fs`` maps each to
  its errno);
- ``_disks``: each image's engine disk and upload stream, from its first
  write; data that arrives before the manifest explains it is staged;
- ``_images``: when an image is complete (by evidence: every byte written or
  a hole the tool made, or its times set on the closed file; ``_coverage``);
- ``_chain``: a full set with its incrementals or one differential in one
  directory; disks are finalized only once the chain is settled;
- ``_vm``: the VM or template made from the complete set (``_overwrite``:
  replacing a VM without losing it);
- ``_rollback``: removing what the restore created when it fails;
- ``_journal``: what it creates, in the mount's journal until it ends (a
  killed mount's leftovers are removed by the next mount or ``rhvfs gc``);
- ``_status``: the ``.status`` document;
- ``_outcome``: the call that completes the set (``flush``, ``set_times`` or
  ``rename``) waits for the VM and fails with the restore's error;
- ``_partial``: a set still lacking a disk after a quiet period ends
  (without it, or failed), never hangs.

**The set is complete** when ``manifest.json`` and ``vm.ovf`` were closed and
parsed, and every selected disk (all, minus ``vm_exclude_disks``, or
``vm_disks``; ``vm_disks = none`` restores configuration only) finished its
upload. Then, in the background: the VM is created from the OVF (without its
disk and NIC devices; ``regenerate_ids`` when the original id is still in
use; under a temporary name when it replaces a VM), the disks
are attached (interface/bootable/active from the set or the options), the
NICs added (MACs auto, original, new, or explicit), a template made from it
if ``template_name`` asks (needs ``create_template`` on the engine facade;
``remove_base_vm`` then removes the VM), and the VM started if
``vm_switchon``; only then is a VM that ``vm_force_overwrite`` replaces
removed, if it is still down and unchanged (``_overwrite``). A template set
instead becomes a template imported from its OVF
(``create_template_from_ovf``) whose disk references are rewritten to the
uploaded disks (its name: ``template_name``, ``vm_name`` or the directory).
Any failure rolls back what this restore created (transfers cancelled, disks,
VM and template removed); so do ``rmdir restore/<name>`` of an unfinished
restore and stopping the mount. ``.status`` shows the phase (``Phase``):
``receiving`` → ``uploading`` → ``creating_vm`` → ``done`` | ``failed``
(``settled`` turns true once a failed restore finished cleaning up).

Invariants (they hold between awaits):

- ``phase`` only moves forward (``_state``); ``done`` and ``failed`` are final.
- ``fail`` is synchronous: in one step it records the failure, sets ``failed``,
  opens the chain gate and aborts every disk, and schedules the rollback; so
  no task wakes to a failed session with a disk that may still finalize.
  ``_failure`` (the class later calls raise again) is set exactly when the
  phase is ``failed``.
- ``manifest`` is set once, only after every preflight check passed,
  together with ``disks`` (no await in between); a chain later replaces it
  by the newest set's (``adopt_newest``), in one step. ``options`` are
  frozen once and never change (``_config``).
- A file's disk binding never changes once made; a disk has at most one live file.
- The VM build starts at most once (``_completion_started``).
- Every engine object made is in ``created`` before the next await.

Must not: know about inodes, directories or FUSE; touch anything on the
engine it did not create, except the VM an overwrite replaces; carry errno
values (errors are named classes; ``rhvfs.fs`` owns the errno table).
"""

from __future__ import annotations

import time
from typing import Any

import trio

from rhvfs.backupset import Manifest, OvfInfo
from rhvfs.errors import (
    RestoreBusy,
    RestoreCancelled,
    RestoreError,
    RestoreFailed,
    RestoreFinished,
    RestoreInputError,
    RestoreTooLarge,
    RhvfsError,
)
from rhvfs.sessions.restore._chain import ChainAssembly
from rhvfs.sessions.restore._config import SetConfig, is_options_file
from rhvfs.sessions.restore._containment import contained
from rhvfs.sessions.restore._disks import DiskUploads
from rhvfs.sessions.restore._files import (
    RestoreDisk,
    RestoreFile,
    identify,
    is_config,
    is_manifest,
    rsync_target,
)
from rhvfs.sessions.restore._images import ImageCompletion
from rhvfs.sessions.restore._journal import RestoreJournal
from rhvfs.sessions.restore._options import RestoreOptions
from rhvfs.sessions.restore._outcome import OutcomeWait
from rhvfs.sessions.restore._partial import PartialSetWatch
from rhvfs.sessions.restore._ports import RestoreServices
from rhvfs.sessions.restore._rollback import Created, roll_back
from rhvfs.sessions.restore._state import DiskState, Phase
from rhvfs.sessions.restore._status import Notes, render, status_document
from rhvfs.sessions.restore._vm import UploadedDisk, VmPlan, create_vm


def _failure_of(exc: BaseException | str) -> RestoreError:
    """The restore error a failure is recorded as: its own class if it is one, else
    ``RestoreFailed`` (later calls raise that class again)."""
    if isinstance(exc, RestoreError):
        return exc
    text = exc.detail if isinstance(exc, RhvfsError) and exc.detail else str(exc)
    return RestoreFailed(text)


class RestoreSession:
    """One ``restore/<name>/`` directory: files in, a VM out."""

    def __init__(self, services: RestoreServices, name: str) -> None:
        # every background task of this restore fails this restore only (``_containment``)
        services = contained(services, self.fail, label=f"restore/{name}")
        self.services = services
        self.name = name
        self.phase = Phase.RECEIVING
        self.error: str | None = None
        self._failure: RestoreError | None = None
        self.files: dict[int, RestoreFile] = {}
        self.disks: dict[str, RestoreDisk] = {}  # by the set's disk id, once the manifest is read
        self.created = Created()
        self.notes = Notes(name)
        # what this restore creates is journaled until it ends (crash safety: ``_journal``)
        self.journal = RestoreJournal(services, name, self.created, note=self.note)
        services = self.services = self.journal.services
        self._completion_started = False
        self._build_ended = trio.Event()  # the VM build task ended (set only once started)
        self._finished = trio.Event()
        self.config = SetConfig(services, directory=name, note=self.note)
        self.chain = ChainAssembly(self, services)
        self.uploads = DiskUploads(
            self, services, gate=self.chain, created=self.created, label=f"restore/{name}"
        )
        self.images = ImageCompletion(self, services, uploads=self.uploads, gate=self.chain)
        self.outcome = OutcomeWait(self, services)
        self.partial = PartialSetWatch(self, services)

    @property
    def options(self) -> RestoreOptions | None:
        return self.config.options

    @property
    def manifest(self) -> Manifest | None:
        return self.config.manifest

    @property
    def vm_id(self) -> str | None:
        """The restored VM (None for a template, or until done)."""
        return self.created.restored_vm

    @property
    def template_id(self) -> str | None:
        return self.created.template

    @property
    def failure(self) -> RestoreError | None:
        return self._failure

    def config_read(self) -> bool:
        return self.manifest is not None and self.config.ovf_info is not None

    def ovf_missing(self) -> bool:
        return not self.chain.active and self.config.ovf_info is None

    def chain_waiting(self) -> bool:
        return not self.chain.gate_open()

    def building(self) -> bool:
        return self._completion_started

    # -- status -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        failure = self._failure
        return status_document(
            name=self.name,
            phase=self.phase,
            settled=self._finished.is_set(),
            error=self.error,
            errno_number=self.services.errno_for(failure) if failure is not None else 0,
            vm_id=self.vm_id,
            vm_name=self.config.target_name,
            template_id=self.template_id,
            manifest=self.manifest,
            ovf_read=self.config.ovf_info is not None,
            disks=self.disks.values(),
            options=self.options,
            chain=self.chain.status(),
            staged_bytes=sum(f.staged.charged_bytes for f in self.files.values() if f.staged),
            notes=self.notes,
        )

    def status_json(self) -> bytes:
        return render(self.status())

    async def wait_finished(self) -> None:
        """Until the restore is done, or failed and rolled back."""
        await self._finished.wait()

    def note(self, text: str) -> None:
        """A line for the log and ``.status``."""
        self.notes(text)

    # -- failure and rollback ---------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise type(self._failure)(f"restore {self.name} failed: {self.error}")
        if self.phase is Phase.DONE:
            raise RestoreFinished(
                f"restore {self.name} is done (vm {self.vm_id}); nothing more to write"
            )

    def fail(self, exc: BaseException | str) -> None:
        """Mark the session failed and roll back in the background. Idempotent."""
        if self.phase.final:
            return
        self._stop(_failure_of(exc))
        self.services.spawn(self._rollback)

    async def abandon(self, reason: str) -> None:
        """Roll back now (no nursery any more): used when the manager stops mid-restore."""
        if self.phase.final:
            return
        self._stop(RestoreCancelled(reason))
        await self._rollback()

    def _stop(self, failure: RestoreError) -> None:
        text = failure.detail or str(failure)
        self.error = text
        self._failure = failure
        self.phase = Phase.FAILED
        self.outcome.decided()
        self.note(f"failed: {text}")
        self._event(f"failed: {text}", "error")
        for f in self.files.values():
            f.release_memory()  # nothing will read them now: back to the mount's budget
        self.chain.stop()
        for d in self.disks.values():
            d.abort = True
            d.finish.set()
        self.uploads.wake()

    async def _rollback(self) -> None:
        with trio.CancelScope(shield=True):
            for d in self.disks.values():
                if d.state.busy:
                    await d.done.wait()
            if self._completion_started:
                await self._build_ended.wait()  # what it creates meanwhile is rolled back too
            await roll_back(self.services.engine, self.created, self.note)
            await self.journal.rolled_back()
            if self.created.committed:  # kept: the user's now, as after a done restore
                await self.journal.unmark()
            self.drop_staged()
            self._finished.set()

    def drop_staged(self) -> None:
        """Free the staging space of every file (the restore is over or forgotten)."""
        for f in self.files.values():
            f.drop_staged()

    # -- files ------------------------------------------------------------------

    def new_file(self, name: str) -> RestoreFile:
        if not (self.phase is Phase.DONE and is_config(name)):
            self._raise_if_failed()  # a set's own configuration may follow its VM (vm.xml)
        f = RestoreFile(name, self.services.config_memory)
        self.touch()
        if not is_config(name):
            f.mem = None  # anything but configuration is streamed or staged, never held in memory
        self.files[f.id] = f
        identify(f, self.manifest, self.disks, self.files)
        return f

    def touch(self) -> None:
        """Directory activity (a chain is settled only after ``close_grace_s`` without it)."""
        self.chain.touch()
        self.partial.touch()

    def open(self, f: RestoreFile) -> None:
        self.touch()
        f.opens += 1
        f.close_gen += 1  # reopened (restic writes a file in many opens): not complete yet

    async def rename(self, f: RestoreFile, new_name: str) -> None:
        await self.outcome.around(lambda: self._rename(f, new_name))

    async def _rename(self, f: RestoreFile, new_name: str) -> None:
        old = f.name
        f.name = new_name
        if f.disk is not None:
            if new_name != f.disk.set_disk.file and rsync_target(old) != new_name:
                f.name = old
                raise RestoreInputError(
                    f"{old!r} holds disk {f.disk.set_disk.id}; it cannot be renamed to {new_name!r}"
                )
            return
        identify(f, self.manifest, self.disks, self.files)
        f.closed_done = False
        if f.disk is not None:
            await self.uploads.replay_staged(f)
        if f.opens == 0:
            try:
                await self._closed(f)
            except RhvfsError as e:
                self.fail(e)
                raise

    def remove_file(self, f: RestoreFile) -> None:
        """Unlink: a disk image already streaming cannot be taken back."""
        if f.disk is not None and f.disk.state not in (DiskState.WAITING, DiskState.SKIPPED):
            if not self.phase.final:
                raise RestoreBusy(f"{f.name!r} is being uploaded; it cannot be removed")
        f.drop_staged()
        if f.disk is not None and f.disk.file is f:
            f.disk.file = None
        self.files.pop(f.id, None)

    def read(self, f: RestoreFile, offset: int, size: int) -> bytes:
        return f.read(offset, size)

    async def write(self, f: RestoreFile, offset: int, data: bytes) -> int:
        try:
            return await self._write(f, offset, data)
        except RhvfsError as e:
            self.fail(e)
            raise

    async def _write(self, f: RestoreFile, offset: int, data: bytes) -> int:
        if self.phase is Phase.DONE and f.disk is None and f.mem is not None and is_config(f.name):
            # the completing call waited for the VM, so a tool may still write the set's
            # configuration the VM does not need (vm.xml after vm.ovf): kept, not used
            f.write_config(offset, data)
            f.size = max(f.size, offset + len(data))
            return len(data)
        self._raise_if_failed()
        self.touch()
        n = len(data)
        end = offset + n
        if is_options_file(f):
            self.config.check_options_write(end)
        else:
            self.config.freeze_options(self.files.values())
        if f.disk is not None:
            self.images.reopen(f)  # a write after completion: applied, or refused
            await self.uploads.write(f, offset, data)
        elif f.mem is not None and is_config(f.name):
            f.write_config(offset, data)
        else:
            self.uploads.stage(f, offset, data)
        f.coverage.write(offset, n)
        f.size = max(f.size, end)
        f.mtime_ns = time.time_ns()
        f.closed_done = False
        f.times_set = False
        return n

    async def truncate(self, f: RestoreFile, size: int) -> None:
        """``ftruncate``/``O_TRUNC``: sparse-aware tools set an image's final size this way."""
        self._raise_if_failed()
        if f.mem is not None:
            if size < len(f.mem):
                del f.mem[size:]
            f.size = size
            return
        d = f.disk
        if size < f.size and d is not None and d.state != DiskState.WAITING and not f.dropped:
            raise RestoreInputError(f"{f.name!r}: cannot shrink an image that is being uploaded")
        if d is not None and size > d.set_disk.size:
            self.fail(
                RestoreTooLarge(
                    f"{f.name!r}: {size} bytes is larger than the disk's {d.set_disk.size}"
                )
            )
            self._raise_if_failed()
        if size != f.size:
            self.images.reopen(f)
        f.coverage.truncate(size)
        f.size = size

    async def fsync(self, f: RestoreFile) -> None:
        """``fsync``: wait until the image's written data is on the engine."""
        self._raise_if_failed()
        d = f.disk
        if d is not None and d.stream is not None and d.state == DiskState.UPLOADING:
            try:
                await d.stream.drain()
            except RhvfsError as e:
                self.fail(e)
                raise

    async def flush(self, f: RestoreFile) -> None:
        await self.outcome.around(lambda: self._flush(f))

    async def _flush(self, f: RestoreFile) -> None:
        """``close(2)`` of a handle. On the last handle configuration is parsed here, so
        an error reaches the tool as the error of its ``close``; an image's queued data
        is sent (errors reach ``close`` too), its completion is decided later."""
        if self.phase is Phase.DONE:
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
        if f.opens > 0 or f.closed_done or self.phase.final:
            return
        try:
            await self._closed(f)
        except RhvfsError as e:
            self.fail(e)

    async def set_times(self, f: RestoreFile) -> None:
        await self.outcome.around(lambda: self._set_times(f))

    async def _set_times(self, f: RestoreFile) -> None:
        """``utimes``: tools set times once a file is written. On an image at its full size
        it is complete now (no grace wait) and a failure of its upload is this call's
        error, also through an open descriptor (cp -a and bacula-fd set times, then close:
        bacula-fd ignores close errors, not those of futimes); on a shorter open one the
        close decides. Data staged before the manifest keeps the mark: it completes once bound."""
        d = f.disk
        if f.dropped or self.phase is Phase.DONE:
            return
        if d is None:
            if f.mem is None and f.size:
                f.times_set = True  # unbound: the manifest's binding completes it
            return
        if f.opens > 0:
            f.times_set = True
            if f.size != d.set_disk.size:
                return
        await self._complete_and_wait(f)

    async def _complete_and_wait(self, f: RestoreFile) -> None:
        self._raise_if_failed()
        try:
            await self.images.complete_and_wait(f)
        except RhvfsError as e:
            self.fail(e)
            raise

    async def _closed(self, f: RestoreFile) -> None:
        """The last handle of ``f`` closed: parse configuration, or complete an image."""
        if f.id not in self.files or f.closed_done:
            return
        f.closed_done = True
        if f.disk is None and f.mem is not None:
            await self._config_closed(f)
            return
        await self.images.closed(f)

    # -- configuration: options, manifest, OVF ---------------------------------------

    async def _config_closed(self, f: RestoreFile) -> None:
        if is_options_file(f):
            self.config.options_closed(f)
            return
        if is_manifest(f.name):
            await self.chain.manifest_closed(f)
        elif self.config.is_ovf(f.name):
            await self.config.ovf_closed(f)
        await self.check_complete()

    async def read_manifest(self, f: RestoreFile) -> None:
        """A single set's manifest (or a chain's root) was closed: parse and check it
        before any engine change, and bind the files already here to its disks."""
        disks = await self.config.read_manifest(f, self.files.values())
        if disks is None:
            return  # adopted already
        self.disks.update(disks)  # no await since the manifest was adopted: see the invariants
        self._event("started", "normal")
        self.partial.start()
        for other in list(self.files.values()):
            identify(other, self.manifest, self.disks, self.files)
        for other in list(self.files.values()):
            if other.disk is not None:
                await self.uploads.replay_staged(other)
                if other.opens == 0 and other.size and not other.closed_done:
                    await self._closed(other)

    def adopt_newest(self, manifest: Manifest, ovf: bytes, ovf_info: OvfInfo) -> None:
        """A settled chain: the VM is made from its newest set (the disks keep their files)."""
        self.config.adopt_newest(manifest, ovf, ovf_info, self.disks.values())

    # -- the disks' reports ----------------------------------------------------------

    def images_changed(self) -> None:
        """A disk left the set (skipped): the others' uploads stop waiting for it."""
        self.uploads.wake()

    def uploads_started(self) -> None:
        if self.phase is Phase.RECEIVING:
            self.phase = Phase.UPLOADING

    # -- completion: the VM ----------------------------------------------------------

    def _complete(self) -> bool:
        if self.manifest is None or self.config.ovf_info is None or self.phase.final:
            return False
        if not self.chain.gate_open():
            return False
        return all(d.state in (DiskState.UPLOADED, DiskState.SKIPPED) for d in self.disks.values())

    async def check_complete(self) -> None:
        """Start making the VM (in the background) if the set is complete now."""
        if self._completion_started or not self._complete():
            return
        self._completion_started = True
        self.phase = Phase.CREATING_VM
        self.note("set complete")
        self.drop_staged()  # extra files nobody claimed
        self.services.spawn(self._create_vm)

    async def _create_vm(self) -> None:
        try:
            await self._build_vm()
        finally:
            # also when cancelled (the mount stops): ``abandon``'s rollback waits for it
            self._build_ended.set()
        if self.phase.final:
            return
        self.phase = Phase.DONE
        self.journal.done()  # the VM is the user's before the tool hears of it
        try:
            await self.journal.unmark()  # after the entry is gone (``_journal``)
        finally:
            self.outcome.decided()
            self.note(f"done: vm {self.vm_id}")
            self._event(f"finished: {self._made()}", "normal")
            self._finished.set()

    def _made(self) -> str:
        if self.vm_id is not None:
            return f"VM {self.config.target_name} ({self.vm_id}) created"
        return f"template {self.config.target_name} ({self.template_id}) created"

    def _event(self, what: str, severity: str) -> None:
        """Post ``what`` happened to this restore to the engine's events (when enabled)."""
        events = self.services.events
        if events is None:
            return
        m = self.manifest
        source = f" from the set of {m.kind} {m.owner_name}" if m is not None else ""
        target = self.config.target_name or self.name
        events.post(
            f"rhvfs: restore of {target}{source} {what} (restore/{self.name})",
            severity=severity,
            vm_id=self.vm_id,
        )

    async def _build_vm(self) -> None:
        """Make the VM or template; a failure fails the session."""
        config = self.config
        try:
            assert config.manifest is not None and config.options is not None
            assert config.ovf is not None and config.ovf_info is not None
            plan = VmPlan(
                name=config.target_name or self.name,
                manifest=config.manifest,
                options=config.options,
                ovf=config.ovf,
                ovf_info=config.ovf_info,
                disks=tuple(
                    UploadedDisk(d.set_disk, d.disk_id)
                    for d in self.disks.values()
                    if d.state == DiskState.UPLOADED and d.disk_id
                ),
                overwrite_vm=config.overwrite_vm,
            )
            await create_vm(self.services.engine, plan, created=self.created, note=self.note)
        except Exception as e:
            self.fail(e if isinstance(e, RhvfsError) else RestoreFailed(f"creating the vm: {e}"))
            return
        if self.phase.final:
            # failed while it was built (a late write was refused): the rollback, waiting
            # for ``_build_ended``, removes the VM and its disks too
            self.created.vm = self.created.restored_vm
            self.created.disks[:] = [d.disk_id for d in self.disks.values() if d.disk_id]
