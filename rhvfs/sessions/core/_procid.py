"""Which process created an artifact, and whether that process still lives.

Owns reading ``/proc`` (boot id, boot time, process start time) so crash
cleanup can tell a live rhvfs session from a dead one, including pid reuse and
reboots. Must not: talk to the engine, kill or signal anything.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from datetime import UTC, datetime


@dataclasses.dataclass(frozen=True)
class ProcessIdentity:
    """A process, identified across pid reuse (``start_ticks``) and reboots (``boot_id``)."""

    host: str
    boot_id: str
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22, clock ticks since boot


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def boot_id() -> str:
    return (_read("/proc/sys/kernel/random/boot_id") or "").strip()


def boot_time() -> float:
    """Seconds since the epoch when this machine booted (0.0 if unknown)."""
    text = _read("/proc/stat") or ""
    for line in text.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None when there is no such process."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = text[text.rfind(")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> float | None:
    """Epoch seconds when ``pid`` started, or None when there is no such process."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    return boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def hostname() -> str:
    return socket.gethostname()


def current() -> ProcessIdentity:
    pid = os.getpid()
    return ProcessIdentity(
        host=hostname(), boot_id=boot_id(), pid=pid, start_ticks=start_ticks(pid) or 0
    )


def is_alive(ident: ProcessIdentity) -> bool | None:
    """True/False for a process of this host; None when it ran on another host (unknowable)."""
    if ident.host != hostname():
        return None
    if ident.boot_id and ident.boot_id != boot_id():
        return False
    ticks = start_ticks(ident.pid)
    if ticks is None:
        return False
    return not ident.start_ticks or ticks == ident.start_ticks


def pid_alive_since(host: str, pid: int, created: datetime | None) -> bool | None:
    """Whether process ``pid`` on ``host`` may still be the one that created an artifact at ``created``.

    None when ``host`` is another machine. A process that started after the
    artifact was created (pid reuse), or an artifact from before this boot,
    counts as dead. When in doubt, alive: cleanup must never touch a live session.
    """
    if host != hostname():
        return None
    started = process_start_time(pid)
    if started is None:
        return False
    if created is not None:
        created_s = created.astimezone(UTC).timestamp()
        if created_s < boot_time() - 1:
            return False
        if started > created_s + 2:
            return False
    return True


def thread_group(pid: int) -> int | None:
    """The process (thread group id) a FUSE caller's thread id belongs to, or None.

    The kernel reports the calling *thread* in FUSE requests; the threads of one
    restic or bacula-fd process are one reader.
    """
    if pid <= 0:
        return None
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return None
    for line in status.splitlines():
        if line.startswith("Tgid:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def reader_identity(pid: int) -> tuple[int, int] | None:
    """(thread group id, start ticks) of the process behind FUSE caller ``pid``, or None.

    The start time keeps a reused pid from passing for an earlier process.
    """
    tgid = thread_group(pid)
    if tgid is None:
        return None
    ticks = start_ticks(tgid)
    return None if ticks is None else (tgid, ticks)
