"""``EngineEvents``: what rhvfs did, posted to the engine's audit log (its events).

A backup (a read of a set that took a snapshot or an engine backup) and a
restore post one event when they start, one when they end, and one when they
fail, so the engine's Events tab shows rhvfs's work next to its own:
origin ``rhvfs``, a ``custom_id`` unique per event (the engine refuses a second
event with the same origin and id), severity ``normal`` (started, finished),
``warning`` (a backup that ended without every file read) or ``error``
(failed), a description naming the VM, and a link to the VM when its id is
known. ``engine_events = no`` in the config section turns them off.

Posting never holds up a backup or restore: ``post`` only queues the event
(bounded; a full queue drops it), and ``run`` sends them one by one. A failed
post is logged as a warning once (then at debug level) and counted in
``status()``: an engine that refuses events never fails a backup or restore.

Must not: decide what a backup or restore is (the router and restore sessions
call ``post``), or retry a post (a retried POST could log the event twice).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Protocol

import trio

log = logging.getLogger(__name__)

ORIGIN = "rhvfs"
#: Events waiting to be sent; more are dropped (with a warning) rather than waited for.
QUEUE_SIZE = 256
_MAX_CUSTOM_ID = 2**31 - 1  # the engine's custom_id is a 32-bit signed integer


class EventsEngine(Protocol):
    async def add_event(
        self,
        *,
        description: str,
        severity: str,
        custom_id: int,
        origin: str = ...,
        vm_id: str | None = ...,
    ) -> None: ...


class EngineEvents:
    """Queues events and posts them to the engine in the background (``run``)."""

    def __init__(self, engine: EventsEngine | Any, *, enabled: bool = True) -> None:
        self._engine = engine
        self.enabled = enabled and hasattr(engine, "add_event")
        self._send, self._recv = trio.open_memory_channel[tuple[str, str, str | None]](QUEUE_SIZE)
        # ids unique per origin across mounts and restarts: a random start, then counting
        self._next_id = secrets.randbelow(_MAX_CUSTOM_ID) + 1
        self.posted = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._warned = False

    def post(self, description: str, *, severity: str = "normal", vm_id: str | None = None) -> None:
        """Queue one event (never waits; dropped when the queue is full)."""
        if not self.enabled:
            return
        try:
            self._send.send_nowait((description, severity, vm_id))
        except trio.WouldBlock:
            self.dropped += 1
            self._warn(f"engine events: queue full, dropped {description!r}")

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Send queued events until cancelled."""
        task_status.started()
        async for description, severity, vm_id in self._recv:
            await self._send_one(description, severity, vm_id)

    async def _send_one(self, description: str, severity: str, vm_id: str | None) -> None:
        custom_id = self._next_id
        self._next_id = self._next_id % _MAX_CUSTOM_ID + 1
        try:
            await self._engine.add_event(
                description=description,
                severity=severity,
                custom_id=custom_id,
                origin=ORIGIN,
                vm_id=vm_id,
            )
        except Exception as e:  # an event is never worth failing a backup for
            self.failed += 1
            self.last_error = str(e)
            self._warn(f"engine events: posting {description!r} failed: {e}")
            return
        self.posted += 1

    def _warn(self, message: str) -> None:
        if self._warned:
            log.debug("%s", message)
            return
        self._warned = True
        log.warning("%s (further event failures are logged at debug level)", message)

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "posted": self.posted,
            "failed": self.failed,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }
