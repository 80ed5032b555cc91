"""The phase of a restore and the state of each of its disks.

Owns the two enums; their values are exactly what ``.status`` shows
(``"phase"`` and ``disks[].state``), so they never change.

A restore moves forward only: ``receiving`` → ``uploading`` (the first disk is
being created) → ``creating_vm`` (every selected disk is uploaded) → ``done``;
from any phase but ``done`` it may go to ``failed``. ``done`` and ``failed``
are final.

A disk moves ``waiting`` → ``creating`` → ``uploading`` → ``finalizing`` →
``uploaded``, or to ``failed`` from any of the middle three; a disk the
options leave out is ``skipped`` from the start.

Must not: hold behaviour (the session and the disk uploads decide transitions).
"""

from __future__ import annotations

import enum


class Phase(enum.StrEnum):
    """Where a restore is (``.status`` ``"phase"``)."""

    RECEIVING = "receiving"
    UPLOADING = "uploading"
    CREATING_VM = "creating_vm"
    DONE = "done"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        """True for ``done`` and ``failed``: nothing changes the restore any more."""
        return self in (Phase.DONE, Phase.FAILED)


class DiskState(enum.StrEnum):
    """Where one disk of the set is (``.status`` ``disks[].state``)."""

    WAITING = "waiting"
    CREATING = "creating"
    UPLOADING = "uploading"
    FINALIZING = "finalizing"
    UPLOADED = "uploaded"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def busy(self) -> bool:
        """True while engine work of the disk runs (its upload task is alive)."""
        return self in (DiskState.CREATING, DiskState.UPLOADING, DiskState.FINALIZING)
