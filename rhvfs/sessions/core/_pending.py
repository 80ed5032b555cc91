"""A live mount's own failed cleanups, retried in the background until they succeed.

When a session's cleanup fails or times out (the engine kept a snapshot
locked, refused to end a transfer, a backup did not finalize), the session
hands what is left to its manager's ``PendingCleanups`` as ``CleanupStep``s
(``SessionLifecycle``). Each session's steps are retried in order --
transfers, then the backup, then the snapshot: each needs the ones before it
ended -- with a growing pause (``retry_policy``: ``rhvfs.retry.Backoff``, no
deadline), until every step has succeeded. A step that finds its object gone
is done. Meanwhile ``status()`` lists them (``sessions.pending_cleanups`` in
status.json) and the journal keeps them, so a crash of the mount leaves them
to the next mount's gc. A step's ``on_done`` updates the journal (a transfer)
or the chain state (a backup); when all are done the session's journal entry
is removed. A session's place among ``max_sessions`` (``release``, given
with its steps) is held until its steps are done: a snapshot or backup still on
the engine counts against the limit until it is gone (or the retries gave
up, or the mount ends).

At the end of the mount (``flush``) every pending cleanup gets one more try
under a short deadline; what still fails is logged and stays in the journal
for the next mount or ``rhvfs gc``.

Invariants between awaits: an item is in ``_items`` from ``add`` until all its
steps are done; a step is marked done only after its action returned (its
object ended or gone) and its ``on_done`` ran; one retry task per item.

Must not: decide what is left over (the sessions say), touch artifacts of
other sessions, processes or installations.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import trio

from rhvfs.config import Config
from rhvfs.errors import EngineError, NotFound
from rhvfs.retry import Backoff, RetryPolicy
from rhvfs.sessions.core._cleanup import (
    FINISHED_PHASES,
    BackupEngine,
    SnapshotEngine,
    cancel_transfer,
    finalize_backup,
    remove_snapshot,
)
from rhvfs.sessions.core._journal import Journal
from rhvfs.sessions.core._ports import EngineLike
from rhvfs.sessions.core._registry import SessionRegistry

log = logging.getLogger(__name__)

#: The first background retry waits at least this long (seconds).
MIN_RETRY_INTERVAL_S = 1.0
#: The pause between retries grows up to this (seconds).
MAX_RETRY_INTERVAL_S = 600.0
#: The last try at the end of a mount waits at most this long (seconds).
EXIT_ATTEMPT_S = 30.0


def retry_policy(config: Config) -> RetryPolicy:
    """Background retries: ``max(system_interval, 1)`` seconds doubling up to 10 minutes,
    10% jitter, no deadline (a live mount retries until the cleanup succeeds)."""
    return RetryPolicy(
        tries=None,
        interval_s=max(config.system_interval, MIN_RETRY_INTERVAL_S),
        max_interval_s=MAX_RETRY_INTERVAL_S,
        timeout_s=math.inf,
        factor=2.0,
        jitter=0.1,
    )


def attempt_timeout_s(config: Config) -> float:
    """One background try of a session's steps ends after this long (seconds)."""
    return 2 * max(config.system_timeout, 1.0)


@dataclasses.dataclass
class CleanupStep:
    """One thing a session left on the engine, and how to end it.

    ``action`` ends it (returns when it ended or was gone; raises
    ``EngineError`` when that failed); ``on_done`` records that it ended
    (journal, chain state).
    """

    kind: str  # "transfer", "backup" or "snapshot"
    object_id: str | None  # None: a snapshot whose id was never known (found by description)
    vm_id: str | None
    action: Callable[[], Awaitable[object]]
    on_done: Callable[[], None] | None = None
    done: bool = False

    @property
    def label(self) -> str:
        where = f" of VM {self.vm_id}" if self.vm_id else ""
        return f"{self.kind} {self.object_id or '(id unknown)'}{where}"


