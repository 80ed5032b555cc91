"""Which rhvfs installation created an engine artifact, and whether the mount that did still lives.

An installation is a state directory (``--state-dir``, default
``$XDG_STATE_HOME/rhvfs``): its id, 16 random hex digits, is generated once and
kept in ``<state dir>/installation-id`` (mode 0600). Two containers with the
same hostname have different state directories and so different ids: ``gc`` of
one never takes the other's artifacts for its own, whatever their pids look
like from there. The file also records the machine id (``/etc/machine-id``): a
cloned VM that kept its state directory but got a new machine id (as
``virt-sysprep`` and first boot give it) starts a new installation, so it
never takes the original's artifacts either.

Every ``Installation`` object (one per mount: both managers of a mount share
the journal's) also has an *instance* id, random per object. While a mount
runs it holds an ``flock`` on ``<state dir>/instances/<instance>.lock``
(``hold``/``release``, counted), so a process that shares the state directory
but not the pid namespace (two containers on one volume) can still tell a
live mount from a dead one: a lock nobody holds belongs to a dead mount.

Files are 0600 and directories 0700 (``rhvfs.private``). Must not: talk to
the engine, decide what is garbage (``_gc`` does), read or write anything
outside the state directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import re
import secrets
import threading
from pathlib import Path

from rhvfs.private import private_dir

log = logging.getLogger(__name__)

ID_FILE = "installation-id"
INSTANCES_DIR = "instances"
#: What an installation or instance id looks like (also what a description may carry).
ID_PATTERN = re.compile(r"[0-9a-f]{16}")


@dataclasses.dataclass(frozen=True)
class Ownership:
    """Who created an artifact: the installation (state dir) and the mount instance."""

    installation: str
    instance: str


def new_id() -> str:
    """A fresh installation or instance id (16 hex digits)."""
    return secrets.token_hex(8)


def machine_id() -> str:
    """This machine's id (``/etc/machine-id``), or "" when it has none."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text:
            return text
    return ""


def load_or_create_id(state_dir: Path, *, machine: str | None = None) -> str:
    """The installation id kept in ``state_dir``, generated (0600) on first use.

    Concurrent first uses agree on one id: the file is created by ``link``, which
    fails when another process won. A malformed file, or one written on a machine
    with another machine id (``machine``, default ``machine_id()``), is replaced:
    artifacts of the old id are then left alone for good, never taken.
    """
    machine = machine_id() if machine is None else machine
    path = state_dir / ID_FILE
    current, recorded = _read_id(path)
    if current is not None and (not recorded or not machine or recorded == machine):
        return current
    private_dir(state_dir)
    candidate = new_id()
    tmp = state_dir / f".{ID_FILE}.{os.getpid()}.{new_id()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{candidate}\nmachine={machine}\n")
            f.flush()
            os.fsync(f.fileno())
        if current is not None:
            log.warning(
                "%s was written on another machine (a clone?): this is a new installation; "
                "artifacts of installation %s are left alone",
                path,
                current,
            )
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # only if there is none: concurrent first uses agree
            except FileExistsError:
                if _read_id(path)[0] is None:
                    log.warning("%s is not an installation id; generating a new one", path)
                    os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    found, _ = _read_id(path)
    if found is None:
        raise OSError(f"cannot create the installation id in {path}")
    if found == candidate:
        log.info("new rhvfs installation %s (state directory %s)", found, state_dir)
    return found


def _read_id(path: Path) -> tuple[str | None, str]:
    """(id or None when missing or malformed, recorded machine id or "")."""
    try:
        lines = path.read_text(encoding="ascii", errors="replace").split()
    except FileNotFoundError:
        return None, ""
    if not lines or not ID_PATTERN.fullmatch(lines[0]):
        return None, ""
    recorded = next((x.removeprefix("machine=") for x in lines[1:] if x.startswith("machine=")), "")
    return lines[0], recorded


class Installation:
    """The installation of one state directory, and this mount's instance of it."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.instance = new_id()
        self._id: str | None = None
        self._lock = threading.Lock()
        self._holders = 0
        self._fd = -1

    @property
    def id(self) -> str:
        """The installation id (read, or generated, on first use)."""
        with self._lock:
            if self._id is None:
                self._id = load_or_create_id(self.state_dir)
            return self._id

    def ownership(self) -> Ownership:
        """What artifacts of this mount carry in their description."""
        return Ownership(installation=self.id, instance=self.instance)

    # -- this mount's instance lock -------------------------------------------

    def hold(self) -> bool:
        """Mark this instance live (counted: every ``hold`` needs a ``release``).

        False (logged) when the state directory cannot take the lock: gc then tells
        this mount's artifacts by its pid only.
        """
        with self._lock:
            self._holders += 1
            if self._fd >= 0:
                return True
            directory = self.state_dir / INSTANCES_DIR
            tmp = directory / f".{self.instance}.tmp"
            try:
                private_dir(directory)
                # Locked under a temporary name, then renamed: gc never sees it unlocked.
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError as e:
                self._holders -= 1
                log.warning("cannot mark this mount live in %s: %s", directory, e)
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.replace(tmp, directory / f"{self.instance}.lock")
            except BaseException as e:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                self._holders -= 1
                if not isinstance(e, OSError):
                    raise
                log.warning("cannot mark this mount live in %s: %s", directory, e)
                return False
            self._fd = fd
            return True

    def release(self) -> None:
        """The mount ends: after the last release the instance counts as dead."""
        with self._lock:
            if self._holders == 0:
                return
            self._holders -= 1
            if self._holders or self._fd < 0:
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._lock_path(self.instance))
            os.close(self._fd)  # closing releases the flock
            self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    # -- other instances ------------------------------------------------------

    def instance_alive(self, instance: str | None) -> bool:
        """Whether a mount of this installation with ``instance`` still runs (its lock is held).

        False for a malformed id, a missing lock file or one nobody holds.
        """
        if instance is None or not ID_PATTERN.fullmatch(instance):
            return False
        if instance == self.instance:
            return self.held
        try:
            fd = os.open(self._lock_path(instance), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def forget_dead_instances(self) -> list[str]:
        """Remove the lock files of instances nobody holds (mounts that died); their ids."""
        directory = self.state_dir / INSTANCES_DIR
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        gone = []
        for name in names:
            instance = name.removesuffix(".lock")
            if not name.endswith(".lock") or instance == self.instance:
                continue
            if not self.instance_alive(instance):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(directory / name)
                gone.append(instance)
        return gone

    def _lock_path(self, instance: str) -> Path:
        return self.state_dir / INSTANCES_DIR / f"{instance}.lock"
