"""A mount's process dying at a chosen call, for tests of what the next mount finds.

``Crash`` stands for one mount process: its identity is a dead pid (what
artifacts and journal entries of the dying mount name, so the next mount's gc
takes them for a dead process's), ``engine(real)`` is the engine as that
process sees it, and ``at(obj, name)`` makes the process die on a call: before
it (``after=False``) or once it returned. Dying means: the state directory is
copied as it is at that instant to ``image`` (what the next mount finds on
disk), ``ProcessDied`` is raised there, and every later engine call of the dead
process raises it too, so no cleanup, retry or shutdown of the dead mount
reaches the engine. ``ProcessDied`` is a ``BaseException``: the code under test
catches no crash of the process it runs in.

Must not: change the engine's behaviour for anyone else, or decide what a test asserts.
"""

from __future__ import annotations

import functools
import inspect
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rhvfs.sessions.core import _procid as procid


class ProcessDied(BaseException):
    """The mount's process died here: nothing after this runs in it."""


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


class Crash:
    """One mount process that will die; ``state_dir`` is its state directory."""

    def __init__(self, state_dir: Path, image: Path) -> None:
        self.state_dir = state_dir
        self.image = image
        me = procid.current()
        #: the identity the dying mount's artifacts name (a pid that is gone)
        self.process = procid.ProcessIdentity(me.host, me.boot_id, dead_pid(), 1)
        self.dead = False
        self.where = ""

    def die(self, where: str) -> None:
        """The process dies now (again, when a dead one is asked to do anything)."""
        if not self.dead:
            self.dead = True
            self.where = where
            shutil.copytree(self.state_dir, self.image)
        raise ProcessDied(where)

    def at(self, obj: Any, name: str, *, after: bool = False) -> None:
        """Die on the next call of ``obj.name`` (sync or async): before it runs, or after
        it returned (``after``)."""
        real: Callable[..., Any] = getattr(obj, name)
        where = f"{'after' if after else 'before'} {name}"
        if inspect.iscoroutinefunction(real):

            @functools.wraps(real)
            async def dying_async(*args: Any, **kwargs: Any) -> Any:
                if not after:
                    self.die(where)
                await real(*args, **kwargs)
                self.die(where)

            setattr(obj, name, dying_async)
        else:

            @functools.wraps(real)
            def dying(*args: Any, **kwargs: Any) -> Any:
                if not after:
                    self.die(where)
                real(*args, **kwargs)
                self.die(where)

            setattr(obj, name, dying)

    def engine(self, real: Any) -> Any:
        """``real`` as the dying process sees it: calls fail once the process is dead."""
        return _ProcessEngine(real, self)


class _ProcessEngine:
    """An engine's methods as one process calls them (dead processes call nothing)."""

    def __init__(self, real: Any, crash: Crash) -> None:
        self._real = real
        self._crash = crash

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        crash = self._crash

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            if crash.dead:
                crash.die(f"{name} of a dead process")
            return await attr(*args, **kwargs)

        return call
