"""The ``.status`` document of a restore directory, and its log lines.

Owns the shape of ``restore/<name>/.status`` (a JSON object, regenerated at
every read; its keys and values are a user-visible contract: tools and
tests read ``phase``, ``error``, ``errno``, ``settled``, ``disks`` ...) and
``Notes``, the bounded list of timestamped log lines it shows.

Must not: decide anything; it only renders what the session hands it.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from rhvfs.backupset import Manifest
from rhvfs.redact import redact
from rhvfs.sessions.core._lifecycle import progress_now
from rhvfs.sessions.core._progress import progress_document, sum_progress
from rhvfs.sessions.restore._files import RestoreDisk
from rhvfs.sessions.restore._options import RestoreOptions
from rhvfs.sessions.restore._state import Phase

log = logging.getLogger(__name__)

STATUS_FILE = ".status"
#: ``.status`` keeps this many log lines.
NOTES_KEPT = 50


class Notes:
    """The log of one restore: each line goes to the logger and to ``.status``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        log.info("restore %s: %s", self.name, text)
        self.lines.append(f"{time.strftime('%H:%M:%S')} {text}")  # wall clock, for people
        del self.lines[:-NOTES_KEPT]


def disk_progress(d: RestoreDisk, now: float) -> dict[str, Any]:
    """The disk's ``progress``: bytes done are those written or known holes (owed no more)."""
    size = d.set_disk.size
    if d.finish.is_set() and not d.abort:
        owed = 0
    else:
        owed = d.file.coverage.unaccounted(size).total if d.file is not None else size
    return progress_document(
        size=size, done=size - owed, current=d.meter.current(now), average=d.meter.average(now)
    )


def disk_status(d: RestoreDisk) -> dict[str, Any]:
    stats = d.stream.statistics() if d.stream is not None else None
    f = d.file
    size = d.set_disk.size
    return {
        "id": d.set_disk.id,
        "alias": d.set_disk.alias,
        "file": d.set_disk.file,
        "size": d.set_disk.size,
        "selected": d.selected,
        "state": d.state.value,
        # the image is complete (every byte written or a hole the tool made, or times set)
        "image_complete": d.finish.is_set() and not d.abort,
        # bytes neither written nor a hole yet (preallocated, or beyond the file's end)
        "bytes_owed": f.coverage.unaccounted(size).total if f is not None else size,
        "new_disk_id": d.disk_id,
        "bytes_written": d.bytes_written,
        "bytes_uploaded": stats.bytes_put if stats else 0,
        "bytes_zeroed": stats.bytes_zeroed if stats else 0,
        "holes_zeroed": stats.holes_zeroed if stats else 0,  # never written, zeroed on the target
        "put_requests": stats.put_requests if stats else 0,
        "zero_requests": stats.zero_requests if stats else 0,
        "error": d.error,
        "progress": disk_progress(d, progress_now()),
    }


def status_document(
    *,
    name: str,
    phase: Phase,
    settled: bool,
    error: str | None,
    errno_number: int,
    vm_id: str | None,
    vm_name: str | None,
    template_id: str | None,
    manifest: Manifest | None,
    ovf_read: bool,
    disks: Iterable[RestoreDisk],
    options: RestoreOptions | None,
    chain: dict[str, Any] | None,
    staged_bytes: int,
    notes: Notes,
) -> dict[str, Any]:
    """The ``.status`` object; ``errno_number`` 0 when the restore did not fail."""
    disk_docs = [disk_status(d) for d in disks]
    return {
        "name": name,
        "phase": phase.value,
        # false while a failed restore still removes what it created
        "settled": settled,
        "error": error,
        "errno": errno.errorcode.get(errno_number) if errno_number else None,
        "vm_id": vm_id,
        "vm_name": vm_name,
        "template_id": template_id,
        "kind": manifest.kind if manifest else None,
        "source": ({"id": manifest.owner_id, "name": manifest.owner_name} if manifest else None),
        "manifest": manifest is not None,
        "ovf": ovf_read,
        "disks": disk_docs,
        # over the selected disks: bytes done (written or holes), rates of the writes, ETA
        "progress": sum_progress(d["progress"] for d in disk_docs if d["selected"]),
        "options": options.as_dict() if options else None,
        "chain": chain,
        "staged_bytes": staged_bytes,
        "log": list(notes.lines),
    }


def render(document: dict[str, Any]) -> bytes:
    """The bytes of ``.status`` (redacted: error texts may quote a URL)."""
    return redact(json.dumps(document, indent=2) + "\n").encode()
