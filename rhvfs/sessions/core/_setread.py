"""One read of a backup set: when it begins, which point in time it gets, when it ends.

A *read* of a set is what one run of a backup tool does to one VM's (or
template's) set: it opens the set's files, in any order, in parallel or one by
one, with pauses. Every file one read serves comes from the same point in time
(one snapshot, or one engine backup). ``SetReads`` is the per-owner book that
decides, for each ``open``, whether it belongs to the owner's current read, begins
a new one, or must be refused because it would mix two points in time:

- **Begin.** An open begins a new read when the owner has no live read, or when
  the file it opens was already read completely (first to last byte, and
  closed) in the live read: reading a file twice is what the *next* tool run
  does (a second ``tar`` right after the first, bacula-fd's next job). The old
  read then retires: it takes no new opens, and ends when its last open handle
  is closed (the manager waits for that before it starts the new point in
  time: one session per owner); a process that was reading from it and opens
  another of its files afterwards gets ``STALE``. So a read that begins after an earlier read completed
  never gets that earlier point in time (freshness).
- **Join.** Any other open joins the live read, however long the tool paused,
  as long as the read is not older than ``idle_limit_s`` of inactivity (no open,
  read or close); parallel readers and several processes join alike.
- **Complete.** When every file of the set was read completely and no handle is
  open, the read is complete and ends at once (its snapshot is removed right
  away); the next open begins a new read.
- **Stale.** A read idle for longer than ``idle_limit_s`` (or lost to a fault:
  ``lose``) ends. It leaves a tombstone with the processes that read from it and
  the files they completed; an open by one of those processes of a file the lost
  read had not completed is refused (``Verdict.STALE``, the FS answers ESTALE):
  that process is still inside the tool run that began on the lost point in
  time, and serving it from another would mix the set silently. Handles still
  open on a lost read fail on their next read the same way.

Readers are identified by process (thread group id plus start time, so pid
reuse does not alias); an unknown reader (``None``) is never matched against
tombstones. Times are trio's clock (``trio.current_time``), so tests run on
``MockClock``.

Invariants between awaits: at most one live read per owner; a read's ``done``
and ``coverage`` only grow; only a live read takes a new handle.

Must not: talk to the engine or imageio, or know what a session creates (the
managers map a ``SetRead`` to their session through ``read_id``).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import secrets
from collections.abc import Iterable, Mapping

import trio

#: A reading process: (thread group id, start time in clock ticks since boot).
ReaderId = tuple[int, int]

#: Tombstones kept per owner (the newest ones), for refusing a lost read's readers.
MAX_TOMBSTONES = 8


class Verdict(enum.Enum):
    """What an ``open`` of a set's file does."""

    JOIN = "join"
    BEGIN = "begin"
    STALE = "stale"


class ReadState(enum.Enum):
    """Where a read is in its life (only moves down this list)."""

    LIVE = "live"  # takes new opens
    RETIRED = "retired"  # a newer read began; serves its open handles only
    COMPLETE = "complete"  # every file read completely, no handle open
    EXPIRED = "expired"  # idle longer than the limit
    LOST = "lost"  # its point in time is gone (engine fault, session broken)

    @property
    def ended(self) -> bool:
        return self in (ReadState.COMPLETE, ReadState.EXPIRED, ReadState.LOST)


def _merge(ranges: list[tuple[int, int]], start: int, end: int) -> None:
    """Add ``[start, end)`` to sorted, disjoint, non-adjacent ``ranges`` in place."""
    out: list[tuple[int, int]] = []
    placed = False
    for s, e in ranges:
        if e < start:
            out.append((s, e))
        elif end < s:
            if not placed:
                out.append((start, end))
                placed = True
            out.append((s, e))
        else:
            start, end = min(s, start), max(e, end)
    if not placed:
        out.append((start, end))
    out.sort()
    ranges[:] = out


@dataclasses.dataclass
class SetRead:
    """One read of one owner's set: its files, its readers, what it has served."""

    read_id: str
    sizes: Mapping[str, int]  # key -> size in bytes of every file this read can serve
    required: frozenset[str]  # the keys whose complete reads complete the set
    began: float  # trio time
    last_activity: float
    state: ReadState = ReadState.LIVE
    reason: str = ""
    readers: set[ReaderId] = dataclasses.field(default_factory=set)
    coverage: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)
    handles: dict[int, str] = dataclasses.field(default_factory=dict)  # handle -> key
    done: set[str] = dataclasses.field(default_factory=set)
    files_opened: int = 0

    def is_covered(self, key: str) -> bool:
        size = self.sizes.get(key)
        if size is None:
            return False
        return size == 0 or self.coverage.get(key) == [(0, size)]

    @property
    def complete(self) -> bool:
        return not self.handles and self.required <= self.done

    def status(self) -> dict[str, object]:
        return {
            "read_id": self.read_id,
            "state": self.state.value,
            "reason": self.reason or None,
            "files_complete": sorted(self.done),
            "files_total": len(self.required),
            "handles": len(self.handles),
            "readers": len(self.readers),
        }


@dataclasses.dataclass(frozen=True)
class Tombstone:
    """What an ended, incomplete read leaves: who read from it and what they finished."""

    read_id: str
    readers: frozenset[ReaderId]
    done: frozenset[str]
    reason: str


