"""A session's task: start, wait for a close request or the grace timer, clean up shielded.

``SessionLifecycle`` is what the full-backup session (``backup.BackupSession``)
and the incremental session (``incremental_session.IncrementalSession``) share:
``run`` opens the session's nursery, calls ``_start``, waits until
``request_close``, cancels the nursery, and then runs ``_cleanup`` shielded
from cancellation under a deadline of ``max(system_timeout, 1)`` seconds,
whatever happened before. What the cleanup could not end (``_leftovers``: it
failed, or the deadline passed) goes to the manager's ``PendingCleanups``,
which retries it in the background while the mount lives.
``schedule_close`` is the grace period: the session closes after a delay
unless a handle is opened meanwhile (``cancel_grace``). ``SessionServices`` is
what every session gets from its manager.

With mount-wide limits (``SessionServices.limits``, ``core._limits``) a session
first waits in state ``queued`` for a place among ``max_sessions`` (unless
it was given one its caller reserved and was granted: ``slot``); waiting
never fails (a close request while queued ends it without creating
anything); the place is held until the cleanup has ended what the session
created (when the cleanup leaves something, until ``PendingCleanups`` has
ended it). A session without an open handle past its park time offers its place
to a queued one (``Slot.idle``): it then closes, and its read ends.

Invariants between awaits: ``state`` only moves forward ([queued ->] starting ->
ready|broken -> closing -> closed); ``ready`` and ``closed`` are set once the
state is final for waiters (``closed`` only after the cleanup); at most one
grace timer is armed.

Must not: know what a session creates on the engine (subclasses clean that up
in ``_cleanup``), its files or its handles beyond "are there any".
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

import trio

from rhvfs.config import Config
from rhvfs.errors import RhvfsError
from rhvfs.sessions.core._journal import Journal
from rhvfs.sessions.core._limits import EngineLimits, Slot
from rhvfs.sessions.core._model import Owner
from rhvfs.sessions.core._pending import CleanupStep, PendingCleanups, transfer_step
from rhvfs.sessions.core._ports import EngineLike, ImageioOpener, ReaderFactory
from rhvfs.sessions.core._procid import ProcessIdentity
from rhvfs.sessions.core._progress import SetProgress, phase_of

log = logging.getLogger(__name__)


def _nothing() -> None:
    pass


@dataclasses.dataclass(frozen=True, kw_only=True)
class SessionServices:
    """What every session gets from its manager.

    ``BackupSessionDeps`` and ``IncrementalSessionDeps`` add what each kind needs.
    """

    engine: EngineLike
    config: Config
    journal: Journal
    process: ProcessIdentity
    imageio_opener: ImageioOpener
    reader_factory: ReaderFactory
    #: where failed cleanups are retried (None: they are only noted; gc takes them later)
    cleanups: PendingCleanups | None = None
    #: the mount's limits on sessions and transfers (None: unlimited)
    limits: EngineLimits | None = None


def progress_now() -> float:
    """The clock progress is measured on: trio's (a fake one in tests), or, outside trio
    (a status taken by a test without a running loop), a monotonic one."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


