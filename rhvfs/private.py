"""What rhvfs keeps on this host stays with the user running it.

Owns: the default state directory, private directories (created 0700, missing
parents too, as the XDG base directory spec asks), private files (created
0600; ``write_private`` replaces a file atomically and the new file is 0600
whatever the umask), the check that a secret file (a password file) is not
readable by group or others, and taking a secret out of the process
environment (``take_from_environ``: removed from ``os.environ`` so no child
inherits it, and wiped from the environment block the kernel shows in
``/proc/PID/environ``).

Must not: log a secret's value, read or write anything but the paths it is given.
"""

from __future__ import annotations

import ctypes
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
_LOOSE = 0o077  # any bit for group or others


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/rhvfs`` (``~/.local/state/rhvfs`` when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "rhvfs"


def private_dir(path: str | os.PathLike[str], *, tighten: bool = False) -> Path:
    """Create ``path`` and its missing parents 0700; return it.

    An existing directory keeps its mode unless ``tighten`` (for a directory
    that is rhvfs's own, like the default state dir): then one we own that
    group or others can enter becomes 0700.
    """
    directory = Path(path)
    missing: list[Path] = []
    cur = directory
    while not cur.exists():
        missing.append(cur)
        if cur.parent == cur:
            break
        cur = cur.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made by someone else meanwhile: not ours to change
        os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask
    if tighten and not missing:
        st = directory.stat()
        if st.st_uid == os.geteuid() and st.st_mode & _LOOSE:
            os.chmod(directory, DIR_MODE)
            log.info("%s was open to other users; it is 0700 now", directory)
    return directory


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open(path, flags | O_CREAT, 0600)``; an existing file of ours open to others is made 0600."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        st = os.fstat(fd)
        if st.st_mode & _LOOSE and st.st_uid == os.geteuid() and stat.S_ISREG(st.st_mode):
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically: a 0600 temporary file, then a rename.

    The temporary file is ``.<name>.<pid>.tmp`` next to ``path``; callers that
    may write the same path from several threads of one process serialize.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, FILE_MODE)  # a stale temporary file of another mode is reused
        data = memoryview(text.encode("utf-8"))
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)
    os.replace(tmp, target)


def loose_secret_file(path: str | os.PathLike[str]) -> str | None:
    """Why the regular file ``path`` is no secret (group or others may read it), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # the reader reports a missing file
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o044:
        return None
    who = " and ".join(w for w, bit in (("group", 0o040), ("others", 0o004)) if st.st_mode & bit)
    return f"{path} is readable by {who} (mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"


def take_from_environ(name: str) -> str | None:
    """Remove ``name`` from the environment and return its value (None when unset).

    ``os.environ.pop`` keeps it from every child process; the copy the process
    started with (``/proc/PID/environ``, readable by the user's other
    processes and by root) is overwritten with NUL bytes as well.
    """
    value = os.environ.pop(name, None)
    if value is not None:
        try:
            _wipe_initial_environ(name)
        except (OSError, ValueError, IndexError) as e:
            log.debug("could not wipe $%s from the initial environment: %s", name, e)
    return value


def _wipe_initial_environ(name: str) -> None:
    """Overwrite ``name=...`` in the environment block the process was started with.

    The kernel shows that block (between ``env_start`` and ``env_end`` of
    ``/proc/self/stat``) as ``/proc/PID/environ``; ``unsetenv`` only drops
    libc's pointer to the entry, so nothing refers to its bytes any more.
    """
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[47]), int(fields[48])  # proc(5) fields 50 and 51
    if not 0 < start < end:
        return
    block = ctypes.string_at(start, end - start)
    key = name.encode() + b"="
    pos = 0
    while pos < len(block):
        stop = block.find(b"\0", pos)
        stop = len(block) if stop < 0 else stop
        if block.startswith(key, pos):
            ctypes.memset(start + pos, 0, stop - pos)
        pos = stop + 1
