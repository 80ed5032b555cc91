"""Restore-side writes: disks, VMs (from OVF or plain), attachments, NICs, VM power, templates.

Creates are idempotent: disks carry a client-chosen id; a VM/template/NIC
create retried after a lost response first looks for what it asked for (by
name) before posting again. Waits poll the entity's status. Removal waits for
404. Nothing here decides *what* to restore; that is the restore session's job.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import ovirtsdk4.types as sdk
import trio

from rhvfs.engine import _convert as convert
from rhvfs.engine import types as t
from rhvfs.engine._backups import BackupsMixin
from rhvfs.engine._inventory import InventoryMixin
from rhvfs.engine._transfers import CLEANUP_TIMEOUT_S
from rhvfs.errors import Conflict, EngineError, NotFound

log = logging.getLogger(__name__)

_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_VM_BUSY = frozenset(
    {
        "image_locked",
        "wait_for_launch",
        "powering_up",
        "powering_down",
        "saving_state",
        "restoring_state",
    }
)


def is_uuid(text: str) -> bool:
    return bool(_UUID_RE.match(text))


def _ref(cls: Any, id_or_name: str) -> Any:
    """An SDK reference by id when ``id_or_name`` is a UUID, else by name."""
    return cls(id=id_or_name) if is_uuid(id_or_name) else cls(name=id_or_name)


def _vms(conn: Any) -> Any:
    return conn.system_service().vms_service()


class RestoreMixin(InventoryMixin, BackupsMixin):
    # -- disks ----------------------------------------------------------------

    async def create_disk(
        self,
        *,
        alias: str,
        provisioned_size: int,
        format: str,
        sparse: bool,
        storage_domain: str,
        disk_id: str | None = None,
        image_id: str | None = None,
        backup: str | None = None,
        description: str = "",
        content_type: str = "data",
        initial_size: int | None = None,
        wipe_after_delete: bool | None = None,
        shareable: bool | None = None,
    ) -> t.Disk:
        """Create a floating disk (``storage_domain`` by id or name) and return it once ``ok``."""
        did = disk_id or str(uuid.uuid4())
        what = f"create disk {did} ({alias!r}, {provisioned_size} bytes, {format})"
        body = sdk.Disk(
            id=did,
            name=alias,
            alias=alias,
            provisioned_size=provisioned_size,
            format=sdk.DiskFormat(format),
            sparse=sparse,
            storage_domains=[_ref(sdk.StorageDomain, storage_domain)],
            description=description or None,
            content_type=sdk.DiskContentType(content_type),
        )
        if image_id:
            body.image_id = image_id
        if backup:
            body.backup = sdk.DiskBackup(backup)
        if initial_size is not None:
            body.initial_size = initial_size
        if wipe_after_delete is not None:
            body.wipe_after_delete = wipe_after_delete
        if shareable is not None:
            body.shareable = shareable

        async def attempt(n: int) -> None:
            if n > 0:
                try:
                    await self.get_disk(did)
                    log.info("%s: found it after a lost response", what)
                    return
                except NotFound:
                    pass
            await self.call_once(lambda c: c.system_service().disks_service().add(body), what)

        await self.retried(attempt, what)
        try:
            return await self.wait_disk_ok(did)
        except BaseException:
            # We created it (our id), so removing a disk that never became usable is safe.
            with trio.move_on_after(CLEANUP_TIMEOUT_S) as scope:
                scope.shield = True
                try:
                    await self.call_once(
                        lambda c: c.system_service().disks_service().disk_service(did).remove(),
                        f"remove disk {did} after a failed create",
                    )
                    log.info("%s: removed the disk after the failed create", what)
                except EngineError as exc:
                    log.info("%s: could not remove the disk: %s", what, exc)
            raise

    async def update_disk_description(self, disk_id: str, description: str) -> t.Disk:
        """Set a disk's description (idempotent: the same update again is a no-op)."""
        body = sdk.Disk(description=description)
        updated = await self.call(
            lambda c: c.system_service().disks_service().disk_service(disk_id).update(body),
            f"set the description of disk {disk_id}",
        )
        return convert.disk(updated)

    async def wait_disk_ok(self, disk_id: str) -> t.Disk:
        """Poll a disk until ``ok``; ``illegal`` or disappearance raise ``EngineError``."""

        async def probe() -> t.Disk | None:
            try:
                disk = await self.get_disk(disk_id)
            except NotFound:
                raise EngineError(f"disk {disk_id} disappeared (creation failed)") from None
            if disk.status == "ok":
                return disk
            if disk.status == "illegal":
                raise EngineError(f"disk {disk_id} is illegal")
            return None

        return await self.wait(probe, f"wait for disk {disk_id} to be ok")

    async def remove_disk(self, disk_id: str) -> None:
        """Remove a disk and return once GET answers 404 (absent already is fine)."""
        await self.remove_retried(
            lambda c: c.system_service().disks_service().disk_service(disk_id).remove(),
            f"remove disk {disk_id}",
        )
        await self.wait_gone(lambda: self.get_disk(disk_id), f"disk {disk_id}")

    # -- VMs ------------------------------------------------------------------

    async def wait_vm_status(self, vm_id: str, wanted: set[str] | frozenset[str]) -> t.Vm:
        """Poll a VM until its status is one of ``wanted``."""

        async def probe() -> t.Vm | None:
            vm = await self.get_vm(vm_id)
            return vm if vm.status in wanted else None

        return await self.wait(probe, f"wait for vm {vm_id} to be {'/'.join(sorted(wanted))}")

    async def _create_vm(self, body: Any, what: str, name: str | None, **params: Any) -> t.Vm:
        async def attempt(n: int) -> t.Vm:
            if n > 0 and name:
                found = await self.find_vm(name)
                if found is not None:
                    log.info("%s: found vm %s after a lost response", what, found.id)
                    return found
            created = await self.call_once(lambda c: _vms(c).add(body, **params), what)
            return convert.vm(created)

        vm = await self.retried(attempt, what)
        if vm.status in _VM_BUSY or vm.status is None:
            vm = await self.wait_vm_status(vm.id, frozenset({"down", "up", "paused", "suspended"}))
        log.info("%s: vm %s is %s", what, vm.id, vm.status)
        return vm

    async def create_vm_from_ovf(
        self,
        *,
        ovf: str,
        cluster: str,
        name: str | None = None,
        regenerate_ids: bool = False,
        ovf_type: str = "ovf",
        comment: str = "",
    ) -> t.Vm:
        """Import a VM from its OVF (cluster by id or name); disks the OVF names that exist are attached.

        ``comment`` replaces the OVF's (restores mark what they create with it)."""
        body = sdk.Vm(
            cluster=_ref(sdk.Cluster, cluster),
            initialization=sdk.Initialization(
                configuration=sdk.Configuration(type=sdk.ConfigurationType(ovf_type), data=ovf),
                regenerate_ids=regenerate_ids,
            ),
        )
        if name:
            body.name = name
        if comment:
            body.comment = comment
        return await self._create_vm(body, f"create vm {name or '(from ovf)'} from ovf", name)

    async def create_vm(
        self,
        *,
        name: str,
        cluster: str,
        template: str = "Blank",
        memory: int | None = None,
        cpu_sockets: int | None = None,
        cpu_cores: int | None = None,
        cpu_threads: int | None = None,
        os_type: str | None = None,
        vm_type: str | None = None,
        description: str = "",
    ) -> t.Vm:
        """Create a plain VM from a template (by id or name; default Blank)."""
        body = sdk.Vm(
            name=name,
            cluster=_ref(sdk.Cluster, cluster),
            template=_ref(sdk.Template, template),
            description=description or None,
            memory=memory,
        )
        if cpu_sockets or cpu_cores or cpu_threads:
            body.cpu = sdk.Cpu(
                topology=sdk.CpuTopology(sockets=cpu_sockets, cores=cpu_cores, threads=cpu_threads)
            )
        if os_type:
            body.os = sdk.OperatingSystem(type=os_type)
        if vm_type:
            body.type = sdk.VmType(vm_type)
        return await self._create_vm(body, f"create vm {name!r}", name)

    async def attach_disk(
        self,
        vm_id: str,
        disk_id: str,
        *,
        interface: str = "virtio_scsi",
        bootable: bool = False,
        active: bool = True,
        pass_discard: bool | None = None,
        read_only: bool | None = None,
    ) -> t.DiskAttachment:
        """Attach an existing disk to a VM (a retry finds an attachment that already exists)."""
        what = f"attach disk {disk_id} to vm {vm_id}"
        body = sdk.DiskAttachment(
            disk=sdk.Disk(id=disk_id),
            interface=sdk.DiskInterface(interface),
            bootable=bootable,
            active=active,
            pass_discard=pass_discard,
            read_only=read_only,
        )

        def service(c: Any) -> Any:
            return _vms(c).vm_service(vm_id).disk_attachments_service()

        async def attempt(n: int) -> None:
            try:
                await self.call_once(lambda c: service(c).add(body), what)
            except Conflict:
                if n == 0:
                    raise
                log.info("%s: conflict on retry, checking whether the first try attached it", what)

        await self.retried(attempt, what)
        for att in await self.disk_attachments(vm_id):
            if att.disk.id == disk_id:
                return att
        raise EngineError(f"{what}: the attachment is missing after a successful attach")

    async def add_nic(
        self,
        vm_id: str,
        *,
        name: str,
        interface: str = "virtio",
        mac: str | None = None,
        vnic_profile_id: str | None = None,
    ) -> t.Nic:
        """Add a NIC (a retry finds a NIC of the same name first)."""
        what = f"add nic {name!r} to vm {vm_id}"
        body = sdk.Nic(name=name, interface=sdk.NicInterface(interface))
        if mac:
            body.mac = sdk.Mac(address=mac)
        if vnic_profile_id:
            body.vnic_profile = sdk.VnicProfile(id=vnic_profile_id)

        async def attempt(n: int) -> None:
            if n > 0 and any(nic.name == name for nic in await self.vm_nics(vm_id)):
                return
            await self.call_once(lambda c: _vms(c).vm_service(vm_id).nics_service().add(body), what)

        await self.retried(attempt, what)
        for nic in await self.vm_nics(vm_id):
            if nic.name == name:
                return nic
        raise EngineError(f"{what}: the nic is missing after a successful add")

    async def update_nic(
        self, vm_id: str, nic_id: str, *, mac: str | None = None, plugged: bool | None = None
    ) -> t.Nic:
        """Change a NIC's MAC and/or plug state (idempotent: the same update again is a no-op).

        The engine refuses a MAC change of a NIC plugged into a running VM: unplug it,
        change the MAC, plug it again (three calls).
        """
        what = f"update nic {nic_id} of vm {vm_id}"
        body = sdk.Nic()
        if mac is not None:
            body.mac = sdk.Mac(address=mac)
        if plugged is not None:
            body.plugged = plugged
        item = await self.call(
            lambda c: _vms(c).vm_service(vm_id).nics_service().nic_service(nic_id).update(body),
            what,
        )
        return (await self._nics([item]))[0]

    async def rename_vm(self, vm_id: str, name: str) -> t.Vm:
        """Give a VM a new name (idempotent)."""
        body = sdk.Vm(name=name)
        updated = await self.call(
            lambda c: _vms(c).vm_service(vm_id).update(body), f"rename vm {vm_id} to {name!r}"
        )
        return convert.vm(updated)

    async def update_vm_comment(self, vm_id: str, comment: str) -> t.Vm:
        """Set a VM's comment (idempotent)."""
        body = sdk.Vm(comment=comment)
        updated = await self.call(
            lambda c: _vms(c).vm_service(vm_id).update(body), f"set the comment of vm {vm_id}"
        )
        return convert.vm(updated)

    async def remove_vm(self, vm_id: str, *, detach_only: bool = False) -> None:
        """Remove a VM (with its disks unless ``detach_only``) and return once GET answers 404."""
        await self.remove_retried(
            lambda c: _vms(c).vm_service(vm_id).remove(detach_only=detach_only or None),
            f"remove vm {vm_id}",
        )
        await self.wait_gone(lambda: self.get_vm(vm_id), f"vm {vm_id}")

    async def _power_action(self, vm_id: str, action: str, done: frozenset[str]) -> None:
        """POST a power action; a retry that meets 409 is fine when the first try took effect."""
        what = f"{action} vm {vm_id}"

        async def attempt(n: int) -> None:
            try:
                await self.call_once(lambda c: getattr(_vms(c).vm_service(vm_id), action)(), what)
            except Conflict:
                if n == 0:
                    raise
                status = (await self.get_vm(vm_id)).status
                if status not in done:
                    raise
                log.info("%s: conflict on retry, vm is already %s", what, status)

        await self.retried(attempt, what)

    async def start_vm(self, vm_id: str, *, wait_up: bool = True) -> t.Vm:
        """Start a VM; with ``wait_up`` return once it is ``up``."""
        await self._power_action(
            vm_id, "start", frozenset({"wait_for_launch", "powering_up", "up"})
        )
        if not wait_up:
            return await self.get_vm(vm_id)
        return await self.wait_vm_status(vm_id, frozenset({"up"}))

    async def stop_vm(self, vm_id: str) -> t.Vm:
        """Power a VM off and return once it is ``down``."""
        await self._power_action(vm_id, "stop", frozenset({"powering_down", "down"}))
        return await self.wait_vm_status(vm_id, frozenset({"down"}))

    # -- templates ------------------------------------------------------------

    async def create_template_from_ovf(
        self,
        *,
        ovf: str,
        cluster: str,
        name: str | None = None,
        ovf_type: str = "ovf",
        comment: str = "",
    ) -> t.Template:
        """Import a template from its OVF and return it once ``ok`` (``comment``: as for a VM)."""
        what = f"create template {name or '(from ovf)'} from ovf"
        body = sdk.Template(
            cluster=_ref(sdk.Cluster, cluster),
            initialization=sdk.Initialization(
                configuration=sdk.Configuration(type=sdk.ConfigurationType(ovf_type), data=ovf)
            ),
        )
        if name:
            body.name = name
        if comment:
            body.comment = comment

        async def attempt(n: int) -> t.Template:
            if n > 0 and name:
                for tpl in await self.list_templates():
                    if tpl.name == name:
                        return tpl
            created = await self.call_once(
                lambda c: c.system_service().templates_service().add(body), what
            )
            return convert.template(created)

        tpl = await self.retried(attempt, what)

        async def probe() -> t.Template | None:
            current = await self.get_template(tpl.id)
            if current.status == "illegal":
                raise EngineError(f"{what}: template {tpl.id} is illegal")
            return current if current.status in ("ok", None) else None

        return await self.wait(probe, f"wait for template {tpl.id} to be ok")

    async def create_template(
        self, vm_id: str, *, name: str, description: str = "", comment: str = ""
    ) -> t.Template:
        """Make template ``name`` from VM ``vm_id`` (which must be down); return it once ``ok``.

        A retry after a lost response first looks for a template of that name.
        If the template never gets ``ok`` (illegal, gone, timeout, cancel) it is
        removed, best effort, and the error re-raised.
        """
        what = f"create template {name!r} from vm {vm_id}"
        body = sdk.Template(
            name=name, description=description or None, comment=comment or None, vm=sdk.Vm(id=vm_id)
        )

        async def find() -> t.Template | None:
            return next((x for x in await self.list_templates() if x.name == name), None)

        async def attempt(n: int) -> t.Template:
            if n > 0:
                found = await find()
                if found is not None:
                    log.info("%s: found template %s after a lost response", what, found.id)
                    return found
            created = await self.call_once(
                lambda c: c.system_service().templates_service().add(body), what
            )
            return convert.template(created)

        tpl = await self.retried(attempt, what)

        async def probe() -> t.Template | None:
            try:
                current = await self.get_template(tpl.id)
            except NotFound:
                raise EngineError(f"{what}: template {tpl.id} disappeared") from None
            if current.status == "illegal":
                raise EngineError(f"{what}: template {tpl.id} is illegal")
            return current if current.status in ("ok", None) else None

        try:
            done = await self.wait(probe, f"wait for template {tpl.id} to be ok")
        except BaseException:
            with trio.move_on_after(CLEANUP_TIMEOUT_S) as scope:
                scope.shield = True
                try:
                    await self.remove_template(tpl.id)
                except Exception as e:  # cleanup is best effort; the first error wins
                    log.warning("%s: could not remove template %s: %s", what, tpl.id, e)
            raise
        log.info("%s: template %s is ok", what, done.id)
        return done

    async def update_template_comment(self, template_id: str, comment: str) -> t.Template:
        """Set a template's comment (idempotent)."""
        body = sdk.Template(comment=comment)
        updated = await self.call(
            lambda c: (
                c.system_service().templates_service().template_service(template_id).update(body)
            ),
            f"set the comment of template {template_id}",
        )
        return convert.template(updated)

    async def remove_template(self, template_id: str) -> None:
        """Remove a template and return once GET answers 404 (absent already is fine)."""
        await self.remove_retried(
            lambda c: c.system_service().templates_service().template_service(template_id).remove(),
            f"remove template {template_id}",
        )
        await self.wait_gone(lambda: self.get_template(template_id), f"template {template_id}")
