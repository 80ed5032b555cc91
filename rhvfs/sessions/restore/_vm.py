"""The last step of a restore: the VM (or template) made from a complete set.

Owns the engine calls after every disk is uploaded: replacing an overwritten
VM, importing the OVF without its devices, attaching the uploaded disks,
adding NICs, making a template, powering on. What it creates is recorded on
the session (``created_vm``, ``template_id``) so a failure can be rolled back.

Must not: touch files or FUSE; decide when a set is complete (``restore``).
"""

from __future__ import annotations

import errno
import uuid
from typing import TYPE_CHECKING

from rhvfs.backupset import parse_ovf, set_disk_flags, strip_devices, synthesize_ovf
from rhvfs.errors import Conflict, NotFound
from rhvfs.sessions.restore._ports import restore_error

if TYPE_CHECKING:
    from rhvfs.sessions.restore._session import RestoreSession


async def import_template(session: RestoreSession, name: str, cluster: str) -> None:
    """A template set: import the template from its OVF, naming the uploaded disks.

    The OVF's disk references are rewritten to the disks this restore created
    (new ids when the originals still exist), and the template id to a fresh one
    when the original id is taken, so the engine attaches exactly our disks.
    """
    engine = session.manager.engine
    assert session.ovf is not None and session.ovf_info is not None
    text = session.ovf.decode("utf-8").rstrip()
    uploaded = [d for d in session.disks.values() if d.state == "uploaded" and d.disk_id]
    for d in uploaded:
        assert d.disk_id is not None
        text = text.replace(d.set_disk.id, d.disk_id)
    opts = session.options
    assert opts is not None
    flags = {}
    for d in uploaded:
        assert d.disk_id is not None
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
    old_id = session.ovf_info.vm_id
    if old_id and any(t.id == old_id for t in await engine.list_templates()):
        text = text.replace(old_id, str(uuid.uuid4()))
    tpl = await engine.create_template_from_ovf(ovf=text, cluster=cluster, name=name)
    session.template_id = tpl.id
    attached = {a.disk.id for a in await engine.template_disk_attachments(tpl.id)}
    missing = [d.set_disk.alias for d in uploaded if d.disk_id not in attached]
    if missing:
        raise restore_error(
            f"template {name}: the engine did not attach disk(s) {', '.join(missing)}"
        )
    session.note(f"created template {name} ({tpl.id}) with {len(attached)} disk(s)")
    session.created_disks.clear()  # they belong to the template now


async def create_vm(session: RestoreSession) -> None:
    """Create the VM of a complete set (see ``rhvfs.sessions.restore._session``), or its template."""
    engine = session.manager.engine
    m = session.manifest
    opts = session.options
    assert (
        m is not None
        and opts is not None
        and session.ovf is not None
        and session.ovf_info is not None
    )
    name = session.target_name or session.name
    if session.ovf_info.placeholder:
        session.ovf = synthesize_ovf(m).encode()
        session.ovf_info = parse_ovf(session.ovf)
        session.note("vm.ovf is rhvfs's no-OVF placeholder: using one built from manifest.json")
    if session.overwrite_vm is not None:
        current = await engine.get_vm(session.overwrite_vm.id)
        if current.status != "down":
            raise restore_error(
                f"VM {name!r} is {current.status} now; not replacing it", errno.EBUSY
            )
        await engine.remove_vm(current.id)
        session.note(f"removed the replaced vm {current.id}")
    cluster = opts.cluster or m.cluster_id or m.cluster_name
    clusters = await engine.list_clusters()
    if not any(cluster in (c.id, c.name) for c in clusters) and m.cluster_name:
        cluster = m.cluster_name
    assert cluster is not None
    if m.kind == "template":
        await import_template(session, name, cluster)
        return
    regenerate = False
    if session.ovf_info.vm_id:
        try:
            await engine.get_vm(session.ovf_info.vm_id)
            regenerate = True
        except NotFound:
            regenerate = False
    vm_name = name
    vm = await engine.create_vm_from_ovf(
        ovf=strip_devices(session.ovf), cluster=cluster, name=vm_name, regenerate_ids=regenerate
    )
    session.created_vm = vm.id
    session.note(f"created vm {vm_name} ({vm.id}){' with new ids' if regenerate else ''}")
    for d in session.disks.values():
        if d.state != "uploaded" or d.disk_id is None:
            continue
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
    for nic in m.nics:
        strict = opts.nics == "original"
        if opts.nics == "new":
            mac = None
        elif opts.nics == "explicit":
            explicit = opts.nic_macs.get(nic.name) or (
                opts.nic_macs.get(nic.id) if nic.id else None
            )
            mac, strict = (explicit, True) if explicit else (nic.mac, False)
        else:
            mac = nic.mac
        try:
            await engine.add_nic(
                vm.id,
                name=nic.name,
                interface=nic.interface or "virtio",
                mac=mac,
                vnic_profile_id=nic.vnic_profile_id,
            )
        except Conflict as e:
            if strict or mac is None:
                raise
            session.note(f"nic {nic.name}: MAC {mac} is in use ({e.detail}); using a new one")
            await engine.add_nic(
                vm.id,
                name=nic.name,
                interface=nic.interface or "virtio",
                mac=None,
                vnic_profile_id=nic.vnic_profile_id,
            )
    session.note(
        f"attached {sum(d.state == 'uploaded' for d in session.disks.values())} disk(s), added {len(m.nics)} nic(s)"
    )
    if opts.template_name is not None:
        tname = opts.template_name
        from_vm = getattr(engine, "create_template", None)
        if from_vm is None:
            raise restore_error(
                "this engine facade cannot make a template from a VM (no create_template)",
                errno.ENOTSUP,
            )
        tpl = await from_vm(vm_id=vm.id, name=tname)
        session.template_id = tpl.id
        session.note(f"created template {tname} ({tpl.id})")
        if opts.remove_base_vm:
            await engine.remove_vm(vm.id)
            session.created_vm = None
            session.note(f"removed the base vm {vm.id}")
        else:
            session.vm_id = vm.id
    else:
        session.vm_id = vm.id
    if opts.vm_switchon and session.vm_id is not None:
        await engine.start_vm(session.vm_id)
        session.note(f"started vm {session.vm_id}")
    session.created_vm = None  # success: nothing to roll back any more
    session.created_disks.clear()
