"""Ending what a session created on the engine: snapshots, image transfers, VM backups.

The one place that says how rhvfs removes a snapshot, ends or cancels an image
transfer and finalizes an engine VM backup, used by the full-backup session,
the incremental session, the incremental manager's leftovers and ``gc``.

The retry rule (the strictest of the loops it replaces, the same for every
step that waits on the engine; ``busy_policy``): a step is retried while
the engine answers ``Conflict`` (409: the snapshot, disk or backup is locked
or still busy) or a transient error (connection, 5xx, timeout), with a pause
of ``max(system_interval, 0.05)`` seconds doubling up to ``MAX_INTERVAL_S``,
for at most ``system_timeout`` seconds (``rhvfs.retry.retry``: no pause is
started that would end past that deadline); then the last error is raised.
``NotFound`` (404) means the thing is gone already: the step is done. Any
other error is final at once (retrying a refused request only hides it for
``system_timeout``).

Transfers are not retried here: the engine facade already retries a transient
failure of the request and waits for the transfer's final phase, and a
transfer that does not finalize is cancelled instead.

Each function returns True when it ended the thing, False when it was gone
already, and raises ``EngineError`` when it failed for good; callers decide
what a failure means for them (keep a journal entry for gc, note an error).

Must not: decide whether something should be removed (callers own that: gc
checks markers and liveness, sessions their own artifacts), touch the journal
or the chain state.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from rhvfs.config import Config
from rhvfs.engine.types import Snapshot
from rhvfs.errors import Conflict, EngineError, NotFound, is_transient
from rhvfs.retry import RetryPolicy, retry

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.05
MAX_INTERVAL_S = 10.0
#: Phases of a transfer that has ended (nothing left to cancel).
FINISHED_PHASES = frozenset({"finished_success", "finished_failure", "finished_cleanup"})


class SnapshotEngine(Protocol):
    async def list_snapshots(self, vm_id: str) -> list[Snapshot]: ...
    async def remove_snapshot(self, vm_id: str, snapshot_id: str) -> None: ...


class TransferEngine(Protocol):
    async def finalize_transfer(self, transfer_id: str) -> None: ...
    async def cancel_transfer(self, transfer_id: str) -> None: ...


class BackupEngine(Protocol):
    async def finalize_backup(self, vm_id: str, backup_id: str) -> None: ...


def retryable(error: BaseException) -> bool:
    """Locked/busy (409) or transient: the same request may succeed later."""
    return isinstance(error, Conflict) or is_transient(error)


def busy_policy(config: Config) -> RetryPolicy:
    """How long a step waits for a busy engine (see the module docstring); the full
    session's snapshot creation uses it too."""
    return RetryPolicy(
        tries=None,
        interval_s=max(config.system_interval, MIN_INTERVAL_S),
        max_interval_s=MAX_INTERVAL_S,
        timeout_s=config.system_timeout,
    )


# -- snapshots ------------------------------------------------------------------


async def find_snapshot(
    engine: SnapshotEngine,
    vm_id: str,
    *,
    snapshot_id: str | None = None,
    description: str | None = None,
) -> Snapshot | None:
    """The VM's snapshot with ``snapshot_id`` (or, without one, with ``description``).

    Raises ``EngineError`` when the snapshots cannot be listed (``NotFound``: the VM is gone).
    """
    for s in await engine.list_snapshots(vm_id):
        if (s.id == snapshot_id) if snapshot_id else (s.description == description):
            return s
    return None


async def remove_snapshot(
    engine: SnapshotEngine,
    vm_id: str,
    snapshot_id: str | None,
    *,
    description: str | None = None,
    config: Config,
) -> bool:
    """Remove a snapshot, retrying while it is locked (see the module docstring).

    Without ``snapshot_id`` (its creation's answer was lost) the snapshot is
    looked up by ``description``; none found means nothing to remove. Returns
    False when it was gone already; raises ``EngineError`` when removal failed.
    """
    if snapshot_id is None:
        try:
            found = await find_snapshot(engine, vm_id, description=description)
        except NotFound:
            return False  # the VM is gone, and its snapshots with it
        if found is None:
            return False
        snapshot_id = found.id
    started = time.monotonic()
    snap_id = snapshot_id
    try:
        await retry(
            lambda _: engine.remove_snapshot(vm_id, snap_id),
            policy=busy_policy(config),
            what=f"removing snapshot {snap_id} of VM {vm_id}",
            retry_on=retryable,
        )
    except NotFound:
        return False
    log.info("snapshot %s of VM %s removed in %.2fs", snap_id, vm_id, time.monotonic() - started)
    return True


# -- image transfers --------------------------------------------------------------


async def cancel_transfer(engine: TransferEngine, transfer_id: str) -> bool:
    """Cancel a transfer. False when it was gone already; raises ``EngineError``."""
    try:
        await engine.cancel_transfer(transfer_id)
    except NotFound:
        return False
    return True


async def finish_transfer(engine: TransferEngine, transfer_id: str) -> bool:
    """Finalize a transfer; one that does not finalize is cancelled instead.

    False when it was gone already; raises ``EngineError`` when neither worked.
    """
    try:
        await engine.finalize_transfer(transfer_id)
    except NotFound:
        return False
    except EngineError as e:
        log.warning("finalizing transfer %s failed (%s); cancelling it", transfer_id, e)
        return await cancel_transfer(engine, transfer_id)
    return True


# -- engine VM backups ------------------------------------------------------------


async def finalize_backup(
    engine: BackupEngine,
    vm_id: str,
    backup_id: str,
    *,
    config: Config,
) -> bool:
    """Finalize an engine backup, retrying while its transfers still run (409).

    False when it was gone already; raises ``EngineError`` when finalizing
    failed (``Conflict`` when it was still busy at the deadline).
    """
    try:
        await retry(
            lambda _: engine.finalize_backup(vm_id, backup_id),
            policy=busy_policy(config),
            what=f"finalizing backup {backup_id} of VM {vm_id}",
            retry_on=retryable,
        )
    except NotFound:
        return False
    return True
