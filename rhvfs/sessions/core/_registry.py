"""The sessions of one manager: one live session per owner, the handles into them, notes.

``SessionRegistry`` is what ``BackupManager`` (full sets) and
``IncrementalManager`` (engine-backup sets) share:

- the service task (``run``): a nursery the sessions live in; cancelling it
  ends every session, each cleaning up shielded (``SessionLifecycle``);
- per-owner sessions: ``acquire`` returns the owner's ready session, starting
  one when there is none; a closing session -- or one the caller cannot use,
  which it may ask to make way -- is waited for first, so at most one session
  per owner is ever live (the engine allows one backup per VM, and one
  snapshot per set keeps a set at one point in time);
- ``HandleTable``: handle ids (counting up from 1, never reused) mapping to
  ``(session, key)``; ``SetRouter`` uses the same table for its own handles;
- ``Notes``: the newest errors and warnings for ``/.rhvfs/status.json``;
- reads of sets (``core._setread``) that have ended: a session bound to one
  (``read_id``) is never started again for it (``check_read``), and
  ``retire`` lets a session serve its open handles but no new reader.

Invariants between awaits: ``get(owner_id)`` is the owner's only session
that is not closed; every handle in ``handles`` points to a session that is
not closed (``forget`` drops a closed session's handles).

Must not: know what a session serves or creates, or decide when it closes
(the sessions' grace timers and the managers do).
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import trio

from rhvfs.errors import PointInTimeLost, RhvfsError, SessionClosed, SessionError
from rhvfs.sessions.core._model import Owner

#: Entries kept in a manager's notes (errors, warnings) for status.json.
MAX_NOTES = 50
#: Ended read ids remembered (so a late open of one is refused, never served anew).
MAX_ENDED_READS = 1024

T = TypeVar("T")


class Session(Protocol):
    """What the registry uses of a session (``SessionLifecycle`` plus owner and error)."""

    @property
    def owner(self) -> Owner: ...
    @property
    def state(self) -> str: ...
    @property
    def error(self) -> RhvfsError | None: ...
    @property
    def ready(self) -> trio.Event: ...
    @property
    def closed(self) -> trio.Event: ...
    @property
    def handles(self) -> Collection[int]: ...
    @property
    def read_id(self) -> str | None: ...

    retiring: bool

    def request_close(self) -> None: ...
    async def run(self, *, task_status: Any = ...) -> None: ...
    async def read(
        self, key: str, offset: int, size: int, *, handle_id: int
    ) -> bytes | memoryview: ...


S = TypeVar("S", bound=Session)


class HandleTable(Generic[T]):
    """Open handles: ids counting up from 1 (never reused) to what each one reads."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._items: dict[int, T] = {}

    def add(self, item: T) -> int:
        handle = next(self._ids)
        self._items[handle] = item
        return handle

    def get(self, handle: int) -> T:
        """What ``handle`` reads; ``SessionClosed`` when it is not open."""
        try:
            return self._items[handle]
        except KeyError:
            raise SessionClosed(f"handle {handle} is not open") from None

    def pop(self, handle: int) -> T | None:
        """Close ``handle``; None when it was not open."""
        return self._items.pop(handle, None)

    def drop(self, pred: Callable[[T], bool]) -> None:
        """Close every handle whose item matches ``pred``."""
        for h in [h for h, item in self._items.items() if pred(item)]:
            del self._items[h]

    def __len__(self) -> int:
        return len(self._items)


class Notes:
    """The newest ``MAX_NOTES`` errors (and warnings) of a manager, oldest first."""

    def __init__(self, maxlen: int = MAX_NOTES) -> None:
        self._ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=maxlen)

    def add(self, owner: Owner | None, message: str, *, level: str | None = None) -> None:
        """Record ``message``; ``level`` ("error", "warning") where the manager reports one."""
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(),
            "owner": owner.name if owner else None,
        }
        if level is not None:
            entry["level"] = level
        entry["message"] = message
        self._ring.append(entry)

    def list(self) -> list[dict[str, Any]]:
        return list(self._ring)


