"""Background steps of the engine's phase machines (transfers, snapshots, backups).

Owns one scheduler thread that runs callables when they are due, one at a
time and in due order, plus periodic jobs (the transfer inactivity poller).
Running steps one by one keeps the phase machines simple: a step never races
another step. Steps take `State.lock` themselves (and release it during long
storage work, see `api_base`); this module knows nothing about what they do.
Every step waits `delay_s` (the `--delay` option) first.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Tasks:
    def __init__(self, *, delay_s: float) -> None:
        self.delay_s = delay_s
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="engine-tasks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def step(self, fn: Callable[..., Any], *args: Any, delay_s: float | None = None) -> None:
        """Run `fn(*args)` after the phase delay (or `delay_s`)."""
        due = time.monotonic() + (self.delay_s if delay_s is None else delay_s)
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), fn, args))
            self._cond.notify_all()

    def every(self, interval_s: float, fn: Callable[[], Any]) -> None:
        """Run `fn()` every `interval_s` seconds until stopped."""

        def tick() -> None:
            try:
                fn()
            finally:
                self.step(tick, delay_s=interval_s)

        self.step(tick, delay_s=interval_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    timeout = (self._heap[0][0] - time.monotonic()) if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn, args = heapq.heappop(self._heap)
            try:
                fn(*args)
            except Exception:
                log.exception("background step %s failed", getattr(fn, "__name__", fn))
