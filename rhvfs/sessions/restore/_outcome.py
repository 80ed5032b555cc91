"""The tool sees the outcome: the call that completes a restore set waits for the VM.

Without this, the VM (or template) is made in the background after the last
file arrived, so tar, cp, rsync, restic and Bacula would exit 0 while
``.status`` later says ``failed``. ``OutcomeWait.around`` wraps the calls a
tool makes when it is done with a file — FUSE ``flush`` (the last
``close(2)``: it returns to the caller, unlike ``release``), ``utimes`` on a
closed image (tar, rsync and restic set times after closing), and ``rename``
(rsync's temporary file) — and makes **the completing call** wait: the one
after which, and not before which, nothing more is needed from the tool
(``inputs_in``): the manifest and the OVF were parsed, every selected disk's
image is complete (its upload may still be finalizing), and no chain is
waiting to settle. Which call that is depends on the order the tool writes:
an image's close or utimes when the configuration was parsed already, the
``manifest.json``/``vm.ovf`` close (or rename) when the images are in.

It waits until the restore is decided — ``done`` (the call succeeds) or
``failed`` (the call raises the failure's class; ``rhvfs.fs`` maps it to
the errno, e.g. EIO for an engine failure at VM creation) — for at most
``outcome_timeout_s`` seconds (``Config.outcome_timeout``,
``--outcome-timeout``; 0 never waits). Past it the call succeeds, a note
says so, and ``.status`` stays the authority.

Not waited for, by design: calls that are not the completing one (they must
not block a tool that still has files to write); a **chain** (several sets
in one directory: it settles only after a quiet period with every file
closed, and a tool blocked in its last call could not deliver the next set);
a set that lacks a disk (``_partial`` ends it later, after a quiet period:
between two images of a copy, "the rest is missing" is normal); and images
completed by a timer rather than by a call of the tool.

Must not: decide when an image or the set is complete, change the phase,
or carry errno values.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

import trio

from rhvfs.errors import RestoreError
from rhvfs.sessions.restore._files import RestoreDisk
from rhvfs.sessions.restore._ports import RestoreServices
from rhvfs.sessions.restore._state import Phase

log = logging.getLogger(__name__)

T = TypeVar("T")


class OutcomeHost(Protocol):
    """What the outcome wait needs from its restore session."""

    @property
    def name(self) -> str: ...
    @property
    def phase(self) -> Phase: ...
    @property
    def error(self) -> str | None: ...
    @property
    def failure(self) -> RestoreError | None: ...
    @property
    def disks(self) -> Mapping[str, RestoreDisk]: ...
    def config_read(self) -> bool:
        """True once the manifest and the OVF were parsed and checked."""
        ...

    def chain_waiting(self) -> bool:
        """True while a chain restore has not settled."""
        ...

    def note(self, text: str) -> None: ...


class OutcomeWait:
    """The outcome of one restore session, as its completing call waits for it."""

    def __init__(self, host: OutcomeHost, services: RestoreServices) -> None:
        self._host = host
        self._services = services
        self._decided = trio.Event()

    def decided(self) -> None:
        """The restore is ``done`` or ``failed`` (called by the session, synchronously)."""
        self._decided.set()

    def inputs_in(self) -> bool:
        """Nothing more is needed from the tool: the set is complete or being built."""
        h = self._host
        if h.phase.final:
            return True
        if not h.config_read() or h.chain_waiting():
            return False
        return all(d.finish.is_set() for d in h.disks.values() if d.selected)

    def raise_failure(self) -> None:
        """Raise the restore's failure (its class) if it failed: every later change in
        its directory reports it, so a tool that ignored the completing call's error
        (restic 0.14 drops utimes errors) still sees it on its next call."""
        h = self._host
        failure = h.failure
        if failure is not None:
            raise type(failure)(f"restore {h.name} failed: {h.error}")

    async def around(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one of the tool's calls; if it completed the set, wait for the outcome."""
        before = self.inputs_in()
        result = await call()
        if not before and self.inputs_in():
            await self.wait()
        return result

    async def wait(self) -> None:
        """Until the restore is decided (at most ``outcome_timeout_s``); raises its failure."""
        h = self._host
        timeout = self._services.outcome_timeout_s
        if timeout <= 0:
            return
        t0 = trio.current_time()
        with trio.move_on_after(timeout):
            await self._decided.wait()
        self.raise_failure()
        if h.phase is not Phase.DONE:
            h.note(
                f"the tool's last call returned after {trio.current_time() - t0:.0f} s "
                f"(outcome_timeout) while the restore was still {h.phase}; .status tells the outcome"
            )