class SessionRegistry(Generic[S]):
    """A manager's sessions (one live per owner), its handles and notes; see the module docstring."""

    def __init__(self, *, what: str) -> None:
        self.what = what  # "the backup manager": for "... is not running"
        self.handles: HandleTable[tuple[S, str]] = HandleTable()
        self.notes = Notes()
        #: sessions started per owner since the mount began (``activity``, ``started``)
        self._started_by_owner: collections.Counter[str] = collections.Counter()
        self._sessions: dict[str, S] = {}
        self._nursery: trio.Nursery | None = None
        self._ended_reads: collections.OrderedDict[str, str] = collections.OrderedDict()

    # -- service ----------------------------------------------------------------

    async def run(
        self,
        *,
        background: Callable[[], Any] | None = None,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled (``background()`` runs beside, e.g. cleanup of leftovers);
        on cancellation every session ends cleanly (each cleans up shielded)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if background is not None:
                    nursery.start_soon(background)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def check_running(self) -> None:
        if self._nursery is None:
            raise SessionError(f"{self.what} is not running")

    # -- sessions -----------------------------------------------------------------

    def get(self, owner_id: str) -> S | None:
        """The owner's session that is not closed yet (ready, starting, broken or closing)."""
        return self._sessions.get(owner_id)

    @property
    def started(self) -> int:
        """Sessions started since the mount began."""
        return self._started_by_owner.total()

    def activity(self, owner_id: str) -> int | None:
        """None while the owner has a session (not closed); otherwise how many it has had.
        Equal answers before and after an await: no session of the owner lived meanwhile."""
        if owner_id in self._sessions:
            return None
        return self._started_by_owner[owner_id]

    def __contains__(self, owner_id: object) -> bool:
        return owner_id in self._sessions

    def sessions(self) -> list[S]:
        return list(self._sessions.values())

    async def acquire(
        self,
        owner_id: str,
        *,
        new: Callable[[], S],
        usable: Callable[[S], bool] = lambda s: True,
        make_way: Callable[[S], None] | None = None,
        deadline: float = math.inf,
        busy: Callable[[S], Exception] | None = None,
    ) -> S:
        """The owner's ready session that is ``usable``, started with ``new()`` if it has none.

        A usable session that broke raises its error. Any other session (closing,
        or not usable: ``make_way`` may ask a ready one to close) is waited for
        until it has closed, and then a new one is started. ``busy(session)`` is
        raised when ``deadline`` (trio time) passes while waiting.
        """
        while True:
            session = self._sessions.get(owner_id)
            if session is None:
                self.check_running()
                assert self._nursery is not None
                session = new()
                self._sessions[owner_id] = session
                self._started_by_owner[owner_id] += 1
                await self._nursery.start(session.run)
            await session.ready.wait()
            if usable(session):
                if session.state == "ready":
                    return session
                if session.state == "broken":
                    assert session.error is not None
                    raise session.error
            if trio.current_time() >= deadline:
                assert busy is not None
                raise busy(session)
            if make_way is not None and session.state == "ready":
                make_way(session)
            with trio.move_on_at(deadline):
                await session.closed.wait()

    # -- reads of sets ----------------------------------------------------------------

    def end_read(self, read_id: str, reason: str) -> None:
        """Read ``read_id`` has ended: it never gets a session again."""
        self._ended_reads[read_id] = reason
        while len(self._ended_reads) > MAX_ENDED_READS:
            self._ended_reads.popitem(last=False)

    def ended_read(self, read_id: str) -> str | None:
        """Why read ``read_id`` has ended (its session will not serve it again), or None."""
        return self._ended_reads.get(read_id)

    def check_read(self, read_id: str | None, owner: Owner) -> None:
        """``PointInTimeLost`` when ``read_id`` has ended (its point in time is gone)."""
        if read_id is not None and read_id in self._ended_reads:
            raise PointInTimeLost(
                f"the read {read_id} of {owner.name}'s set has ended "
                f"({self._ended_reads[read_id]}); run the backup again"
            )

    async def settled(self, owner_id: str) -> None:
        """Wait until the owner has no session that is ending (retiring with handles still
        open, or closing): its cleanup -- a snapshot merged away, a backup finalized --
        changes the owner's volumes, so a new read looks at the owner only after it."""
        session = self._sessions.get(owner_id)
        while session is not None and (session.retiring or session.state == "closing"):
            await session.closed.wait()
            session = self._sessions.get(owner_id)

    def retire(self, session: S) -> None:
        """No new reader for ``session``: it closes now, or with its last open handle."""
        session.retiring = True
        if not session.handles:
            session.request_close()

    async def read(self, handle: int, offset: int, size: int) -> bytes | memoryview:
        """Read through an open handle (``SessionClosed`` when it is not open)."""
        session, key = self.handles.get(handle)
        return await session.read(key, offset, size, handle_id=handle)

    def forget(self, session: S) -> None:
        """A session has closed: it is no longer the owner's, and its handles are closed."""
        if self._sessions.get(session.owner.id) is session:
            del self._sessions[session.owner.id]
        self.handles.drop(lambda item: item[0] is session)
        read_id = session.read_id
        if read_id is not None and read_id not in self._ended_reads:
            self.end_read(
                read_id,
                "its session ended (idle past read_idle_limit, gave its place to a queued "
                "session after grace_period, or failed)",
            )

    async def aclose_all(self) -> None:
        """Ask every session to close and wait until they have."""
        sessions = self.sessions()
        for s in sessions:
            s.request_close()
        for s in sessions:
            await s.closed.wait()
