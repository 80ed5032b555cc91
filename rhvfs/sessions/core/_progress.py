"""Progress of transfers: bytes done of a size, current and average rate, ETA.

``RateMeter`` counts bytes moved at points in time; its current rate is the
bytes of the last ``window_s`` seconds over that window (over the time since
the first byte while the meter is younger than the window), so it falls to 0
within ``window_s`` of the last byte; its average rate is every byte over the
time since the first one. ``FileProgress`` is one file: its size, the byte
ranges moved (a range moved twice counts once toward ``bytes_done``; every
byte counts toward the rates) and a meter. ``progress_document`` renders
the ``progress`` object status.json shows for a file, a session or a total;
``sum_progress`` adds several of them up (rates add, the ETA is the remaining
bytes over the summed current rate).

The ETA is finite only while the current rate is above 0 (0 when nothing
remains); a percent of an empty size is 100.

Pure: times are passed in (seconds on any monotonic clock: trio's in the
mount, a fake one in tests). Must not read a clock, log, or know what moves
the bytes.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rhvfs.intervals import Intervals

#: Seconds the current rate looks back.
WINDOW_S = 5.0
#: Records closer together than this (seconds) are kept as one (bounded memory).
BUCKET_S = 0.25


#: A session's ``state`` (``SessionLifecycle``) as the phase people see.
PHASES = {
    "queued": "queued",  # waiting for a place among max_sessions
    "starting": "starting",  # snapshot or engine backup being made
    "ready": "active",
    "broken": "failed",
    "closing": "cleanup",  # transfers finalized, snapshot removed / backup finalized
    "closed": "closed",
}


def phase_of(state: str) -> str:
    return PHASES.get(state, state)


class RateMeter:
    """Bytes moved over time: the current (windowed) and the average rate, in bytes/s."""

    def __init__(self, *, window_s: float = WINDOW_S, bucket_s: float = BUCKET_S) -> None:
        if window_s <= 0 or bucket_s <= 0 or bucket_s > window_s:
            raise ValueError("need 0 < bucket_s <= window_s")
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.total = 0  # bytes recorded since the meter began
        self.first: float | None = None  # time of the first record
        self.last: float | None = None  # time of the newest record
        self._buckets: collections.deque[list[float]] = collections.deque()  # [time, bytes]

    def add(self, now: float, nbytes: int) -> None:
        """``nbytes`` were moved at ``now`` (times never go back; an earlier one counts as now)."""
        if nbytes <= 0:
            return
        if self.last is not None and now < self.last:
            now = self.last
        if self.first is None:
            self.first = now
        self.last = now
        self.total += nbytes
        if self._buckets and now - self._buckets[-1][0] < self.bucket_s:
            self._buckets[-1][1] += nbytes
        else:
            self._buckets.append([now, float(nbytes)])
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._buckets.popleft()

    def current(self, now: float) -> float:
        """Bytes/s over the last ``window_s`` seconds (0 when nothing moved in them)."""
        if self.first is None:
            return 0.0
        cutoff = now - self.window_s
        moved = sum(b for t, b in self._buckets if t > cutoff)
        if not moved:
            return 0.0
        span = min(self.window_s, now - self.first)
        return moved / max(span, self.bucket_s)

    def average(self, now: float) -> float:
        """Bytes/s from the first byte until ``now`` (0 before any byte)."""
        if self.first is None:
            return 0.0
        return self.total / max(now - self.first, self.bucket_s)


class FileProgress:
    """One file being moved: its size, the ranges done, its meter."""

    def __init__(self, size: int, *, window_s: float = WINDOW_S) -> None:
        self.size = size
        self.ranges = Intervals()
        self.meter = RateMeter(window_s=window_s)

    def add(self, now: float, offset: int, nbytes: int) -> None:
        """``[offset, offset + nbytes)`` was moved at ``now``."""
        if nbytes <= 0:
            return
        self.ranges.add(offset, offset + nbytes)
        self.meter.add(now, nbytes)

    @property
    def done(self) -> int:
        """Distinct bytes moved (at most ``size``)."""
        return min(self.ranges.total, self.size)

    @property
    def complete(self) -> bool:
        return self.size == 0 or self.ranges.covers(0, self.size)

    @property
    def state(self) -> str:
        """``waiting`` (no byte yet), ``reading`` or ``done`` (every byte moved)."""
        if self.complete and (self.size == 0 or self.meter.total):
            return "done"
        return "reading" if self.meter.total else "waiting"

    def document(self, now: float) -> dict[str, Any]:
        # A finished file keeps the average it had when its last byte moved.
        at = self.meter.last if self.complete and self.meter.last is not None else now
        return progress_document(
            size=self.size,
            done=self.done,
            current=self.meter.current(now),
            average=self.meter.average(at),
        )


class SetProgress:
    """The files of one session (a backup set, or a restore's disks) and its own meter.

    Files are announced with ``expect`` (shown ``waiting`` until their first
    byte) or appear with their first ``add``; the session's progress is over
    every file it knows.
    """

    def __init__(self, *, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.meter = RateMeter(window_s=window_s)
        self._files: dict[str, tuple[str, FileProgress]] = {}

    def expect(self, key: str, name: str, size: int) -> FileProgress:
        """The progress of file ``key`` (``name``, ``size`` bytes), created when new."""
        item = self._files.get(key)
        if item is None:
            item = self._files[key] = (name, FileProgress(size, window_s=self.window_s))
        return item[1]

    def add(self, now: float, key: str, offset: int, nbytes: int, *, name: str, size: int) -> None:
        """``nbytes`` of file ``key`` moved at ``offset``, at ``now``."""
        self.expect(key, name, size).add(now, offset, nbytes)
        self.meter.add(now, nbytes)

    def document(self, now: float, *, order: Sequence[str] = ()) -> dict[str, Any]:
        """``{"progress": ..., "files": [{"name", "size", "state", "progress"}]}``; files in
        ``order`` (keys) first, in that order, then the others as they appeared."""
        rank = {key: i for i, key in enumerate(order)}
        keys = sorted(self._files, key=lambda k: rank.get(k, len(rank)))
        files = [
            {
                "name": self._files[k][0],
                "size": self._files[k][1].size,
                "state": self._files[k][1].state,
                "progress": self._files[k][1].document(now),
            }
            for k in keys
        ]
        total = sum(fp.size for _, fp in self._files.values())
        done = sum(fp.done for _, fp in self._files.values())
        return {
            "progress": progress_document(
                size=total,
                done=done,
                current=self.meter.current(now),
                average=self.meter.average(now),
            ),
            "files": files,
        }


def eta_s(remaining: int, rate: float) -> float | None:
    """Seconds until ``remaining`` bytes are moved at ``rate`` bytes/s; None when unknown."""
    if remaining <= 0:
        return 0.0
    if rate <= 0 or not math.isfinite(rate):
        return None
    return remaining / rate


def progress_document(*, size: int, done: int, current: float, average: float) -> dict[str, Any]:
    """The ``progress`` object of status.json (bytes, bytes/s, seconds, percent 0..100)."""
    done = max(0, min(done, size))
    eta = eta_s(size - done, current)
    return {
        "size": size,
        "bytes_done": done,
        "percent": 100.0 if size <= 0 else round(100.0 * done / size, 1),
        "rate_bytes_per_s": math.floor(current),
        "average_rate_bytes_per_s": math.floor(average),
        "eta_s": None if eta is None else round(eta, 1),
    }


def sum_progress(docs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Several ``progress`` objects as one: sizes, bytes and rates add up."""
    docs = list(docs)
    return progress_document(
        size=sum(int(d["size"]) for d in docs),
        done=sum(int(d["bytes_done"]) for d in docs),
        current=float(sum(d["rate_bytes_per_s"] for d in docs)),
        average=float(sum(d["average_rate_bytes_per_s"] for d in docs)),
    )