class SessionLifecycle(abc.ABC):
    """The task, close request, grace timer and shielded cleanup of one session."""

    #: what the subclasses provide
    session_id: str
    handles: Collection[int]

    def __init__(
        self,
        owner: Owner,
        *,
        config: Config,
        read_id: str | None = None,
        cleanups: PendingCleanups | None = None,
        limits: EngineLimits | None = None,
        slot: Slot | None = None,
    ) -> None:
        self.owner = owner
        #: the read of the owner's set this session serves (``core._setread``), if bound to one
        self.read_id = read_id
        #: a newer read began: close when the last handle goes, take no new reader
        self.retiring = False
        #: why the session broke (``state`` "broken"), for its readers
        self.error: RhvfsError | None = None
        self.started_wall = time.time()
        self.started_ns = time.time_ns()
        self.bytes_read = 0
        self._config = config
        self._cleanups = cleanups
        self._limits = limits
        #: a place its caller reserved (the router, at a file's open): taken instead of
        #: asking for one; released with the session's cleanup like one asked for here
        self._slot: Slot | None = slot
        self._queue_scope: trio.CancelScope | None = None
        self.state = "starting"
        self.ready = trio.Event()
        self.closed = trio.Event()
        self._close_requested = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._grace_scope: trio.CancelScope | None = None
        #: bytes served per file, for status.json (``core._progress``)
        self.progress = SetProgress()

    # -- hooks ----------------------------------------------------------------

    @abc.abstractmethod
    async def _start(self, nursery: trio.Nursery) -> None:
        """Create what the session serves; set ``state`` and ``ready`` (subclass)."""
        raise NotImplementedError

    @abc.abstractmethod
    async def _cleanup(self) -> None:
        """End what the session created. Idempotent; never raises (subclass)."""
        raise NotImplementedError

    def _crashed(self, error: Exception) -> bool:
        """An exception escaped the session's nursery: True if handled (the session
        then only ends), False to let it propagate (after the cleanup)."""
        return False

    @abc.abstractmethod
    def _note_cleanup_error(self, message: str) -> None:
        raise NotImplementedError

    @abc.abstractmethod
    def _on_closed(self) -> None:
        """Tell the manager (subclass)."""
        raise NotImplementedError

    def _label(self) -> str:
        """Who this session is, for the log."""
        return self.session_id

    def _leftovers(self) -> list[CleanupStep]:
        """What the cleanup left on the engine, in the order to end it (subclass; called
        after ``_cleanup``). Never raises."""
        return []

    async def _park(self) -> None:
        """Nobody has read for a while: release what can be recreated on the next read
        (image transfers, and the disk locks the engine holds for them). Never raises."""
        return

    # -- progress ---------------------------------------------------------------

    def note_progress(self, key: str, offset: int, nbytes: int, *, name: str, size: int) -> None:
        """``nbytes`` of file ``key`` (``name``, ``size`` bytes) were served at ``offset``."""
        self.progress.add(progress_now(), key, offset, nbytes, name=name, size=size)

    def progress_status(self, files: Iterable[tuple[str, str, int]]) -> dict[str, Any]:
        """``phase``, ``progress`` and ``files`` for status.json; ``files`` are (key, name,
        size) of every file the session is expected to serve (shown ``waiting`` until read)."""
        order = []
        for key, name, size in files:
            self.progress.expect(key, name, size)
            order.append(key)
        phase = phase_of(self.state)
        if phase == "active" and not self.handles:
            phase = "idle"  # ready, but no file open: waiting for the tool (or its end)
        return {
            "phase": phase,
            **self.progress.document(progress_now(), order=order),
        }

    # -- task -----------------------------------------------------------------

    @property
    def queue_position(self) -> int | None:
        """1 for the first session waiting for a place; None when not waiting."""
        return self._slot.position if self._slot is not None else None

    def _queue_label(self) -> dict[str, Any]:
        """Who waits, for ``status.json`` (subclasses name the owner)."""
        return {"session_id": self.session_id}

    async def _take_place(self) -> bool:
        """Wait for a place among the mount's sessions; False when closed while waiting."""
        reserved = self._slot
        if reserved is not None:
            if reserved.state == "held":
                log.info("session %s takes the place reserved at open", self._label())
                return True
            reserved.release()  # not granted (cannot happen through the router): ask anew
            self._slot = None
        if self._limits is None:
            return True
        slot = self._slot = self._limits.sessions.request(self._queue_label())
        if slot.state == "queued":
            self.state = "queued"
            slot.on_grant = self._granted
            log.info(
                "session %s queued at position %s (max_sessions %d)",
                self._label(),
                slot.position,
                self._limits.sessions.limit,
            )
            with trio.CancelScope() as scope:
                self._queue_scope = scope
                if not self._close_requested.is_set():
                    await slot.wait()
            self._queue_scope = None
            if slot.state != "held" or self._close_requested.is_set():
                slot.release()  # out of the line now (nothing was created)
                return False
            log.info("session %s got its place", self._label())
        return True

    def _granted(self) -> None:
        # At the grant, not when the task wakes: status never shows a queued session
        # that holds its place.
        if self.state == "queued":
            self.state = "starting"

    def _give_way(self) -> None:
        log.info("session %s gives its place to a queued session: it closes", self._label())
        self.request_close()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                if await self._take_place():
                    await self._start(nursery)
                    await self._close_requested.wait()
                nursery.cancel_scope.cancel()
        except Exception as e:
            if not self._crashed(e):
                raise
        finally:
            self._nursery = None
            if self.state != "broken":
                self.state = "closing"
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + max(self._config.system_timeout, 1.0)
                await self._cleanup()
            # The place is given back when nothing the session created is left on the
            # engine: now, or when the background retries end it.
            release = _nothing
            if self._slot is not None:
                self._slot.keep()
                release = self._slot.release
            self._hand_over_leftovers(timed_out=scope.cancelled_caught, release=release)
            self.state = "closed"
            self.ready.set()
            self.closed.set()
            self._on_closed()

    def request_close(self) -> None:
        self._close_requested.set()
        if self._queue_scope is not None:
            self._queue_scope.cancel()

    def _hand_over_leftovers(self, *, timed_out: bool, release: Callable[[], None]) -> None:
        """Give what the cleanup left to the manager's background retries (and say so);
        ``release`` (the session's place) goes with it, or is called now."""
        try:
            steps = self._leftovers()
        except Exception:  # a bug here must not keep the session from closing
            log.exception("session %s: cannot tell what its cleanup left", self._label())
            steps = []
        why = "cleanup timed out" if timed_out else "cleanup failed"
        if not steps:
            release()
            if timed_out:
                self._note_cleanup_error(why)
            return
        what = ", ".join(step.label for step in steps)
        if self._cleanups is None:
            release()
            self._note_cleanup_error(
                f"{why}; left {what} (the next mount or `rhvfs gc` removes it)"
            )
            return
        self._cleanups.add(self.session_id, self._label(), steps, error=why, release=release)
        self._note_cleanup_error(f"{why}; retrying in the background: {what}")

    def _journaled_transfer_steps(self, services: SessionServices) -> list[CleanupStep]:
        """Steps ending the transfers the journal still holds for this session."""
        try:
            entries = services.journal.entries()
        except OSError as e:
            log.warning("session %s: cannot read the journal: %s", self._label(), e)
            return []
        return [
            transfer_step(
                services.engine, tid, journal=services.journal, session_id=self.session_id
            )
            for e in entries
            if e.session_id == self.session_id
            for tid in e.transfer_ids
        ]

    # -- grace period ---------------------------------------------------------

    def schedule_close(self, delay_s: float, *, park_after_s: float | None = None) -> None:
        """Close after ``delay_s`` unless a handle is opened meanwhile; with ``park_after_s``
        (shorter), ``_park`` what can be recreated after that long without a handle."""
        self.cancel_grace()
        if self._nursery is None:
            self.request_close()
            return
        scope = trio.CancelScope()
        self._grace_scope = scope
        self._nursery.start_soon(self._grace_timer, scope, delay_s, park_after_s)

    def cancel_grace(self) -> None:
        if self._slot is not None:
            self._slot.busy()
        if self._grace_scope is not None:
            self._grace_scope.cancel()
            self._grace_scope = None

    async def _grace_timer(
        self, scope: trio.CancelScope, delay_s: float, park_after_s: float | None
    ) -> None:
        with scope:
            start = trio.current_time()
            if park_after_s is not None and park_after_s < delay_s:
                await trio.sleep(park_after_s)
                if not self.handles:
                    await self._park()
                    if self._slot is not None and not self.handles:
                        self._slot.idle(self._give_way)
            await trio.sleep_until(start + delay_s)
            if not self.handles:
                log.info("session %s: grace period over", self._label())
                self.request_close()
