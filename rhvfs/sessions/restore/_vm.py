"""The last step of a restore: the VM (or template) made from a complete set.

Owns the engine calls after every disk is uploaded: importing the OVF without
its devices, attaching the uploaded disks, adding NICs, making a template,
powering on, and, for ``vm_force_overwrite``, replacing the original VM only
once all of that succeeded (the protocol and its reasons are in
``rhvfs.sessions.restore._overwrite``: the new VM is built under a temporary
name with a new id, NICs owed a MAC the original holds get a pool MAC until
it is removed). It gets everything as a frozen ``VmPlan``; what it creates
goes into the ``Created`` ledger right after the engine call returns, so a
failure can be rolled back, and the restored VM's id into
``Created.restored_vm``.

Must not: touch files or FUSE; decide when a set is complete (the session
does); change the session's state.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable

from rhvfs.backupset import (
    Manifest,
    ManifestDisk,
    OvfInfo,
    parse_ovf,
    set_disk_flags,
    strip_devices,
    synthesize_ovf,
)
from rhvfs.engine.types import Vm
from rhvfs.errors import Conflict, NotFound, RestoreFailed, RestoreUnsupported
from rhvfs.sessions.restore import _overwrite as overwrite
from rhvfs.sessions.restore._options import RestoreOptions, wanted_mac
from rhvfs.sessions.restore._overwrite import MacMove
from rhvfs.sessions.restore._ports import RestoreEngine
from rhvfs.sessions.restore._rollback import Created


@dataclasses.dataclass(frozen=True)
class UploadedDisk:
    """A disk of the set and the engine disk its upload filled."""

    set_disk: ManifestDisk
    disk_id: str


@dataclasses.dataclass(frozen=True)
class VmPlan:
    """Everything the build needs, fixed when the set is complete."""

    name: str  # of the VM or template to make
    manifest: Manifest
    options: RestoreOptions
    ovf: bytes
    ovf_info: OvfInfo
    disks: tuple[UploadedDisk, ...]  # the uploaded disks, in the set's order
    overwrite_vm: Vm | None  # the VM to replace (checked down again first)


async def import_template(
    engine: RestoreEngine,
    plan: VmPlan,
    ovf: bytes,
    ovf_info: OvfInfo,
    cluster: str,
    *,
    created: Created,
    note: Callable[[str], None],
) -> None:
    """A template set: import the template from its OVF, naming the uploaded disks.

    The OVF's disk references are rewritten to the disks this restore created
    (new ids when the originals still exist), and the template id to a fresh one
    when the original id is taken, so the engine attaches exactly our disks.
    """
    name = plan.name
    text = ovf.decode("utf-8").rstrip()
    uploaded = plan.disks
    for d in uploaded:
        text = text.replace(d.set_disk.id, d.disk_id)
    opts = plan.options
    flags = {}
    for d in uploaded:
        sd = d.set_disk
        iface = opts.disk_interface.get(sd.id, sd.alias) or sd.interface or "virtio_scsi"
        boot = opts.disk_boot.get(sd.id, sd.alias)
        active = opts.disk_active.get(sd.id, sd.alias)
        flags[d.disk_id] = (
            iface,
            sd.bootable if boot is None else boot,
            sd.active if active is None else active,
        )
    text = set_disk_flags(text, flags)  # the options apply to template disks too
    old_id = ovf_info.vm_id
    if old_id and any(t.id == old_id for t in await engine.list_templates()):
        text = text.replace(old_id, str(uuid.uuid4()))
    tpl = await engine.create_template_from_ovf(ovf=text, cluster=cluster, name=name)
    created.template = tpl.id
    attached = {a.disk.id for a in await engine.template_disk_attachments(tpl.id)}
    missing = [d.set_disk.alias for d in uploaded if d.disk_id not in attached]
    if missing:
        raise RestoreFailed(
            f"template {name}: the engine did not attach disk(s) {', '.join(missing)}"
        )
    note(f"created template {name} ({tpl.id}) with {len(attached)} disk(s)")
    created.disks.clear()  # they belong to the template now


async def _add_nics(
    engine: RestoreEngine,
    vm_id: str,
    plan: VmPlan,
    *,
    held: frozenset[str],
    note: Callable[[str], None],
) -> tuple[MacMove, ...]:
    """Add the set's NICs with the MACs the options ask; a wanted MAC in ``held`` (the
    VM an overwrite replaces holds it) gets a pool MAC now and a ``MacMove``."""
    opts = plan.options
    moves: list[MacMove] = []
    for index, nic in enumerate(plan.manifest.nics):
        mac, strict = wanted_mac(opts, index, name=nic.name, nic_id=nic.id, set_mac=nic.mac)
        owed = mac if mac is not None and mac.lower() in held else None
        if owed is not None:
            mac = None
        try:
            added = await engine.add_nic(
                vm_id,
                name=nic.name,
                interface=nic.interface or "virtio",
                mac=mac,
                vnic_profile_id=nic.vnic_profile_id,
            )
        except Conflict as e:
            if strict or mac is None:
                raise
            note(f"nic {nic.name}: MAC {mac} is in use ({e.detail}); using a new one")
            added = await engine.add_nic(
                vm_id,
                name=nic.name,
                interface=nic.interface or "virtio",
                mac=None,
                vnic_profile_id=nic.vnic_profile_id,
            )
        if owed is not None:
            moves.append(MacMove(added.id, nic.name, owed))
            note(
                f"nic {nic.name}: MAC {owed} is held by the replaced vm; "
                f"{added.mac} until that vm is removed"
            )
    return tuple(moves)


async def create_vm(
    engine: RestoreEngine, plan: VmPlan, *, created: Created, note: Callable[[str], None]
) -> None:
    """Create the VM of a complete set (see ``rhvfs.sessions.restore._session``), or its
    template; with an overwrite, replace the original only once the new VM is complete
    (``rhvfs.sessions.restore._overwrite``). On success ``created`` holds nothing to roll
    back any more."""
    m = plan.manifest
    opts = plan.options
    name = plan.name
    ovf, ovf_info = plan.ovf, plan.ovf_info
    if ovf_info.placeholder:
        ovf = synthesize_ovf(m).encode()
        ovf_info = parse_ovf(ovf)
        note("vm.ovf is rhvfs's no-OVF placeholder: using one built from manifest.json")
    original = None
    if plan.overwrite_vm is not None:
        original = await overwrite.begin(engine, plan.overwrite_vm, name=name, note=note)
    cluster = opts.cluster or m.cluster_id or m.cluster_name
    clusters = await engine.list_clusters()
    if not any(cluster in (c.id, c.name) for c in clusters) and m.cluster_name:
        cluster = m.cluster_name
    assert cluster is not None
    if m.kind == "template":
        await import_template(engine, plan, ovf, ovf_info, cluster, created=created, note=note)
        return
    regenerate = False
    if ovf_info.vm_id:
        try:
            await engine.get_vm(ovf_info.vm_id)
            regenerate = True
        except NotFound:
            regenerate = False
    vm_name = overwrite.build_name(name) if original is not None else name
    vm = await engine.create_vm_from_ovf(
        ovf=strip_devices(ovf), cluster=cluster, name=vm_name, regenerate_ids=regenerate
    )
    created.vm = vm.id
    note(f"created vm {vm_name} ({vm.id}){' with new ids' if regenerate else ''}")
    if original is not None:
        note(
            f"it replaces vm {name} ({original.id}) once complete; it keeps its new id "
            f"{vm.id} (the replaced vm's id is in use until then)"
        )
    for d in plan.disks:
        sdk = d.set_disk
        iface = opts.disk_interface.get(sdk.id, sdk.alias) or sdk.interface or "virtio_scsi"
        boot = opts.disk_boot.get(sdk.id, sdk.alias)
        active = opts.disk_active.get(sdk.id, sdk.alias)
        await engine.attach_disk(
            vm.id,
            d.disk_id,
            interface=iface,
            bootable=sdk.bootable if boot is None else boot,
            active=sdk.active if active is None else active,
        )
    held = original.macs if original is not None else frozenset()
    moves = await _add_nics(engine, vm.id, plan, held=held, note=note)
    note(f"attached {len(plan.disks)} disk(s), added {len(m.nics)} nic(s)")
    if opts.template_name is not None:
        tname = opts.template_name
        from_vm = getattr(engine, "create_template", None)
        if from_vm is None:
            raise RestoreUnsupported(
                "this engine facade cannot make a template from a VM (no create_template)"
            )
        tpl = await from_vm(vm_id=vm.id, name=tname)
        created.template = tpl.id
        note(f"created template {tname} ({tpl.id})")
        if opts.remove_base_vm:
            await engine.remove_vm(vm.id)
            created.vm = None
            note(f"removed the base vm {vm.id}")
        else:
            created.restored_vm = vm.id
    else:
        created.restored_vm = vm.id
    if opts.vm_switchon and created.restored_vm is not None:
        await engine.start_vm(created.restored_vm)
        note(f"started vm {created.restored_vm}")
    if original is not None:
        await overwrite.replace(
            engine,
            original,
            created=created,
            vm_id=created.restored_vm,
            temp_name=vm_name,
            moves=moves,
            note=note,
        )
    created.vm = None  # success: nothing to roll back any more
    created.disks.clear()
