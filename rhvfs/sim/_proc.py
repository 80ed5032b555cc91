"""Subprocess helpers shared by the simulator's storage and data plane.

Owns running a command to completion with captured output, and finding the
tools (qemu-img, qemu-io, qemu-nbd, ovirt-imageio). Callers translate
``CommandFailed`` into their own errors. Must not import client-side rhvfs.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0


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
        )
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(argv, None, f"timed out after {timeout_s} s") from e
    except OSError as e:
        raise CommandFailed(argv, None, str(e)) from e
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.stdout
