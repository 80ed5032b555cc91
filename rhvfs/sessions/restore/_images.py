"""When a disk image is complete: by evidence (``_coverage``), never by a timer alone.

**An image is complete** when no handle of its file is open, its size is the
manifest's, and every byte of ``[0, size)`` is accounted for
(``ImageCoverage``): written, or a hole the tool made (a gap it seeked over,
the trailing ``ftruncate`` after data). Ranges preallocated before any data
(``ftruncate``/``O_TRUNC`` to the size first) are owed until written. Times
set on a closed image (tar, ``cp -a``/``--preserve``, rsync, restic and
Bacula set them after the last byte) are the tool saying the file is
finished: owed ranges become holes and the image is complete at once (a
short one is truncated: that call fails with ``RestoreFailed``; a longer one
is refused, ``RestoreTooLarge``). An image shorter than its disk or with
owed bytes and no times set is never complete on its own (the session's
partial-set timeout ends such a restore).

When the evidence says complete without times (dd, plain ``cp``), the disk's
``finish`` event is set once the file stayed closed for ``close_grace_s``: a
tool that writes out of order over many opens (restic) may look complete at a
close, and its next open must still find the upload unfinalized. The quiet
period only delays a completion the evidence already proved.

A write to a complete image (``reopen``): if its upload is not sealed yet
(the disk's task has not started finalizing: no disk is finalized before
every image of the set is complete, nor before a chain settled) the image
is un-completed and the write applied; once sealed
it is refused with ``RestoreImageSealed`` and the restore fails, so no byte
is silently lost.

Then the disk's ``finish`` event is set: once every image of the set is
complete (and the chain gate open) the upload task zeroes what was never
written when the target does not read zeros (``_disks``), flushes and
finalizes the transfer.

Must not: create or finalize uploads itself (``_disks``), parse
configuration, or change the session's phase (it reports failures through
``ImageHost.fail``).
"""

from __future__ import annotations

import functools
from typing import Protocol

import trio

from rhvfs.errors import RestoreFailed, RestoreImageSealed, RestoreTooLarge, RhvfsError
from rhvfs.sessions.restore._disks import ChainGate, DiskUploads
from rhvfs.sessions.restore._files import RestoreFile
from rhvfs.sessions.restore._ports import RestoreServices
from rhvfs.sessions.restore._state import DiskState, Phase


class ImageHost(Protocol):
    """What image completion needs from its restore session."""

    @property
    def phase(self) -> Phase: ...
    @property
    def error(self) -> str | None: ...
    def fail(self, exc: BaseException | str) -> None: ...
    def note(self, text: str) -> None: ...


class ImageCompletion:
    """Decides when each image of one restore session is complete."""

    def __init__(
        self,
        host: ImageHost,
        services: RestoreServices,
        *,
        uploads: DiskUploads,
        gate: ChainGate,
    ) -> None:
        self._host = host
        self._services = services
        self._uploads = uploads
        self._gate = gate

    async def closed(self, f: RestoreFile) -> None:
        """The last handle of an image file closed: complete now if its times were set,
        else once the evidence says so and it stays closed for ``close_grace_s``."""
        d = f.disk
        if d is None or f.dropped:
            return
        f.close_gen += 1
        if f.times_set:
            await self.complete(f, finished=True)
            return
        if d.finish.is_set() or not f.coverage.complete(d.set_disk.size):
            return  # owed or unwritten bytes: the tool is not done with it
        self._services.spawn(functools.partial(self._after_quiet, f, f.close_gen))

    async def _after_quiet(self, f: RestoreFile, gen: int) -> None:
        """Complete by evidence, unless reopened during the quiet period."""
        await trio.sleep(self._services.close_grace_s)
        if f.close_gen != gen or f.opens > 0 or self._host.phase.final or f.disk is None:
            return
        try:
            await self.complete(f)
        except RhvfsError as e:
            self._host.fail(e)

    async def complete(self, f: RestoreFile, *, finished: bool = False) -> None:
        """Finish ``f``'s upload (idempotent). ``finished`` (the tool set its times): owed
        ranges are holes now; a short image is truncated, a long one wrong."""
        d = f.disk
        assert d is not None
        if d.finish.is_set() or f.dropped:
            return
        size = d.set_disk.size
        if f.size != size:
            if f.size < size:
                raise RestoreFailed(
                    f"image {f.name!r} is truncated: closed at {f.size} of {size} bytes"
                )
            raise RestoreTooLarge(f"image {f.name!r} is {f.size} bytes, the disk {size}")
        if finished:
            f.coverage.finished()
        if not f.coverage.complete(size):
            missing = f.coverage.unaccounted(size)
            raise RestoreFailed(
                f"image {f.name!r}: {missing.total} bytes in {len(missing)} range(s) were "
                "never written nor left as holes"
            )
        await self._uploads.ensure(d)
        await self._uploads.replay_staged(f)
        d.finish.set()
        self._uploads.wake()

    def reopen(self, f: RestoreFile) -> None:
        """A write (or resize) reaches ``f`` after it was complete: un-complete it while its
        upload is not sealed; else refuse (``RestoreImageSealed``; the restore fails)."""
        d = f.disk
        if d is None or f.dropped or not d.finish.is_set():
            return
        if d.sealed or d.state not in (DiskState.CREATING, DiskState.UPLOADING):
            raise RestoreImageSealed(
                f"{f.name!r} changed after its upload of disk {d.set_disk.alias} was "
                f"finalized ({d.state}); the change cannot be applied"
            )
        d.finish = trio.Event()  # the upload task waits again (it loops on a fresh event)
        self._host.note(f"{f.name} written again after it was complete: its upload waits")

    async def complete_and_wait(self, f: RestoreFile) -> None:
        """The tool says ``f`` is finished (times set): complete it now and wait for its upload to be finalized (or, in a chain that
        is not settled yet, for its data so far to be sent); raises if the upload failed."""
        d = f.disk
        assert d is not None
        f.close_gen += 1  # a pending quiet-period timer has nothing left to do
        await self.complete(f, finished=True)
        if not self._gate.gate_open() or not self._uploads.images_complete():
            # the set's other images, or a chain's later sets, which this very tool
            # may still have to write: only its data so far must have gone out
            if d.stream is not None:
                await d.stream.drain()
            return
        await d.done.wait()
        if d.state == DiskState.FAILED:
            raise RestoreFailed(
                f"upload of {d.set_disk.alias} failed: {d.error or self._host.error}"
            )
