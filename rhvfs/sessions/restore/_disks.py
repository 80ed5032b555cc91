"""The engine side of each disk image: disk creation, the upload stream, staging.

Owns, per disk of the set (``RestoreDisk``): the task that creates the
engine disk (its original id unless taken), starts the upload transfer,
runs the ``UploadStream``, keeps an idle transfer alive with a flush every
``keepalive_s`` (restic pauses between packs; the engine would time the
transfer out), waits for the image to be complete, every other selected image of the set
too (a late write to a complete image is applied until then), and the
chain gate open,
zeroes every range never written unless the new disk reads zeros
(``_coverage.reads_zero``: qcow2, sparse, or file storage; a raw preallocated
disk on block storage shows the LV's old contents), applies the chain's
files, and finalizes the transfer; and the data path
into it: writes of a bound file go to its stream, data that arrives before
the manifest explains its file is staged locally (``StagingArea``, bounded)
and replayed into the stream in offset order once the disk is known.

A disk's task starts at its image's first write and runs in the manager's
nursery; a failure after it started fails the session (``UploadHost.fail``)
and cancels the transfer. Every disk made is put into the ``Created`` ledger
as soon as the engine returns it.

Must not: decide when an image is complete (``_images``) or the set
(the session); know about directories, inodes or FUSE; remove what it
created (``_rollback``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import trio

from rhvfs.errors import NotFound, RestoreError, RestoreFailed, RestoreTooLarge, RhvfsError
from rhvfs.sessions.restore._coverage import reads_zero
from rhvfs.sessions.restore._files import RestoreDisk, RestoreFile
from rhvfs.sessions.restore._options import RestoreOptions
from rhvfs.sessions.restore._ports import RestoreServices
from rhvfs.sessions.restore._preflight import storage_domain_of
from rhvfs.sessions.restore._rollback import Created
from rhvfs.sessions.restore._state import DiskState
from rhvfs.sessions.restore._upload import UploadStream

#: Staged data is replayed into a stream in pieces of this size (bytes).
REPLAY_STEP_BYTES = 8 * 1024 * 1024


class UploadHost(Protocol):
    """What the disk uploads need from their restore session."""

    @property
    def options(self) -> RestoreOptions | None:
        """Frozen before any disk exists (the manifest's checks need them)."""
        ...

    def note(self, text: str) -> None: ...
    def uploads_started(self) -> None:
        """The first disk is being created (the phase becomes ``uploading``)."""
        ...

    def fail(self, exc: BaseException | str) -> None: ...
    async def check_complete(self) -> None:
        """A disk's upload ended: start making the VM if the set is complete now."""
        ...

    @property
    def disks(self) -> Mapping[str, RestoreDisk]:
        """The set's disks (empty until the manifest was read)."""
        ...


class ChainGate(Protocol):
    """The chain's say over when a disk may be finalized (``_chain.ChainAssembly``)."""

    def gate_open(self) -> bool: ...
    async def wait_gate(self) -> None: ...
    async def apply(self, d: RestoreDisk, stream: UploadStream) -> None: ...


class DiskUploads:
    """The uploads of one restore session."""

    def __init__(
        self,
        host: UploadHost,
        services: RestoreServices,
        *,
        gate: ChainGate,
        created: Created,
        label: str,
    ) -> None:
        self._host = host
        self._services = services
        self._gate = gate
        self._created = created
        self._label = label  # "restore/<name>": staged files are named after it
        self._images_changed = trio.Event()  # set (and replaced) when an image completes

    # -- the set's images --------------------------------------------------------------

    def images_complete(self) -> bool:
        """True when every selected disk's image is complete (or the session failed): only
        then is any disk finalized, so a late write to one image of the set is still applied
        while another is being written."""
        return all(
            d.finish.is_set()
            for d in self._host.disks.values()
            if d.selected and d.state != DiskState.SKIPPED
        )

    def wake(self) -> None:
        """An image was completed (or the session failed): disks waiting for the set look again."""
        self._images_changed.set()
        self._images_changed = trio.Event()

    # -- the data path -----------------------------------------------------------------

    async def write(self, f: RestoreFile, offset: int, data: bytes) -> None:
        """Data of a file bound to its disk: into the disk's stream (started if needed)."""
        d = f.disk
        assert d is not None
        if f.dropped:
            return
        if offset + len(data) > d.set_disk.size:
            raise RestoreTooLarge(
                f"{f.name!r}: write at {offset}+{len(data)} is beyond the disk's {d.set_disk.size} bytes"
            )
        await self.ensure(d)
        if f.staged is not None:
            await self.replay_staged(f)
        assert d.stream is not None
        await d.stream.write(offset, data)
        d.wrote(len(data))

    def stage(self, f: RestoreFile, offset: int, data: bytes) -> None:
        """Data of a file no manifest explains (yet): kept in the staging area."""
        if f.staged is None:
            f.staged = self._services.staging.open_file(f"{self._label}/{f.name}")
            if f.mem:
                f.staged.write(0, bytes(f.mem))
        f.mem = None
        f.staged.write(offset, data)

    async def replay_staged(self, f: RestoreFile) -> None:
        """Stream what was staged for ``f`` before its disk was known, in offset order."""
        d = f.disk
        if d is None or f.dropped:
            if f.dropped:
                f.drop_staged()
            return
        if f.mem is not None and len(f.mem):
            data, f.mem = bytes(f.mem), None
            await self.ensure(d)
            assert d.stream is not None
            await d.stream.write(0, data)
            d.wrote(len(data))
        f.mem = None
        if f.staged is None:
            return
        staged, f.staged = f.staged, None
        await self.ensure(d)
        assert d.stream is not None
        try:
            step = REPLAY_STEP_BYTES
            for start, end in staged.ranges():
                for pos in range(start, end, step):
                    data = staged.read(pos, min(step, end - pos))
                    await d.stream.write(pos, data)
                    d.wrote(len(data))
            self._host.note(f"replayed {staged.charged_bytes} staged bytes of {f.name}")
        finally:
            staged.close()

    # -- the disk's task -----------------------------------------------------------------

    async def ensure(self, d: RestoreDisk) -> None:
        """Start ``d``'s upload task unless it runs; returns once its stream takes writes."""
        if d.stream is not None:
            return
        async with d.lock:
            if d.stream is not None:
                return
            self._host.uploads_started()
            d.state = DiskState.CREATING
            try:
                d.stream = await self._services.start(self._run, d)
            except BaseException:
                d.state = DiskState.FAILED
                d.done.set()
                raise

    async def _run(self, d: RestoreDisk, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        services = self._services
        engine = services.engine
        note = self._host.note
        sd_disk = d.set_disk
        opts = self._host.options
        assert opts is not None
        started = False
        try:
            sds = await engine.list_storage_domains()
            sd = storage_domain_of(sd_disk, opts, sds)
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
            self._created.disks.append(disk.id)
            zero_reads = reads_zero(
                fmt=disk.format, sparse=disk.sparse, storage_type=sd.storage_type
            )
            note(
                f"created disk {alias} ({disk.id}, {sd_disk.size} bytes, {sd_disk.format}) on "
                f"{sd.name} in {trio.current_time() - t0:.1f} s"
            )
            transfer = await engine.start_transfer(
                disk_id=disk.id,
                direction="upload",
                format="raw",
                inactivity_timeout=services.inactivity_timeout_s,
                timeout_policy="cancel",
            )
            d.transfer_id = transfer.id
            assert transfer.transfer_url is not None
            failure: RhvfsError | None = None
            async with services.opener(transfer.transfer_url, transfer.proxy_url) as target:
                async with trio.open_nursery() as nursery:
                    stream = UploadStream(target, size=sd_disk.size)
                    stream.start(nursery)
                    d.state = DiskState.UPLOADING
                    started = True
                    task_status.started(stream)
                    await self._until_finish(d, stream)
                    d.sealed = True  # no await since ``finish`` was seen: see ``_images``
                    try:
                        if d.abort:
                            raise RestoreFailed("upload aborted")
                        if not zero_reads:
                            await stream.zero_unwritten()
                        await self._gate.apply(d, stream)
                        d.state = DiskState.FINALIZING
                        stats = await stream.finish()
                    except RhvfsError as e:
                        await stream.abort()
                        failure = e
            if failure is not None:
                raise failure
            await engine.finalize_transfer(transfer.id)
            d.transfer_id = None
            d.state = DiskState.UPLOADED
            note(
                f"uploaded {alias}: {stats.bytes_received} bytes written, {stats.bytes_put} PUT "
                f"in {stats.put_requests} requests, {stats.bytes_zeroed} zeroed "
                f"({stats.holes_zeroed} of them never written, "
                f"{'holes read as zero' if zero_reads else 'zeroed on the target'})"
            )
        except BaseException as raw:
            failed: BaseException = raw
            if isinstance(raw, RhvfsError) and not isinstance(raw, RestoreError):
                failed = RestoreFailed(f"upload of disk {sd_disk.alias} failed: {raw}")
            elif isinstance(raw, Exception) and not isinstance(raw, RhvfsError):
                failed = RestoreFailed(f"upload of disk {sd_disk.alias} failed: {raw!r}")
            d.state = DiskState.FAILED
            d.error = str(failed)
            with trio.CancelScope(shield=True):
                if d.transfer_id is not None:
                    try:
                        await engine.cancel_transfer(d.transfer_id)
                    except Exception as ce:
                        note(f"cancel transfer {d.transfer_id}: {ce}")
            if not isinstance(raw, Exception):
                raise  # cancellation
            if not started:
                if failed is raw:
                    raise
                raise failed from raw
            self._host.fail(failed)
        finally:
            d.done.set()
        await self._host.check_complete()

    async def _until_finish(self, d: RestoreDisk, stream: UploadStream) -> None:
        """Wait until the image is complete (or aborted), every other image of the set too,
        and the chain lets it finish, flushing an idle transfer every ``keepalive_s``."""
        gate = self._gate

        def ready() -> bool:
            if not d.finish.is_set():
                return False
            return d.abort or (gate.gate_open() and self.images_complete())

        while not ready():
            keepalive_s = self._services.keepalive_s
            with trio.move_on_after(keepalive_s):
                await d.finish.wait()
                await gate.wait_gate()
                while not (d.abort or ready()):
                    await self._images_changed.wait()
            if not ready() and stream.idle_s() >= keepalive_s:
                # the tool pauses (restic between packs): a flush keeps the
                # transfer from the engine's inactivity timeout
                await stream.keepalive()
