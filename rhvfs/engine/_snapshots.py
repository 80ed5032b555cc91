"""VM snapshots: create (idempotent by unique description), list, disks as of a snapshot, remove.

Creation retries look for a snapshot with the same description before posting
again, so callers MUST use unique descriptions (backup sessions embed a uuid).
Removal waits until the engine answers 404. Never removes the ``active``
snapshot and never touches snapshots it was not asked about.
"""

from __future__ import annotations

import logging
from typing import Any

import ovirtsdk4.types as sdk

from rhvfs.engine import _convert as convert
from rhvfs.engine import types as t
from rhvfs.engine._core import EngineCore
from rhvfs.engine._inventory import all_content
from rhvfs.errors import EngineError, NotFound

log = logging.getLogger(__name__)


def _snapshots_service(conn: Any, vm_id: str) -> Any:
    return conn.system_service().vms_service().vm_service(vm_id).snapshots_service()


class SnapshotsMixin(EngineCore):
    async def list_snapshots(self, vm_id: str) -> list[t.Snapshot]:
        items = await self.call(
            lambda c: _snapshots_service(c, vm_id).list(), f"list snapshots of vm {vm_id}"
        )
        return [convert.snapshot(x, vm_id=vm_id) for x in items]

    async def get_snapshot(self, vm_id: str, snapshot_id: str) -> t.Snapshot:
        item = await self.call(
            lambda c: _snapshots_service(c, vm_id).snapshot_service(snapshot_id).get(),
            f"get snapshot {snapshot_id} of vm {vm_id}",
        )
        return convert.snapshot(item, vm_id=vm_id)

    async def _find_snapshot(self, vm_id: str, description: str) -> t.Snapshot | None:
        for snap in await self.list_snapshots(vm_id):
            if snap.description == description and snap.type != "active":
                return snap
        return None

    async def create_snapshot(
        self,
        vm_id: str,
        *,
        description: str,
        persist_memorystate: bool = False,
        disk_ids: list[str] | None = None,
    ) -> t.Snapshot:
        """Take a snapshot and return it once ``snapshot_status`` is ``ok``.

        ``disk_ids`` None = all disks; ``[]`` = configuration only.
        """
        what = f"create snapshot {description!r} of vm {vm_id}"
        with self.changing(vm_id):
            body = sdk.Snapshot(description=description, persist_memorystate=persist_memorystate)
            if disk_ids is not None:
                body.disk_attachments = [sdk.DiskAttachment(disk=sdk.Disk(id=d)) for d in disk_ids]

            async def attempt(n: int) -> str:
                if n > 0:
                    # The previous POST may have succeeded with its answer lost.
                    found = await self._find_snapshot(vm_id, description)
                    if found is not None:
                        log.info("%s: found it after a lost response: %s", what, found.id)
                        return found.id
                created = await self.call_once(
                    lambda c: _snapshots_service(c, vm_id).add(body), what
                )
                return str(created.id)

            snapshot_id = await self.retried(attempt, what)
            log.info("%s: snapshot %s created, waiting for ok", what, snapshot_id)

            async def probe() -> t.Snapshot | None:
                try:
                    snap = await self.get_snapshot(vm_id, snapshot_id)
                except NotFound:
                    raise EngineError(
                        f"{what}: snapshot {snapshot_id} disappeared (creation failed)"
                    ) from None
                if snap.status == "ok":
                    return snap
                if snap.status not in (None, "locked"):
                    raise EngineError(f"{what}: snapshot {snapshot_id} is {snap.status}")
                return None

            return await self.wait(probe, f"wait for snapshot {snapshot_id} of vm {vm_id} to be ok")

    async def snapshot_disks(self, vm_id: str, snapshot_id: str) -> list[t.Disk]:
        """Disks as of the snapshot; ``image_id`` is the snapshot's own volume."""
        items = await self.call(
            lambda c: (
                _snapshots_service(c, vm_id).snapshot_service(snapshot_id).disks_service().list()
            ),
            f"list disks of snapshot {snapshot_id} of vm {vm_id}",
        )
        return [convert.disk(x) for x in items]

    async def snapshot_ovf(self, vm_id: str, snapshot_id: str) -> str | None:
        """The OVF of the VM as of the snapshot, or None when the engine has none."""
        item = await self.call(
            lambda c: (
                _snapshots_service(c, vm_id).snapshot_service(snapshot_id).get(**all_content())
            ),
            f"get ovf of snapshot {snapshot_id}",
        )
        init = item.initialization
        conf = init.configuration if init is not None else None
        return str(conf.data) if conf is not None and conf.data else None

    async def remove_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        """Remove (merge) a snapshot and return once GET answers 404."""
        what = f"remove snapshot {snapshot_id} of vm {vm_id}"
        with self.changing(vm_id):
            await self.remove_retried(
                lambda c: _snapshots_service(c, vm_id).snapshot_service(snapshot_id).remove(), what
            )
            seen_locked = False

            async def probe() -> bool | None:
                nonlocal seen_locked
                try:
                    snap = await self.get_snapshot(vm_id, snapshot_id)
                except NotFound:
                    return True
                if snap.status == "locked":
                    seen_locked = True
                elif seen_locked and snap.status == "ok":
                    raise EngineError(f"{what}: the engine failed to remove it (back to ok)")
                return None

            await self.wait(probe, f"wait for snapshot {snapshot_id} of vm {vm_id} to be removed")

    async def list_all_snapshots_with_description_prefix(
        self, prefix: str
    ) -> list[tuple[str, t.Snapshot]]:
        """``(vm_id, snapshot)`` for every snapshot whose description starts with ``prefix``:
        one VM listing with the snapshots inlined (``follow=snapshots``); an engine that
        refuses follow= gets one snapshot list per VM."""
        what = "list vms with snapshots"
        try:
            vms = await self.call(
                lambda c: c.system_service().vms_service().list(follow="snapshots"), what
            )
            pairs = [(vm.id, convert.snapshot(x, vm_id=vm.id)) for vm in vms for x in vm.snapshots]
        except EngineError as exc:
            if exc.code != 400:
                raise
            pairs = await self._snapshots_one_vm_at_a_time()
        return [(v, s) for v, s in pairs if s.description.startswith(prefix) and s.type != "active"]

    async def _snapshots_one_vm_at_a_time(self) -> list[tuple[str, t.Snapshot]]:
        result: list[tuple[str, t.Snapshot]] = []
        vms = await self.call(lambda c: c.system_service().vms_service().list(), "list vms")
        for vm in vms:
            try:
                snaps = await self.list_snapshots(vm.id)
            except NotFound:
                continue  # the VM went away meanwhile
            result.extend((vm.id, s) for s in snaps)
        return result
