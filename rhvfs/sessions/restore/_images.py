"""When a disk image is complete, and its timers.

**An image is complete** when its file is closed, has exactly the manifest's
size, and either its times were set (tar, ``cp -a``/``--preserve``, rsync,
restic and Bacula set them when a file is written: complete at once) or it
was not reopened for ``close_grace_s`` (dd, plain cp). Then its disk's
``finish`` event is set: the upload task flushes and finalizes the transfer
(once the chain gate is open). A shorter image is truncated when its times
are set (that call fails with ``RestoreFailed``) or after
``truncated_after_s`` without a reopen (restic writes a file in many opens,
out of order); a longer one is refused (``RestoreTooLarge``).

Timers run on trio's clock (``trio.sleep``): every open and close bumps the
file's ``close_gen``, and a grace timer acts only if it is unchanged when it
wakes (the file was not reopened or completed meanwhile).

Must not: create or finalize uploads itself (``_disks``), parse
configuration, or change the session's phase (it reports failures through
``ImageHost.fail``).
"""

from __future__ import annotations

import functools
from typing import Protocol

import trio

from rhvfs.errors import RestoreFailed, RestoreTooLarge, RhvfsError
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
        else after the grace period (if not reopened)."""
        d = f.disk
        if d is None or f.dropped:
            return
        f.close_gen += 1
        if f.times_set:
            await self.complete(f)
            return
        self._services.spawn(functools.partial(self._after_grace, f, f.close_gen))

    async def _after_grace(self, f: RestoreFile, gen: int) -> None:
        """Closed and not reopened: complete a full-size image after ``close_grace_s``; a
        short one may still be written by a tool that reopens files (restic), so it counts
        as truncated only after ``truncated_after_s`` (or at once when its times are set)."""
        services = self._services
        await trio.sleep(services.close_grace_s)
        d = f.disk
        if f.close_gen != gen or f.opens > 0 or self._host.phase.final or d is None:
            return
        if f.size < d.set_disk.size:
            await trio.sleep(max(0.0, services.truncated_after_s - services.close_grace_s))
            if f.close_gen != gen or f.opens > 0 or self._host.phase.final:
                return
        try:
            await self.complete(f)
        except RhvfsError as e:
            self._host.fail(e)

    async def complete(self, f: RestoreFile) -> None:
        """Finish ``f``'s upload (idempotent); a short image is truncated, a long one wrong."""
        d = f.disk
        assert d is not None
        if d.finish.is_set() or f.dropped:
            return
        if f.size != d.set_disk.size:
            if f.size < d.set_disk.size:
                raise RestoreFailed(
                    f"image {f.name!r} is truncated: closed at {f.size} of {d.set_disk.size} bytes"
                )
            raise RestoreTooLarge(f"image {f.name!r} is {f.size} bytes, the disk {d.set_disk.size}")
        await self._uploads.ensure(d)
        await self._uploads.replay_staged(f)
        d.finish.set()

    async def complete_and_wait(self, f: RestoreFile) -> None:
        """Complete ``f`` now and wait for its upload to be finalized (or, in a chain that
        is not settled yet, for its data so far to be sent); raises if the upload failed."""
        d = f.disk
        assert d is not None
        f.close_gen += 1  # a pending grace timer has nothing left to do
        await self.complete(f)
        if not self._gate.gate_open():
            # a chain's image waits for the later sets' files, which this very tool
            # may still have to write: only its data so far must have gone out
            if d.stream is not None:
                await d.stream.drain()
            return
        await d.done.wait()
        if d.state == DiskState.FAILED:
            raise RestoreFailed(
                f"upload of {d.set_disk.alias} failed: {d.error or self._host.error}"
            )
