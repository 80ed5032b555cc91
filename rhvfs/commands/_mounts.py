"""Which FUSE mount is at a path, and whether a process is the rhvfs daemon serving it.

``rhvfs umount`` signals only a process that ``verify_daemon`` accepted. The
pid it starts from comes from the mount's own ``.rhvfs/status.json``, which any
FUSE file system can fake, so nothing here believes the mount: every fact comes
from /proc (mountinfo, the process's status, cmdline, cwd and open files),
which also means a hung mount can't block it. A process is the daemon of the
rhvfs mount at a path when all of these hold:

- the mount at the path is of type ``fuse.rhvfs`` (``rhvfs.mount`` mounts with
  ``fsname=rhvfs,subtype=rhvfs``);
- the process's real uid is the mount's owner (the kernel's ``user_id=`` of a
  FUSE mount), so it is never someone else's process;
- its command line is an rhvfs mount command (``python -m rhvfs.cli mount ...``
  or the ``rhvfs`` console script with ``mount``) of that very path;
- it sees the same mount (same device) at that path in its own mount namespace;
- it holds ``/dev/fuse`` open, as the process serving a FUSE mount does.

Must not: signal or unmount anything (``rhvfs.commands.mount`` does), touch the
mount itself, import pyfuse3.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence

#: The type /proc/self/mountinfo shows for an rhvfs mount ("fuse." + the subtype).
RHVFS_FSTYPE = "fuse.rhvfs"
RHVFS_FSNAME = "rhvfs"


@dataclasses.dataclass(frozen=True)
class MountEntry:
    """One line of /proc/<pid>/mountinfo (paths unescaped)."""

    mount_id: int
    device: str  # "major:minor"
    point: str
    fstype: str
    source: str
    super_options: dict[str, str]

    @property
    def owner_uid(self) -> int | None:
        """The uid that mounted a FUSE file system (``user_id=``), None for others."""
        value = self.super_options.get("user_id")
        return int(value) if value is not None and value.isdigit() else None


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Entries of a mountinfo file, in its order (a later entry at a path is on top)."""
    entries: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            fstype, source, options = fields[sep + 1], fields[sep + 2], fields[sep + 3]
            mount_id = int(fields[0])
        except (ValueError, IndexError):
            continue
        supers = {}
        for opt in options.split(","):
            key, _, value = opt.partition("=")
            supers[key] = value
        entries.append(
            MountEntry(
                mount_id=mount_id,
                device=fields[2],
                point=_unescape(fields[4]),
                fstype=fstype,
                source=_unescape(source),
                super_options=supers,
            )
        )
    return entries


def read_mountinfo(pid: int | str = "self") -> list[MountEntry]:
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def canonical_mountpoint(path: str) -> str:
    """``path`` absolute, its parent's symlinks resolved, as mountinfo names it.

    Only the parent is resolved: resolving the mountpoint itself would ask the
    file system mounted there, which may hang."""
    absolute = os.path.abspath(path)
    parent, name = os.path.split(absolute)
    return os.path.join(os.path.realpath(parent), name) if name else absolute


def mount_at(path: str, entries: Sequence[MountEntry] | None = None) -> MountEntry | None:
    """The (topmost) mount at ``path`` (canonical), from ``entries`` or /proc/self/mountinfo."""
    if entries is None:
        entries = read_mountinfo()
    found = [e for e in entries if e.point == path]
    return found[-1] if found else None


def rhvfs_mount_args(argv: Sequence[str]) -> list[str] | None:
    """The arguments after ``mount`` when ``argv`` runs an rhvfs mount, else None.

    Recognised: ``<python> [opts] -m rhvfs.cli [--debug] mount ARGS`` and the
    console script, ``[<python>] .../rhvfs [--debug] mount ARGS``."""
    rest: list[str] | None = None
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] == "rhvfs.cli":
            rest = list(argv[i + 2 :])
            break
    else:
        for i in range(min(2, len(argv))):
            if os.path.basename(argv[i]) == "rhvfs":
                rest = list(argv[i + 1 :])
                break
    if rest and rest[0] == "--debug":
        rest = rest[1:]
    if not rest or rest[0] != "mount":
        return None
    return rest[1:]


def _proc_uid(pid: int) -> int | None:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


def _proc_argv(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        raw = f.read()
    return [os.fsdecode(a) for a in raw.split(b"\0")[:-1]] if raw.endswith(b"\0") else []


def _holds_dev_fuse(pid: int) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)) == "/dev/fuse":
                return True
        except OSError:
            continue  # closed meanwhile
    return False


def verify_daemon(
    pid: int, entry: MountEntry, *, mountpoint_of: Callable[[Sequence[str]], str | None]
) -> str | None:
    """None when ``pid`` is the rhvfs daemon serving ``entry``; otherwise why it is not.

    ``mountpoint_of(args)`` is the mountpoint argument of ``rhvfs mount ARGS``
    (None when ARGS do not parse); a relative one is taken from the process's
    working directory."""
    if entry.fstype != RHVFS_FSTYPE:
        return f"{entry.point} is a {entry.fstype} mount, not an rhvfs one"
    owner = entry.owner_uid
    try:
        uid = _proc_uid(pid)
        if owner is None or uid != owner:
            return f"process {pid} (uid {uid}) does not belong to the mount's owner (uid {owner})"
        args = rhvfs_mount_args(_proc_argv(pid))
        if args is None:
            return f"process {pid} is not an rhvfs mount command"
        claimed = mountpoint_of(args)
        if claimed is None:
            return f"process {pid} is not an rhvfs mount command"
        if not os.path.isabs(claimed):
            claimed = os.path.join(os.readlink(f"/proc/{pid}/cwd"), claimed)
        if canonical_mountpoint(claimed) != entry.point:
            return f"process {pid} mounts {claimed}, not {entry.point}"
        theirs = mount_at(entry.point, read_mountinfo(pid))
        if theirs is None or theirs.device != entry.device:
            return f"process {pid} does not see this mount (another mount namespace)"
        if not _holds_dev_fuse(pid):
            return f"process {pid} does not serve a FUSE mount (no /dev/fuse open)"
    except (OSError, ValueError) as e:
        return f"cannot inspect process {pid}: {getattr(e, 'strerror', None) or e}"
    return None