class SetReads:
    """The reads of one owner's set, and the verdict for each open."""

    def __init__(self, *, idle_limit_s: float) -> None:
        if idle_limit_s <= 0:
            raise ValueError("idle_limit_s must be positive")
        self.idle_limit_s = idle_limit_s
        self.live: SetRead | None = None
        self.retired: list[SetRead] = []
        self.tombstones: list[Tombstone] = []
        self._handle_ids = itertools.count(1)

    # -- decisions --------------------------------------------------------------

    def verdict(self, key: str, reader: ReaderId | None) -> tuple[Verdict, SetRead | None, str]:
        """What an open of ``key`` by ``reader`` does now: the verdict, the read it joins, why."""
        self.expire_idle()
        live = self.live
        if reader is not None:
            if live is not None and reader in live.readers:
                if key in live.done:
                    return (
                        Verdict.BEGIN,
                        None,
                        (
                            f"{key} was already read completely by this process at point in "
                            f"time {live.read_id}: a new read of the set"
                        ),
                    )
                return Verdict.JOIN, live, f"joins point in time {live.read_id}"
            for t in [*self._retired_tombstones(), *self.tombstones]:
                if reader in t.readers and key not in t.done:
                    return (
                        Verdict.STALE,
                        None,
                        (
                            f"this process read part of the set at point in time {t.read_id}, "
                            f"which has ended ({t.reason}); reading {key} now would mix two "
                            "points in time: run the backup again"
                        ),
                    )
        if live is None:
            return Verdict.BEGIN, None, "no read of this set is in progress"
        if key in live.done:
            return (
                Verdict.BEGIN,
                None,
                (f"{key} was already read completely at point in time {live.read_id}"),
            )
        return Verdict.JOIN, live, f"joins point in time {live.read_id}"

    def begin(
        self,
        sizes: Mapping[str, int],
        *,
        required: Iterable[str] | None = None,
        read_id: str | None = None,
    ) -> SetRead:
        """Start a new live read; the previous live read retires (or ends if idle).

        ``sizes`` maps every key the read may serve to its size in bytes;
        ``required`` (default: all of them) are the files that complete the set.
        """
        now = trio.current_time()
        old = self.live
        if old is not None:
            self._retire(old)
        read = SetRead(
            read_id=read_id or secrets.token_hex(6),
            sizes=dict(sizes),
            required=frozenset(sizes if required is None else required),
            began=now,
            last_activity=now,
        )
        self.live = read
        return read

    # -- events -----------------------------------------------------------------

    def opened(self, read: SetRead, key: str, reader: ReaderId | None) -> int:
        """Record an open handle of ``key`` in ``read``; returns the handle's id in this book."""
        if read.state is not ReadState.LIVE:
            raise ValueError(f"read {read.read_id} is {read.state.value}")
        handle = next(self._handle_ids)
        read.handles[handle] = key
        read.files_opened += 1
        if reader is not None:
            read.readers.add(reader)
        read.last_activity = trio.current_time()
        return handle

    def served(self, read: SetRead, key: str, start: int, end: int) -> None:
        """Record that bytes ``[start, end)`` of ``key`` were served from ``read``."""
        size = read.sizes.get(key)
        if size is not None and end > start:
            _merge(read.coverage.setdefault(key, []), max(0, start), min(end, size))
        read.last_activity = trio.current_time()

    def released(self, read: SetRead, handle: int) -> bool:
        """Record a close; returns True when this close completed ``read`` (it has ended)."""
        key = read.handles.pop(handle, None)
        read.last_activity = trio.current_time()
        if key is not None and read.is_covered(key) and key not in read.handles.values():
            read.done.add(key)
        if read.state in (ReadState.LIVE, ReadState.RETIRED) and read.complete:
            self._end(read, ReadState.COMPLETE, "every file was read")
            return True
        if read.state is ReadState.RETIRED and not read.handles:
            self._end(read, ReadState.EXPIRED, "a newer read of the set began")
            return True
        return False

    def lose(self, read: SetRead, reason: str) -> None:
        """The read's point in time is gone (session broken): it ends, leaving a tombstone."""
        if not read.state.ended:
            self._end(read, ReadState.LOST, reason)

    def expire_idle(self) -> list[SetRead]:
        """End live reads idle for longer than the limit; returns the reads that ended."""
        now = trio.current_time()
        ended = []
        for read in list(self.reads()):
            if read.state.ended or now < self._expiry(read):
                continue
            self._end(read, ReadState.EXPIRED, f"idle for more than {self.idle_limit_s:g} s")
            ended.append(read)
        return ended

    def _expiry(self, read: SetRead) -> float:
        return read.last_activity + self.idle_limit_s

    def _retired_tombstones(self) -> list[Tombstone]:
        return [
            Tombstone(read.read_id, frozenset(read.readers), frozenset(read.done), read.reason)
            for read in self.retired
        ]

    def next_expiry(self) -> float | None:
        """The trio time at which the live read expires if nothing happens, else None."""
        times = [self._expiry(r) for r in self.reads() if not r.state.ended]
        return min(times) if times else None

    def reads(self) -> list[SetRead]:
        """The reads that have not ended: the live one first, then retired ones."""
        return ([self.live] if self.live is not None else []) + list(self.retired)

    # -- internals --------------------------------------------------------------

    def _retire(self, read: SetRead) -> None:
        if self.live is read:
            self.live = None
        if read.handles:
            read.state = ReadState.RETIRED
            read.reason = "a newer read of the set began"
            self.retired.append(read)
        else:
            self._end(read, ReadState.EXPIRED, "a newer read of the set began")

    def _end(self, read: SetRead, state: ReadState, reason: str) -> None:
        read.state = state
        read.reason = reason
        if self.live is read:
            self.live = None
        if read in self.retired:
            self.retired.remove(read)
        if state is not ReadState.COMPLETE and read.readers:
            self.tombstones.append(
                Tombstone(
                    read_id=read.read_id,
                    readers=frozenset(read.readers),
                    done=frozenset(read.done),
                    reason=reason,
                )
            )
            del self.tombstones[:-MAX_TOMBSTONES]
