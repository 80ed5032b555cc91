"""Which set directories work for a VM, and why not: the rules ``vm.json`` shows.

``disk_mode`` says what an incremental or differential set holds for one disk
(``incremental``: only changed blocks, a qcow2 delta; ``full``: the whole image
in every set, and why). ``set_support`` says, from the VM's state and its disks,
whether each set directory can be read and whether its sets hold only changes.
The rules are those the backup sessions apply (``rhvfs.sessions.full`` reads
``@rhv/`` of VMs that are up, down or paused; ``rhvfs.sessions.incremental``
makes engine backups of VMs that are up or down, incremental for qcow2 disks with
incremental backup enabled); change them here together with the sessions.

Pure: plain values in, a JSON-ready dict out.
"""

from __future__ import annotations

from collections.abc import Iterable

from rhvfs.backupset._names import SET_DIRS, SetKind

#: VM states whose images ``@rhv/`` reads (others wait: locked, migrating...).
FULL_READ_STATES = frozenset({"up", "down", "paused"})
#: VM states that never resolve by waiting: ``@rhv/`` images are refused.
FULL_REFUSED_STATES = frozenset({"suspended", "not_responding", "unknown"})
#: VM states the engine makes a backup (with checkpoints) of.
ENGINE_BACKUP_STATES = frozenset({"up", "down"})


def disk_mode(
    disk_format: str | None, backup: str | None, *, shareable: bool = False
) -> tuple[str, str | None]:
    """``("incremental", None)``, ``("full", why)`` for a disk in an incremental set, or
    ``("none", why)`` for a disk no set holds (shareable)."""
    if shareable:
        return "none", "shareable disk: no snapshot or backup covers it, no set holds it"
    if disk_format != "cow":
        return "full", "raw disk: the engine tracks changed blocks of qcow2 disks only"
    if backup != "incremental":
        return "full", "incremental backup is not enabled on this disk"
    return "incremental", None


def set_support(
    vm_status: str | None, disks: Iterable[tuple[str | None, str | None, bool]]
) -> dict[str, dict[str, object]]:
    """Per set directory (``@rhv``, ``@rhv-incremental``, ...): ``available`` (its images
    can be read now), ``changes_only`` (its sets hold only changed blocks) and ``reason``
    (why not, or what to expect). ``disks``: (format, backup, shareable) of each disk."""
    status = vm_status or "unknown"
    modes = [disk_mode(fmt, backup, shareable=sh)[0] for fmt, backup, sh in disks]
    modes = [m for m in modes if m != "none"]
    out: dict[str, dict[str, object]] = {}
    full_ok = status not in FULL_REFUSED_STATES
    out[SET_DIRS[SetKind.FULL]] = {
        "available": full_ok,
        "changes_only": False,
        "reason": None if full_ok else f"the VM is {status}: only its configuration can be read",
        "method": "backup" if status == "up" and "incremental" in modes else "snapshot",
    }
    if status not in ENGINE_BACKUP_STATES:
        reason: str | None = f"the VM is {status}: the engine backs up VMs that are up or down"
        available, changes = False, False
    elif not modes:
        reason, available, changes = "the VM has no disks", False, False
    elif "incremental" not in modes:
        reason = "no disk has incremental backup enabled (qcow2, backup=incremental): every set holds full images"
        available, changes = True, False
    else:
        available, changes = True, True
        full = modes.count("full")
        reason = f"{full} disk(s) without incremental backup get full images" if full else None
    for kind in (SetKind.INCREMENTAL, SetKind.DIFFERENTIAL, SetKind.SINCE):
        out[SET_DIRS[kind]] = {"available": available, "changes_only": changes, "reason": reason}
    since = out[SET_DIRS[SetKind.SINCE]]
    if available and changes:
        since["reason"] = "lists the checkpoints of sets rhvfs completed" + (
            f"; {reason}" if reason else ""
        )
    return out
