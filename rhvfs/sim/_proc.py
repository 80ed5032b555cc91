"""Subprocess helpers shared by the simulator's storage and data plane.

Owns running a command to completion with captured output, spawning
long-lived children that die with the simulator, finding the tools
(qemu-img, qemu-io, qemu-nbd, ovirt-imageio), and keeping what they create
private: every child runs with umask 077 (volumes, overlays, sockets and the
imageio daemon's log are 0600), and ``private_dir``/``private_file`` create
directories 0700 and files 0600. Callers translate ``CommandFailed`` into
their own errors. Must not import client-side rhvfs.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
#: The umask of every child: what the simulator creates is readable by its user only.
PRIVATE_UMASK = 0o077


class CommandFailed(Exception):
    """A command exited non-zero, timed out, or could not be started."""

    def __init__(self, argv: list[str], returncode: int | None, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{argv[0]} failed (exit {returncode}): {stderr.strip()}")


def find_tool(name: str) -> str:
    """The path of ``name``: next to the running interpreter first (venv), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise CommandFailed([name], None, f"{name} not found")
    return found


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700; make ``path`` 0700."""
    missing: list[Path] = []
    p = Path(path)
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return Path(path)


def private_file(path: Path, *, append: bool = False) -> int:
    """Open ``path`` for writing (truncated, or appended to), mode 0600 even if it existed."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def run(
    argv: list[str],
    *,
    cwd: Path | None = None,
    input: bytes | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bytes:
    """Run ``argv`` to completion and return its stdout; raise ``CommandFailed`` otherwise."""
    log.debug("run %s", argv)
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            input=input,
            capture_output=True,
            timeout=timeout_s,
            check=False,
            umask=PRIVATE_UMASK,
        )
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(argv, None, f"timed out after {timeout_s} s") from e
    except OSError as e:
        raise CommandFailed(argv, None, str(e)) from e
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.stdout


# --- long-lived children that die with the simulator ----------------------------
#
# Linux delivers a child's parent-death signal when the *thread* that forked it
# exits, not the process. Request-handler threads come and go, so children are
# forked by one spawner thread that lives as long as the process; `setpriv
# --pdeathsig KILL` arms the signal before exec'ing the real program. A
# simulator killed with SIGKILL then takes its qemu-nbd and imageio daemon down
# with it.

_spawn_requests: queue.Queue[tuple[list[str], dict[str, Any], Future[subprocess.Popen[bytes]]]]
_spawn_requests = queue.Queue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _spawner_loop() -> None:
    while True:
        argv, kwargs, future = _spawn_requests.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(subprocess.Popen(argv, **kwargs))
        except BaseException as e:
            future.set_exception(e)


def spawn(argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, ...)`` whose child gets SIGKILL when this process dies
    (and runs with ``PRIVATE_UMASK``)."""
    global _spawner
    popen_kwargs.setdefault("umask", PRIVATE_UMASK)
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawner_loop, name="rhvfs-sim-spawner", daemon=True)
            _spawner.start()
    future: Future[subprocess.Popen[bytes]] = Future()
    _spawn_requests.put((argv, popen_kwargs, future))
    return future.result()