def transfer_step(
    engine: EngineLike, transfer_id: str, *, journal: Journal, session_id: str
) -> CleanupStep:
    """End a transfer (cancel it unless it finished); drop it from the session's journal entry."""

    async def end() -> None:
        try:
            transfer = await engine.get_transfer(transfer_id)
        except NotFound:
            return
        if transfer.phase not in FINISHED_PHASES:
            await cancel_transfer(engine, transfer_id)

    return CleanupStep(
        kind="transfer",
        object_id=transfer_id,
        vm_id=None,
        action=end,
        on_done=lambda: journal.remove_transfer(session_id, transfer_id),
    )


def snapshot_step(
    engine: SnapshotEngine,
    vm_id: str,
    snapshot_id: str | None,
    *,
    description: str | None,
    config: Config,
) -> CleanupStep:
    """Remove a session's snapshot (found by ``description`` when its id is unknown)."""
    return CleanupStep(
        kind="snapshot",
        object_id=snapshot_id,
        vm_id=vm_id,
        action=lambda: remove_snapshot(
            engine, vm_id, snapshot_id, description=description, config=config
        ),
    )


def backup_step(
    engine: BackupEngine,
    vm_id: str,
    backup_id: str,
    *,
    config: Config,
    on_done: Callable[[], None] | None = None,
) -> CleanupStep:
    """Finalize an engine backup (gone counts as done)."""
    return CleanupStep(
        kind="backup",
        object_id=backup_id,
        vm_id=vm_id,
        action=lambda: finalize_backup(engine, vm_id, backup_id, config=config),
        on_done=on_done,
    )


@dataclasses.dataclass
class PendingCleanup:
    """What one closed session left, and how retrying it goes."""

    session_id: str
    label: str  # who, for the log
    steps: list[CleanupStep]
    since: str  # ISO 8601 UTC
    attempts: int = 0  # background tries so far
    last_error: str | None = None
    next_attempt_at: float | None = None  # trio time
    release: Callable[[], None] | None = None  # gives back the session's place, once

    def release_place(self) -> None:
        release, self.release = self.release, None
        if release is not None:
            release()

    def remaining(self) -> list[CleanupStep]:
        return [s for s in self.steps if not s.done]


