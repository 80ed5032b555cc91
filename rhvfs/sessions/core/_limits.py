"""Mount-wide limits on what loads the engine: sessions (snapshots, backups) and image transfers.

``EngineLimits`` holds one ``Limiter`` for sessions (``max_sessions``: each
session of either manager is one snapshot or one engine backup; an
incremental set that also snapshots its raw disks counts once) and one for
image transfers (``max_transfers``). Both managers of a mount share one
``EngineLimits`` (``rhvfs.mount`` builds it), so the limits are mount-wide.

A ``Limiter`` grants places (``Slot``) first come, first served: a request
beyond the limit waits in a FIFO queue, visible in ``status()`` with its
position, and never fails for waiting (a queued read just waits; only
cancellation -- the reader gave up, the session was closed -- takes it out).
Holders that sit idle (a transfer without a reader, a session without an
open file past its grace period) say so with ``Slot.idle(give_way)``: while
anyone waits, the oldest idle holder is asked once (``give_way()``, which must
not block) to end what it holds and release its slot, so requests of one tool
never wait for places held by nobody in use -- without that a tool that reads
one VM's disks one after the other would wait forever for a transfer held by
the disk it read before. A request for several places at once (an engine
backup opens all its disks' transfers together) is clamped to the limit, so
it can always be granted.

A limit of 0 means unlimited (places are still counted for status).

Invariants (between awaits; trio is single-threaded): ``held`` places never
exceed the limit (unless it is 0); the queue is served strictly in order: a
request is granted only when every request before it was; a slot is in
exactly one of queued, held, released.

Must not: know what a session or transfer is, or end anything itself (the
holders' ``give_way`` callbacks do).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import trio

from rhvfs.config import Config


class Slot:
    """One request for ``count`` places of a ``Limiter``: queued, then held, then released."""

    def __init__(self, limiter: Limiter, label: Mapping[str, Any], count: int) -> None:
        self.limiter = limiter
        self.label = dict(label)
        self.count = count
        self.id = next(limiter._ids)
        self.state = "queued"
        self.granted = trio.Event()
        self.queued_at = time.time()
        self.granted_at: float | None = None
        self._give_way: Callable[[], None] | None = None
        self._asked = False
        #: called (synchronously) when the places are granted, before any waiter wakes
        self.on_grant: Callable[[], None] | None = None

    @property
    def position(self) -> int | None:
        """1 for the first request in the queue; None when not queued."""
        return self.limiter._position(self)

    async def wait(self) -> None:
        """Until the places are granted (cancellable: the caller then ``release``s)."""
        await self.granted.wait()

    def idle(self, give_way: Callable[[], None]) -> None:
        """The holder uses nothing now: ``give_way()`` (non-blocking) is called once when
        another request waits, and should end what the slot holds and ``release`` it."""
        if self.state != "held":
            return
        self._give_way = give_way
        self._asked = False
        self.limiter._reclaim()

    def busy(self) -> None:
        """The holder uses its places again: not to be asked to give way."""
        self._give_way = None

    def keep(self) -> None:
        """The holder still needs its places though nothing reads through them (what it
        created waits for a background cleanup): never ask it to give way, and ask other
        idle holders instead if it was asked."""
        self._give_way = None
        if self._asked:
            self._asked = False
            self.limiter._reclaim()

    def release(self) -> None:
        """Give the places back (or leave the queue). Idempotent."""
        self.limiter._release(self)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = dict(self.label)
        doc["state"] = self.state
        doc["count"] = self.count
        if self.state == "queued":
            doc["position"] = self.position
        doc["since"] = datetime.fromtimestamp(
            self.granted_at if self.granted_at is not None else self.queued_at, UTC
        ).isoformat()
        return doc


class Limiter:
    """At most ``limit`` places held at once (0: unlimited); the rest wait in order."""

    def __init__(self, *, what: str, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit of {what} must be 0 (unlimited) or more, not {limit}")
        self.what = what
        self.limit = limit
        self._ids = itertools.count(1)
        self._queue: collections.deque[Slot] = collections.deque()
        self._held: dict[int, Slot] = {}
        self.in_use = 0  # places held now
        self.peak = 0  # most places held at once since the mount began
        self.granted_total = 0
        self.waited_total = 0  # requests that had to queue
        self.wait_s_max = 0.0

    # -- requests -----------------------------------------------------------------

    def request(self, label: Mapping[str, Any], *, count: int = 1) -> Slot:
        """A new request, granted at once when places are free and nobody waits."""
        if self.limit:
            count = min(count, self.limit)
        slot = Slot(self, label, max(1, count))
        self._queue.append(slot)
        self._grant()
        if slot.state == "queued":
            self.waited_total += 1
            self._reclaim()
        return slot

    async def acquire(self, label: Mapping[str, Any], *, count: int = 1) -> Slot:
        """``request`` and wait for it; a cancelled wait leaves the queue."""
        slot = self.request(label, count=count)
        try:
            await slot.wait()
        except BaseException:
            slot.release()
            raise
        return slot

    # -- bookkeeping ---------------------------------------------------------------

    def _free(self) -> int | float:
        return self.limit - self.in_use if self.limit else float("inf")

    def _grant(self) -> None:
        while self._queue and self._queue[0].count <= self._free():
            slot = self._queue.popleft()
            slot.state = "held"
            slot.granted_at = time.time()
            self.wait_s_max = max(self.wait_s_max, slot.granted_at - slot.queued_at)
            self._held[slot.id] = slot
            self.in_use += slot.count
            self.peak = max(self.peak, self.in_use)
            self.granted_total += 1
            slot.granted.set()
            if slot.on_grant is not None:
                slot.on_grant()

    def _release(self, slot: Slot) -> None:
        if slot.state == "queued":
            self._queue.remove(slot)
        elif slot.state == "held":
            del self._held[slot.id]
            self.in_use -= slot.count
        slot.state = "released"
        slot._give_way = None
        self._grant()
        self._reclaim()

    def _reclaim(self) -> None:
        """While requests wait: ask idle holders (oldest first) to give way, enough for every
        waiting request."""
        if not self._queue:
            return
        needed = sum(s.count for s in self._queue) - self._free()
        coming = sum(s.count for s in self._held.values() if s._asked)
        for slot in list(self._held.values()):
            if needed - coming <= 0:
                return
            if slot._give_way is not None and not slot._asked:
                slot._asked = True
                coming += slot.count
                slot._give_way()

    def _position(self, slot: Slot) -> int | None:
        for i, s in enumerate(self._queue, 1):
            if s is slot:
                return i
        return None

    # -- reporting -------------------------------------------------------------------

    def queued(self) -> list[dict[str, Any]]:
        """The waiting requests, first first."""
        return [s.status() for s in self._queue]

    def status(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "in_use": self.in_use,
            "queued": sum(1 for _ in self._queue),
            "peak": self.peak,
            "granted": self.granted_total,
            "waited": self.waited_total,
            "longest_wait_s": round(self.wait_s_max, 3),
        }


@dataclasses.dataclass(frozen=True)
class EngineLimits:
    """The mount's two limiters (see the module docstring)."""

    sessions: Limiter
    transfers: Limiter

    @classmethod
    def from_config(cls, config: Config) -> EngineLimits:
        return cls(
            sessions=Limiter(what="sessions", limit=config.max_sessions),
            transfers=Limiter(what="image transfers", limit=config.max_transfers),
        )

    def status(self) -> dict[str, Any]:
        """For ``status.json``: both limiters and, in order, what waits for them."""
        return {
            "limits": {"sessions": self.sessions.status(), "transfers": self.transfers.status()},
            "queued": [{"waits_for": "session", **q} for q in self.sessions.queued()]
            + [{"waits_for": "transfer", **q} for q in self.transfers.queued()],
        }
