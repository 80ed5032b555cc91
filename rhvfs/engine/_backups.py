"""Incremental-backup API: backups (start until ``ready``, disks, finalize) and checkpoints.

Backups are created with a client-chosen id so a retry after a lost response
finds the existing backup instead of starting a second one. A backup that
fails to become ready is finalized (stopped) before the error propagates.
Checkpoint removal waits for 404.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import ovirtsdk4.types as sdk
import trio

from rhvfs.engine import _convert as convert
from rhvfs.engine import types as t
from rhvfs.engine._core import EngineCore
from rhvfs.engine._transfers import CLEANUP_TIMEOUT_S
from rhvfs.errors import EngineError, NotFound

log = logging.getLogger(__name__)


def _vm(conn: Any, vm_id: str) -> Any:
    return conn.system_service().vms_service().vm_service(vm_id)


class BackupsMixin(EngineCore):
    async def get_backup(self, vm_id: str, backup_id: str) -> t.Backup:
        item = await self.call(
            lambda c: _vm(c, vm_id).backups_service().backup_service(backup_id).get(),
            f"get backup {backup_id} of vm {vm_id}",
        )
        return convert.backup(item, vm_id=vm_id)

    async def list_backups(self, vm_id: str) -> list[t.Backup]:
        items = await self.call(
            lambda c: _vm(c, vm_id).backups_service().list(), f"list backups of vm {vm_id}"
        )
        return [convert.backup(x, vm_id=vm_id) for x in items]

    async def start_backup(
        self,
        vm_id: str,
        disk_ids: list[str],
        *,
        from_checkpoint_id: str | None = None,
        description: str = "",
        backup_id: str | None = None,
        require_consistency: bool = False,
    ) -> t.Backup:
        """Start a backup of ``disk_ids`` and return it once its phase is ``ready``."""
        bid = backup_id or str(uuid.uuid4())
        kind = f"incremental from {from_checkpoint_id}" if from_checkpoint_id else "full"
        what = f"start {kind} backup {bid} of vm {vm_id}"
        with self.changing(vm_id):
            body = sdk.Backup(
                id=bid,
                disks=[sdk.Disk(id=d) for d in disk_ids],
                from_checkpoint_id=from_checkpoint_id,
                description=description or None,
            )
            query = {"require_consistency": True} if require_consistency else {}

            async def attempt(n: int) -> t.Backup:
                if n > 0:
                    try:
                        return await self.get_backup(vm_id, bid)
                    except NotFound:
                        pass
                created = await self.call_once(
                    lambda c: _vm(c, vm_id).backups_service().add(body, **query), what
                )
                return convert.backup(created, vm_id=vm_id)

            backup = await self.retried(attempt, what)
            log.info("%s: created in phase %s", what, backup.phase)

            async def probe() -> t.Backup | None:
                try:
                    current = await self.get_backup(vm_id, backup.id)
                except NotFound:
                    raise EngineError(
                        f"{what}: backup disappeared before it was ready (failed)"
                    ) from None
                if current.phase == "ready":
                    return current
                if current.phase in ("initializing", "starting", None):
                    return None
                raise EngineError(f"{what}: backup is {current.phase}, not ready")

            try:
                return await self.wait(probe, f"wait for backup {backup.id} to be ready")
            except BaseException:
                with trio.move_on_after(CLEANUP_TIMEOUT_S) as scope:
                    scope.shield = True
                    try:
                        await self.call_once(
                            lambda c: (
                                _vm(c, vm_id).backups_service().backup_service(backup.id).finalize()
                            ),
                            f"stop backup {backup.id} after a failed start",
                        )
                    except EngineError as exc:
                        log.info("could not stop backup %s: %s", backup.id, exc)
                raise

    async def backup_disks(self, vm_id: str, backup_id: str) -> list[t.Disk]:
        """Disks of the backup with ``backup_mode`` (``full`` or ``incremental``)."""
        items = await self.call(
            lambda c: (
                _vm(c, vm_id).backups_service().backup_service(backup_id).disks_service().list()
            ),
            f"list disks of backup {backup_id}",
        )
        return [convert.disk(x) for x in items]

    async def finalize_backup(self, vm_id: str, backup_id: str) -> None:
        """Finalize and wait for ``succeeded`` (404 afterwards also counts). ``Conflict`` while transfers run."""
        what = f"finalize backup {backup_id} of vm {vm_id}"
        with self.changing(vm_id):
            try:
                await self.call(
                    lambda c: _vm(c, vm_id).backups_service().backup_service(backup_id).finalize(),
                    what,
                )
            except NotFound:
                log.info("%s: backup already gone", what)
                return

            async def probe() -> bool | None:
                try:
                    current = await self.get_backup(vm_id, backup_id)
                except NotFound:
                    return True
                if current.phase == "succeeded":
                    return True
                if current.phase == "failed":
                    raise EngineError(f"{what}: backup ended in phase failed")
                return None

            await self.wait(probe, f"wait for backup {backup_id} to succeed")

    async def list_checkpoints(self, vm_id: str) -> list[t.Checkpoint]:
        items = await self.call(
            lambda c: _vm(c, vm_id).checkpoints_service().list(), f"list checkpoints of vm {vm_id}"
        )
        return [convert.checkpoint(x, vm_id=vm_id) for x in items]

    async def checkpoint_disks(self, vm_id: str, checkpoint_id: str) -> list[t.Disk]:
        items = await self.call(
            lambda c: (
                _vm(c, vm_id)
                .checkpoints_service()
                .checkpoint_service(checkpoint_id)
                .disks_service()
                .list()
            ),
            f"list disks of checkpoint {checkpoint_id}",
        )
        return [convert.disk(x) for x in items]

    async def remove_checkpoint(self, vm_id: str, checkpoint_id: str) -> None:
        """Remove a checkpoint and return once GET answers 404."""

        def service(c: Any) -> Any:
            return _vm(c, vm_id).checkpoints_service().checkpoint_service(checkpoint_id)

        await self.remove_retried(
            lambda c: service(c).remove(), f"remove checkpoint {checkpoint_id} of vm {vm_id}"
        )
        await self.wait_gone(
            lambda: self.call(lambda c: service(c).get(), f"get checkpoint {checkpoint_id}"),
            f"checkpoint {checkpoint_id}",
        )
