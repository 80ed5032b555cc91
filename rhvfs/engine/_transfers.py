"""Image transfers: start (until ``transferring``), get, finalize, cancel, list.

Walks every phase explicitly under a deadline and cancels a transfer it
created when the transfer fails to reach ``transferring``. Never relies on
``transfer.disk`` (real engines only send ``<image id=DISK/>``); a finished
transfer that answers 404 counts as a success when its disk is ``ok``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import ovirtsdk4.types as sdk
import trio

from rhvfs.engine import _convert as convert
from rhvfs.engine import types as t
from rhvfs.engine._inventory import InventoryMixin
from rhvfs.errors import EngineError, NotFound

log = logging.getLogger(__name__)

CLEANUP_TIMEOUT_S = 30.0  # bound on best-effort cleanup calls made while failing
_STARTING = frozenset({"initializing", "resuming", "unknown", None})
_FINISHED = frozenset({"finished_success", "finished_failure", "finished_cleanup"})


def _transfers(conn: Any) -> Any:
    return conn.system_service().image_transfers_service()


class TransfersMixin(InventoryMixin):
    def _remember_disk(self, transfer_id: str, disk_id: str | None) -> None:
        if disk_id:
            self.transfer_disks[transfer_id] = disk_id

    def _transfer_disk(self, transfer_id: str) -> str | None:
        return self.transfer_disks.get(transfer_id)

    async def get_transfer(self, transfer_id: str) -> t.ImageTransfer:
        item = await self.call(
            lambda c: _transfers(c).image_transfer_service(transfer_id).get(),
            f"get transfer {transfer_id}",
        )
        transfer = convert.image_transfer(item)
        self._remember_disk(transfer.id, transfer.disk_id)
        return transfer

    async def list_transfers(self) -> list[t.ImageTransfer]:
        items = await self.call(lambda c: _transfers(c).list(), "list transfers")
        return [convert.image_transfer(x) for x in items]

    async def start_transfer(
        self,
        *,
        disk_id: str | None = None,
        snapshot_image_id: str | None = None,
        backup_id: str | None = None,
        direction: str = "download",
        format: str = "raw",
        inactivity_timeout: int = 60,
        timeout_policy: str = "legacy",
        shallow: bool = False,
        transfer_id: str | None = None,
    ) -> t.ImageTransfer:
        """Create a transfer and return it once its phase is ``transferring`` (URLs set).

        Target: ``disk_id`` (active volume, or with ``backup_id`` the backup's
        view of the disk) or ``snapshot_image_id`` (a volume id). The transfer
        is cancelled when it fails to reach ``transferring`` in time.
        """
        if (disk_id is None) == (snapshot_image_id is None):
            raise ValueError("give exactly one of disk_id or snapshot_image_id")
        if backup_id is not None and disk_id is None:
            raise ValueError("a backup transfer needs disk_id")
        tid = transfer_id or str(uuid.uuid4())
        target = f"disk {disk_id}" if disk_id else f"volume {snapshot_image_id}"
        if backup_id:
            target += f" of backup {backup_id}"
        what = f"start {direction} transfer of {target}"
        body = sdk.ImageTransfer(
            id=tid,
            direction=sdk.ImageTransferDirection(direction),
            format=sdk.DiskFormat(format),
            inactivity_timeout=inactivity_timeout,
            timeout_policy=sdk.ImageTransferTimeoutPolicy(timeout_policy),
        )
        if shallow:
            body.shallow = True
        if disk_id is not None:
            body.disk = sdk.Disk(id=disk_id)
        else:
            body.snapshot = sdk.DiskSnapshot(id=snapshot_image_id)
        if backup_id is not None:
            body.backup = sdk.Backup(id=backup_id)

        async def attempt(n: int) -> t.ImageTransfer:
            if n > 0:
                # The engine may have honoured our id and the answer got lost.
                try:
                    return await self.get_transfer(tid)
                except NotFound:
                    pass
            created = await self.call_once(lambda c: _transfers(c).add(body), what)
            return convert.image_transfer(created)

        transfer = await self.retried(attempt, what)
        self._remember_disk(transfer.id, transfer.disk_id or disk_id)
        log.info("%s: transfer %s created in phase %s", what, transfer.id, transfer.phase)
        try:
            return await self._wait_transferring(transfer, what)
        except BaseException:
            with trio.move_on_after(CLEANUP_TIMEOUT_S) as scope:
                scope.shield = True
                await self._cancel_quietly(transfer.id)
            raise

    async def _wait_transferring(self, transfer: t.ImageTransfer, what: str) -> t.ImageTransfer:
        if transfer.phase == "transferring" and transfer.transfer_url:
            return transfer

        async def probe() -> t.ImageTransfer | None:
            try:
                current = await self.get_transfer(transfer.id)
            except NotFound:
                raise EngineError(
                    f"{what}: transfer {transfer.id} disappeared while starting"
                ) from None
            if current.phase == "transferring":
                return current if (current.transfer_url or current.proxy_url) else None
            if current.phase in _STARTING:
                return None
            raise EngineError(
                f"{what}: transfer {transfer.id} is {current.phase}, not transferring"
            )

        return await self.wait(probe, f"wait for transfer {transfer.id} to be transferring")

    async def _cancel_quietly(self, transfer_id: str) -> None:
        try:
            await self.call_once(
                lambda c: _transfers(c).image_transfer_service(transfer_id).cancel(),
                f"cancel transfer {transfer_id}",
            )
            log.info("cancelled transfer %s after a failed start", transfer_id)
        except EngineError as exc:
            log.warning("could not cancel transfer %s: %s", transfer_id, exc)

    async def _disk_ok_after_404(self, transfer_id: str, what: str) -> bool | None:
        disk_id = self._transfer_disk(transfer_id)
        if disk_id is None:
            return True  # nothing to check against; the engine cleaned the finished transfer
        try:
            disk = await self.get_disk(disk_id)
        except NotFound:
            raise EngineError(
                f"{what}: transfer {transfer_id} is gone and so is its disk {disk_id}"
            ) from None
        if disk.status == "ok":
            return True
        if disk.status == "illegal":
            raise EngineError(
                f"{what}: transfer {transfer_id} is gone and disk {disk_id} is illegal"
            )
        return None

    async def finalize_transfer(self, transfer_id: str) -> None:
        """Finalize and wait for ``finished_success`` (or 404 with the disk ``ok``).

        Raises ``EngineError`` when the transfer ends in ``finished_failure``.
        """
        what = f"finalize transfer {transfer_id}"
        if self._transfer_disk(transfer_id) is None:
            try:
                await self.get_transfer(transfer_id)
            except NotFound:
                pass
        gone = False
        try:
            await self.call(
                lambda c: _transfers(c).image_transfer_service(transfer_id).finalize(), what
            )
        except NotFound:
            gone = True

        async def probe() -> bool | None:
            if not gone:
                try:
                    current = await self.get_transfer(transfer_id)
                except NotFound:
                    pass
                else:
                    if current.phase == "finished_success":
                        return True
                    if current.phase in _FINISHED:
                        raise EngineError(f"{what}: transfer ended in {current.phase}")
                    return None
            return await self._disk_ok_after_404(transfer_id, what)

        await self.wait(probe, f"wait for transfer {transfer_id} to finish")

    async def cancel_transfer(self, transfer_id: str) -> None:
        """Cancel and wait for a ``finished_*`` phase or 404."""
        what = f"cancel transfer {transfer_id}"
        try:
            await self.call(
                lambda c: _transfers(c).image_transfer_service(transfer_id).cancel(), what
            )
        except NotFound:
            return

        async def probe() -> bool | None:
            try:
                current = await self.get_transfer(transfer_id)
            except NotFound:
                return True
            return True if current.phase in _FINISHED else None

        await self.wait(probe, f"wait for transfer {transfer_id} to be cancelled")
