"""Partial sets: a set that lacks a disk ends in bounded time, never hangs.

A set saved without one of its disks (``tar --exclude='*--<disk-id>.raw'``,
a restic or Bacula selection) still lists that disk in its manifest. Unless
the restore's options leave it out (``vm_exclude_disks``, ``vm_disks``), the
set would wait for its image forever. ``PartialSetWatch`` bounds that wait:
once the manifest was parsed, it watches the directory, and when

- no file of the directory is open,
- something the set needs is still outstanding — a selected disk whose image
  never arrived (no file for it), an image that arrived but is not complete,
  or (single sets) the OVF — and
- nothing happened in the directory (create, open, write, close) for
  ``partial_set_timeout_s`` seconds (``Config.partial_set_timeout``,
  ``--partial-set-timeout``; a tape change or a slow tool between two files
  counts as quiet, so the default is generous),

it decides: with ``vm_missing_disks = skip``, and when the only outstanding
things are disks that never arrived, those disks are skipped (state
``skipped``, not selected) and the VM is made without them; otherwise the
restore fails with one line naming what is missing and how to pair the
option (``RestoreInputError``), and everything it created is rolled back.

The watch is the one bound on an incomplete set: image completion has no
timer of its own for an image the tool left unfinished.

Must not: complete images, talk to the engine, or decide anything before the
quiet period (a tool between two files looks exactly like a partial set).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import trio

from rhvfs.errors import RestoreInputError
from rhvfs.sessions.restore._files import RestoreDisk, RestoreFile
from rhvfs.sessions.restore._options import RestoreOptions
from rhvfs.sessions.restore._ports import RestoreServices
from rhvfs.sessions.restore._state import DiskState, Phase


class PartialHost(Protocol):
    """What the partial-set watch needs from its restore session."""

    @property
    def phase(self) -> Phase: ...
    @property
    def files(self) -> Mapping[int, RestoreFile]: ...
    @property
    def disks(self) -> Mapping[str, RestoreDisk]: ...
    @property
    def options(self) -> RestoreOptions | None: ...
    def building(self) -> bool:
        """True once the VM build started (the set was complete)."""
        ...

    def ovf_missing(self) -> bool:
        """True when a single (non-chain) set's OVF was not parsed yet."""
        ...

    def note(self, text: str) -> None: ...
    def fail(self, exc: BaseException | str) -> None: ...
    async def check_complete(self) -> None: ...
    def images_changed(self) -> None:
        """Disks waiting for the set's other images look again (one was skipped)."""
        ...


def _describe(d: RestoreDisk) -> str:
    return f"{d.set_disk.alias} ({d.set_disk.id}, file {d.set_disk.file})"


class PartialSetWatch:
    """The quiet-period bound of one restore session (see the module docstring)."""

    def __init__(self, host: PartialHost, services: RestoreServices) -> None:
        self._host = host
        self._services = services
        self._last_activity = 0.0
        self._announced = -1.0  # the activity time the last "waiting for" note was about
        self._started = False

    def touch(self) -> None:
        """Directory activity: the quiet period starts again."""
        try:
            self._last_activity = trio.current_time()
        except RuntimeError:  # outside trio (a synchronous caller in a test)
            pass

    def start(self) -> None:
        """The manifest was adopted: watch the set from now on (once)."""
        if self._started:
            return
        self._started = True
        self.touch()
        self._services.spawn(self._watch)

    def outstanding(self) -> tuple[list[RestoreDisk], list[RestoreDisk], bool] | None:
        """(never-delivered disks, delivered but incomplete images, OVF missing) when the
        set waits for nothing but those; None while a file is open or nothing is missing."""
        h = self._host
        if any(f.opens > 0 for f in h.files.values()):
            return None
        undelivered: list[RestoreDisk] = []
        unfinished: list[RestoreDisk] = []
        for d in h.disks.values():
            if not d.selected or d.finish.is_set():
                continue
            live = d.file is not None and d.file.id in h.files
            (unfinished if live else undelivered).append(d)
        ovf_missing = h.ovf_missing()
        if not undelivered and not unfinished and not ovf_missing:
            return None
        return undelivered, unfinished, ovf_missing

    async def _watch(self) -> None:
        h = self._host
        while not h.phase.final and not h.building():
            timeout = self._services.partial_set_timeout_s
            await trio.sleep(max(0.01, min(1.0, timeout / 10)))
            if h.phase.final or h.building():
                return
            found = self.outstanding()
            quiet = trio.current_time() - self._last_activity
            if found is None:
                continue
            if quiet < timeout:
                if quiet >= min(timeout / 2, 60.0) and self._announced != self._last_activity:
                    self._announced = self._last_activity
                    self._announce(*found, left_s=timeout - quiet)
                continue
            await self._decide(*found, quiet_s=timeout)
            if h.phase.final:
                return

    def _announce(
        self,
        undelivered: list[RestoreDisk],
        unfinished: list[RestoreDisk],
        ovf_missing: bool,
        *,
        left_s: float,
    ) -> None:
        """One note per quiet stretch: what the set waits for, and when it ends."""
        opts = self._host.options
        what = [_describe(d) for d in undelivered]
        what += [f"image {d.set_disk.file} (incomplete)" for d in unfinished]
        what += ["the OVF"] if ovf_missing else []
        mode = opts.vm_missing_disks if opts is not None else "fail"
        self._host.note(
            f"waiting for {', '.join(what)}; without activity the restore ends in "
            f"{left_s:.0f} s (vm_missing_disks = {mode})"
        )

    async def _decide(
        self,
        undelivered: list[RestoreDisk],
        unfinished: list[RestoreDisk],
        ovf_missing: bool,
        *,
        quiet_s: float,
    ) -> None:
        h = self._host
        opts = h.options
        skip = opts is not None and opts.vm_missing_disks == "skip"
        if skip and undelivered and not unfinished and not ovf_missing:
            for d in undelivered:
                d.selected = False
                d.state = DiskState.SKIPPED
            h.note(
                f"restoring without {len(undelivered)} disk(s) never delivered "
                f"(vm_missing_disks = skip, {quiet_s:g} s without activity): "
                + ", ".join(_describe(d) for d in undelivered)
            )
            h.images_changed()  # the delivered disks no longer wait for these
            await h.check_complete()
            return
        parts: list[str] = []
        if undelivered:
            parts.append(
                "disk(s) never delivered: "
                + ", ".join(_describe(d) for d in undelivered)
                + " (name them in vm_exclude_disks, or set vm_missing_disks = skip)"
            )
        if unfinished:
            parts.append(
                "image(s) not complete: "
                + ", ".join(
                    f"{d.file.name if d.file else d.set_disk.file} "
                    f"({d.file.size if d.file else 0} of {d.set_disk.size} bytes)"
                    for d in unfinished
                )
            )
        if ovf_missing:
            parts.append("the set's OVF was never delivered")
        h.fail(
            RestoreInputError(
                f"incomplete set after {quiet_s:g} s without activity: " + "; ".join(parts)
            )
        )