class PendingCleanups:
    """A manager's failed cleanups, retried until they succeed (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        journal: Journal,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.policy = policy or retry_policy(config)
        self._rng = rng
        self._items: dict[str, PendingCleanup] = {}
        self._nursery: trio.Nursery | None = None
        self.completed = 0  # items finished in the background

    # -- service ----------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Retry what is added until cancelled (then ``flush`` takes over)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for item in self._items.values():
                    nursery.start_soon(self._retry, item)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def add(
        self,
        session_id: str,
        label: str,
        steps: list[CleanupStep],
        *,
        error: str | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        """A session's cleanup left ``steps`` (``error``: why): retry them in the background.

        ``release`` (the session's place) is called once, when the steps are done, the
        retries give up or the mount ends.
        """
        if not steps:
            if release is not None:
                release()
            return
        item = self._items.get(session_id)
        if item is not None:  # never expected: a session closes once
            item.steps.extend(steps)
            if release is not None:
                earlier = item.release
                if earlier is None:
                    item.release = release
                else:

                    def both() -> None:
                        earlier()
                        release()

                    item.release = both
            return
        item = PendingCleanup(
            session_id=session_id,
            label=label,
            steps=list(steps),
            since=datetime.now(UTC).isoformat(),
            last_error=error,
            release=release,
        )
        self._items[session_id] = item
        if self._nursery is not None:
            self._nursery.start_soon(self._retry, item)

    def __len__(self) -> int:
        return len(self._items)

    def involves(self, vm_id: str) -> bool:
        """Whether a step still to end belongs to VM ``vm_id`` (a snapshot or backup of a
        closed session is still on the engine)."""
        return any(s.vm_id == vm_id for item in self._items.values() for s in item.remaining())

    async def _retry(self, item: PendingCleanup) -> None:
        backoff = Backoff(self.policy, rng=self._rng)
        async for attempt in backoff:
            # Attempt 0 was the session's own cleanup, which failed: wait first.
            if attempt > 0:
                item.attempts = attempt
                if await self._attempt(item, timeout_s=attempt_timeout_s(self.config)):
                    return
            delay = backoff.next_delay_s()
            if delay is None:  # only with a policy that has a deadline or a try limit
                break
            item.next_attempt_at = trio.current_time() + delay
            if attempt > 0:
                log.info(
                    "cleanup of session %s: %s; try %d in %.0fs",
                    item.label,
                    item.last_error,
                    attempt + 1,
                    delay,
                )
        log.warning(
            "cleanup of session %s: giving up after %d tries: %s",
            item.label,
            item.attempts,
            item.last_error,
        )
        item.release_place()

    async def _attempt(self, item: PendingCleanup, *, timeout_s: float) -> bool:
        """One try of ``item``'s remaining steps, in order; True when all are done."""
        with trio.move_on_after(timeout_s) as scope:
            for step in item.remaining():
                try:
                    await step.action()
                except EngineError as e:
                    item.last_error = f"{step.label}: {e}"
                    return False
                except Exception as e:  # a bug must not end the retries
                    log.exception("cleanup of %s of session %s failed", step.label, item.label)
                    item.last_error = f"{step.label}: {e!r}"
                    return False
                self._done(item, step)
        if scope.cancelled_caught:
            item.last_error = f"{item.remaining()[0].label}: no answer within {timeout_s:g}s"
            return False
        self._items.pop(item.session_id, None)
        item.release_place()
        try:
            self.journal.remove(item.session_id)
        except OSError as e:
            log.warning("cannot update the journal %s: %s", self.journal.path, e)
        self.completed += 1
        log.info(
            "cleanup of session %s done (%d background tr%s)",
            item.label,
            item.attempts,
            "y" if item.attempts == 1 else "ies",
        )
        return True

    def _done(self, item: PendingCleanup, step: CleanupStep) -> None:
        step.done = True
        if step.on_done is not None:
            try:
                step.on_done()
            except OSError as e:
                log.warning("cleanup of session %s: %s", item.label, e)
        log.info("cleanup of session %s: %s ended", item.label, step.label)

    async def flush(self) -> None:
        """The mount ends: one last try of everything pending, under a short deadline; what
        still fails stays in the journal for the next mount or ``rhvfs gc``."""
        items = list(self._items.values())
        if not items:
            return
        timeout_s = min(max(self.config.system_timeout, 1.0), EXIT_ATTEMPT_S)
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for item in items:
                    nursery.start_soon(self._last_try, item, timeout_s)

    async def _last_try(self, item: PendingCleanup, timeout_s: float) -> None:
        item.attempts += 1
        if await self._attempt(item, timeout_s=timeout_s):
            return
        item.release_place()
        log.warning(
            "cleanup of session %s not finished when the mount ended (%s): left %s; "
            "the next mount or `rhvfs gc` removes it",
            item.label,
            item.last_error,
            ", ".join(s.label for s in item.remaining()),
        )

    # -- reporting --------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """One entry per object still to end (for ``sessions.pending_cleanups``)."""
        try:
            now: float | None = trio.current_time()
        except RuntimeError:  # outside trio
            now = None
        out: list[dict[str, Any]] = []
        for item in self._items.values():
            next_in = (
                round(max(0.0, item.next_attempt_at - now), 1)
                if item.next_attempt_at is not None and now is not None
                else None
            )
            for step in item.remaining():
                out.append(
                    {
                        "kind": step.kind,
                        "id": step.object_id,
                        "vm_id": step.vm_id,
                        "session": item.label,
                        "session_id": item.session_id,
                        "since": item.since,
                        "attempts": item.attempts,
                        "last_error": item.last_error,
                        "next_attempt_in_s": next_in,
                    }
                )
        return out


async def serve(
    registry: SessionRegistry[Any],
    *,
    journal: Journal,
    cleanups: PendingCleanups,
    on_start: Callable[[], Awaitable[object]] | None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """A manager's service: hold the installation, serve ``registry`` with the pending
    cleanups' retries (and ``on_start``, the leftovers of dead mounts) beside it until
    cancelled; then every session ends, what their cleanups left gets one last try, and
    the installation is released. One body for the full and incremental managers."""

    async def background() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cleanups.run)
            if on_start is not None:
                nursery.start_soon(on_start)

    journal.installation.hold()
    try:
        await registry.run(background=background, task_status=task_status)
    finally:
        await cleanups.flush()
        journal.installation.release()
