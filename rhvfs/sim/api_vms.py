"""REST resources for VMs and what hangs off them: disk attachments, NICs, tags.

Owns VM create (plain, from a template, from an OVF configuration), update,
remove, the power actions with their status machine, and the sub-collections
`diskattachments`, `nics`, `tags` (plus empty `permissions`, `statistics`,
`reporteddevices`). Each resource has its handlers (plain functions of the
`Engine` and the request) and a route table; `ROUTES` is all of them.
Snapshots, backups and checkpoints live in their own modules.
"""

from __future__ import annotations

import functools
import logging
import random

from ovirtsdk4 import types

from rhvfs.sim import api_disks, api_ovf, disk_copy, follow, xmlio
from rhvfs.sim import api_types as conv
from rhvfs.sim.api_base import (
    Engine,
    action_done,
    by_id_or_name,
    check_disk_unlocked,
    get_or_404,
    href,
    parse_body,
    search,
)
from rhvfs.sim.httpd import Request, Response, Route, bad_request, conflict, xml
from rhvfs.sim.state import (
    ZERO_ID,
    Attachment,
    Disk,
    Nic,
    Snapshot,
    Vm,
    new_id,
    now_iso,
)

log = logging.getLogger(__name__)

# action -> (allowed from, intermediate statuses, final status)
_POWER: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "start": (("down", "suspended", "paused"), ("wait_for_launch", "powering_up"), "up"),
    "stop": (
        (
            "up",
            "paused",
            "suspended",
            "powering_up",
            "wait_for_launch",
            "reboot_in_progress",
            "powering_down",
        ),
        (),
        "down",
    ),
    "shutdown": (("up", "paused", "powering_up", "reboot_in_progress"), ("powering_down",), "down"),
    "suspend": (("up",), ("saving_state",), "suspended"),
    "reboot": (("up",), ("reboot_in_progress",), "up"),
}


def new_mac(e: Engine) -> str:
    used = {n.mac for v in e.state.vms.values() for n in v.nics}
    rng = random.Random()
    while True:
        mac = "56:6f:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(4))
        if mac not in used:
            return mac


def make_vm(
    e: Engine, *, name: str, cluster_id: str, vm_id: str | None = None, **fields: object
) -> Vm:
    """Add a VM record with its `Active VM` snapshot (caller holds the lock)."""
    st = e.state
    vm_id = vm_id or new_id()
    active = Snapshot(
        id=new_id(),
        vm_id=vm_id,
        description="Active VM",
        date=now_iso(),
        status="ok",
        type="active",
    )
    vm = Vm(
        id=vm_id,
        name=name,
        cluster_id=cluster_id,
        active_snapshot_id=active.id,
        creation_time=now_iso(),
        snapshot_ids=[active.id],
        **fields,  # type: ignore[arg-type]
    )
    st.snapshots[active.id] = active
    st.vms[vm.id] = vm
    return vm


def attach_disk(e: Engine, vm: Vm, disk: Disk, att: Attachment) -> None:
    other = e.state.vm_of_disk(disk.id)
    if other is not None and not disk.shareable:
        raise conflict(
            f"Cannot attach Virtual Disk. Disk {disk.alias} is attached to VM {other.name}."
        )
    vm.attachments.append(att)
    disk.active.snapshot_id = vm.active_snapshot_id


def _host_for(e: Engine, vm: Vm) -> str | None:
    dc_id = e.state.clusters[vm.cluster_id].dc_id
    for h in e.state.hosts.values():
        if h.status == "up" and e.state.clusters[h.cluster_id].dc_id == dc_id:
            return h.id
    return next(iter(e.state.hosts), None)


def _power_step(e: Engine, vm_id: str, statuses: list[str]) -> None:
    with e.state.lock:
        vm = e.state.vms.get(vm_id)
        if vm is None:
            return
        _set_status(e, vm, statuses[0])
        if len(statuses) > 1:
            e.tasks.step(_power_step, e, vm_id, statuses[1:])
        e.save()


def _set_status(e: Engine, vm: Vm, status: str) -> None:
    vm.status = status
    if status == "up":
        vm.start_time = vm.start_time or now_iso()
        vm.host_id = vm.host_id or _host_for(e, vm)
    elif status == "down":
        vm.stop_time = now_iso()
        vm.start_time = None
        vm.host_id = None


def power_action(e: Engine, vm: Vm, name: str) -> None:
    allowed, steps, final = _POWER[name]
    if vm.status not in allowed:
        raise conflict(f"Cannot {name} VM. VM {vm.name} is {vm.status}.")
    if name == "start":
        for a in vm.attachments:
            d = e.state.disks.get(a.disk_id)
            if d is not None and d.status != "ok":
                raise conflict(f"Cannot run VM. Disk {d.alias} is {d.status}.")
        if vm.status == "down":
            vm.start_time = None
    e.tasks.step(_power_step, e, vm.id, [*steps, final], delay_s=0)
    log.info("vm %s: %s", vm.id, name)


def _clone_from_snapshot(e: Engine, body: types.Vm) -> Vm:
    """`<vm><name/><cluster/><snapshots><snapshot id=S/></snapshots></vm>` (caller holds the lock)."""
    st = e.state
    snap_id = body.snapshots[0].id
    snap = st.snapshots.get(snap_id or "")
    if snap is None or snap.type == "active":
        raise bad_request(f"Snapshot {snap_id} not found", reason="Entity not found")
    if snap.status != "ok":
        raise conflict(f"Cannot add VM. Snapshot {snap.description} is {snap.status}.")
    source = st.vms[snap.vm_id]
    cluster = by_id_or_name(st.clusters, body.cluster, "cluster")
    vm = make_vm(
        e,
        name=body.name,
        cluster_id=cluster.id,
        description=body.description or "",
        template_id=source.template_id,
        memory_bytes=source.memory_bytes,
        cpu_sockets=source.cpu_sockets,
        cpu_cores=source.cpu_cores,
        os_type=source.os_type,
        vm_type=source.vm_type,
    )
    sources = []
    for a in source.attachments:
        d = st.disks.get(a.disk_id)
        vol = next((v for v in d.volumes if v.snapshot_id == snap.id), None) if d else None
        if d is not None and vol is not None:
            check_disk_unlocked(d)
            sources.append((a, d, vol.id))
    disk_copy.copy_disks(e, vm, sources, source_snapshot_id=snap.id)
    for n in source.nics:
        vm.nics.append(
            Nic(
                id=new_id(),
                name=n.name,
                mac=new_mac(e),
                vnic_profile_id=n.vnic_profile_id,
                interface=n.interface,
            )
        )
    log.info("vm %s cloned from snapshot %s of vm %s", vm.id, snap.id, source.id)
    return vm


def _import_configuration(e: Engine, body: types.Vm, req: Request) -> Vm:
    st = e.state
    config = body.initialization.configuration
    if config.data is None:
        raise bad_request("Vm [initialization.configuration.data] required")
    try:
        ovf = api_ovf.parse_ovf(config.data)
    except ValueError as err:
        raise bad_request(f"Cannot parse the OVF: {err}", reason="Invalid value") from err
    regenerate = bool(body.initialization.regenerate_ids)
    vm_id = None if regenerate or not ovf.vm_id else ovf.vm_id
    if vm_id is not None and vm_id in st.vms:
        raise conflict(f"Cannot import VM. VM id {vm_id} already exists.")
    name = body.name or ovf.name
    if not name:
        raise bad_request("Vm [name] required for add")
    if any(v.name == name for v in st.vms.values()):
        raise conflict("Cannot add VM. The VM name is already in use.")
    cluster = by_id_or_name(st.clusters, body.cluster, "cluster")
    # the engine's ImportVmCommand: a VM on a template this engine does not have is refused
    template_id = ovf.template_id or ZERO_ID
    if template_id != ZERO_ID and template_id not in st.templates:
        raise conflict("Cannot import VM. The relevant Template doesn't exist.")
    vm = make_vm(
        e,
        name=name,
        cluster_id=cluster.id,
        vm_id=vm_id,
        template_id=template_id,
        description=body.description if body.description is not None else ovf.description,
        # the engine maps the request's fields over the OVF's
        comment=body.comment if body.comment is not None else ovf.comment,
        memory_bytes=body.memory or ovf.memory_bytes or 1024**3,
        cpu_sockets=ovf.cpu_sockets or 1,
        cpu_cores=ovf.cpu_cores or 1,
        os_type=ovf.os_type or "other_linux",
    )
    for od in ovf.disks:
        d = st.disks.get(od.disk_id)
        if d is None:
            st.add_event(
                f"VM {name}: disk {od.disk_id} of the configuration does not exist, skipped.",
                severity="warning",
                vm_id=vm.id,
            )
            continue
        if st.vm_of_disk(d.id) is not None and st.vm_of_disk(d.id) is not vm:
            st.add_event(
                f"VM {name}: disk {d.id} is attached elsewhere, skipped.",
                severity="warning",
                vm_id=vm.id,
            )
            continue
        attach_disk(
            e,
            vm,
            d,
            Attachment(
                disk_id=d.id,
                interface=od.interface,
                bootable=od.bootable,
                active=od.active,
                read_only=od.read_only,
            ),
        )
    used = {n.mac for v in st.vms.values() for n in v.nics}
    for on in ovf.nics:
        profile = next((p for p in st.vnic_profiles.values() if p.name == on.network), None)
        mac = on.mac if on.mac and on.mac not in used else new_mac(e)
        vm.nics.append(
            Nic(
                id=new_id(),
                name=on.name,
                mac=mac,
                vnic_profile_id=profile.id if profile else None,
                interface=on.interface,
            )
        )
        used.add(mac)
    st.add_event(f"VM {name} was imported from a configuration.", vm_id=vm.id)
    return vm


def _all_content(req: Request) -> bool:
    return req.flag("all_content") or req.headers.get("all-content", "").lower() == "true"


# /vms


def list_vms(e: Engine, req: Request) -> Response:
    st = e.state
    with st.lock:
        fields = {
            "name": lambda v: v.name,
            "id": lambda v: v.id,
            "status": lambda v: v.status,
            "description": lambda v: v.description,
            "cluster": lambda v: st.clusters[v.cluster_id].name,
            "host": lambda v: st.hosts[v.host_id].name if v.host_id in st.hosts else None,
            "tag": lambda v: [st.tags[t].name for t in v.tag_ids if t in st.tags],
            "datacenter": lambda v: st.datacenters[st.clusters[v.cluster_id].dc_id].name,
        }
        found = search(req, sorted(st.vms.values(), key=lambda v: v.name), fields)
        ac = _all_content(req)
        items = [conv.vm(e, v, all_content=ac) for v in found]
        follow.apply(e, req, items)
        return xml(xmlio.render_list(items, "vms"))


def get_vm(e: Engine, req: Request, vm: str) -> Response:
    with e.state.lock:
        item = conv.vm(e, get_or_404(e.state.vms, vm), all_content=_all_content(req))
        follow.apply(e, req, [item])
        return xml(xmlio.render(item))


def add_vm(e: Engine, req: Request) -> Response:
    st = e.state
    body = parse_body(req, types.Vm)
    with st.lock:
        if (
            body.initialization is not None
            and body.initialization.configuration is not None
            and body.initialization.configuration.data
        ):
            vm = _import_configuration(e, body, req)
            e.save()
            return xml(xmlio.render(conv.vm(e, vm)), status=201, Location=href("vms", vm.id))
        if not body.name or body.cluster is None:
            raise bad_request("Vm [name, cluster] required for add")
        if any(v.name == body.name for v in st.vms.values()):
            raise conflict("Cannot add VM. The VM name is already in use.")
        if body.snapshots:
            vm = _clone_from_snapshot(e, body)
            e.save()
            return xml(xmlio.render(conv.vm(e, vm)), status=202, Location=href("vms", vm.id))
        cluster = by_id_or_name(st.clusters, body.cluster, "cluster")
        template_id = ZERO_ID
        if body.template is not None and (body.template.id or body.template.name):
            if body.template.id == ZERO_ID or body.template.name == "Blank":
                template_id = ZERO_ID
            else:
                template_id = by_id_or_name(st.templates, body.template, "template").id
        elif body.template is None:
            raise bad_request("Vm [template] required for add")
        topo = body.cpu.topology if body.cpu is not None and body.cpu.topology is not None else None
        vm = make_vm(
            e,
            name=body.name,
            cluster_id=cluster.id,
            description=body.description or "",
            comment=body.comment or "",
            template_id=template_id,
            memory_bytes=body.memory or 1024**3,
            cpu_sockets=(topo.sockets if topo and topo.sockets else 1),
            cpu_cores=(topo.cores if topo and topo.cores else 1),
            os_type=(body.os.type if body.os is not None and body.os.type else "other_linux"),
            vm_type=(body.type.value if body.type is not None else "server"),
        )
        if template_id != ZERO_ID:
            disk_copy.copy_template_disks(e, vm, template_id)
            t = st.templates[template_id]
            for n in t.nics:
                vm.nics.append(
                    Nic(
                        id=new_id(),
                        name=n.name,
                        mac=new_mac(e),
                        vnic_profile_id=n.vnic_profile_id,
                    )
                )
        e.save()
        status = 202 if vm.status == "image_locked" else 201
        return xml(xmlio.render(conv.vm(e, vm)), status=status, Location=href("vms", vm.id))


def update_vm(e: Engine, req: Request, vm: str) -> Response:
    st = e.state
    body = parse_body(req, types.Vm)
    with st.lock:
        v = get_or_404(st.vms, vm)
        if body.name and body.name != v.name:
            if any(o.name == body.name for o in st.vms.values()):
                raise conflict("Cannot edit VM. The VM name is already in use.")
            v.name = body.name
        if body.description is not None:
            v.description = body.description
        if body.comment is not None:
            v.comment = body.comment
        if body.memory:
            v.memory_bytes = body.memory
        if body.cpu is not None and body.cpu.topology is not None:
            v.cpu_sockets = body.cpu.topology.sockets or v.cpu_sockets
            v.cpu_cores = body.cpu.topology.cores or v.cpu_cores
        e.save()
        return xml(xmlio.render(conv.vm(e, v)))


def remove_vm(e: Engine, req: Request, vm: str) -> Response:
    st = e.state
    with st.lock:
        v = get_or_404(st.vms, vm)
        if v.status != "down":
            raise conflict(f"Cannot remove VM. VM {v.name} is running.")
        for b in st.backups.values():
            if b.vm_id == v.id and b.phase not in ("succeeded", "failed"):
                raise conflict(f"Cannot remove VM. Backup {b.id} is in progress.")
        disks = [st.disks[a.disk_id] for a in v.attachments if a.disk_id in st.disks]
        for d in disks:
            check_disk_unlocked(d)
        if any(st.snapshots[s].status == "locked" for s in v.snapshot_ids if s in st.snapshots):
            # A clone from one of its snapshots is running.
            raise conflict(
                f"Cannot remove VM. Snapshot is currently being created or removed for VM {v.name}."
            )
        detach_only = req.flag("detach_only")
        for sid in v.snapshot_ids:
            st.snapshots.pop(sid, None)
        for c in [c for c in st.checkpoints.values() if c.vm_id == v.id]:
            del st.checkpoints[c.id]
        del st.vms[v.id]
        for d in disks:
            if detach_only:
                for vol in d.volumes:
                    vol.snapshot_id = None
            else:
                api_disks.drop_disk(e, d)
        e.save()
    return xml(action_done())


VMS: tuple[Route, ...] = (
    Route("GET", "/vms", list_vms),
    Route("POST", "/vms", add_vm),
    Route("GET", "/vms/{vm}", get_vm),
    Route("PUT", "/vms/{vm}", update_vm),
    Route("DELETE", "/vms/{vm}", remove_vm),
)


# /vms/{vm}/<action>


def vm_power_action(e: Engine, req: Request, vm: str, *, action: str) -> Response:
    with e.state.lock:
        v = get_or_404(e.state.vms, vm)
        power_action(e, v, action)
        e.save()
    return xml(action_done())


def vm_noop_action(e: Engine, req: Request, vm: str) -> Response:
    """Actions the simulator accepts and ignores (guest filesystem freeze/thaw)."""
    with e.state.lock:
        get_or_404(e.state.vms, vm)
    return xml(action_done())


VM_ACTIONS: tuple[Route, ...] = (
    *(
        Route("POST", f"/vms/{{vm}}/{name}", functools.partial(vm_power_action, action=name))
        for name in _POWER
    ),
    Route("POST", "/vms/{vm}/freezefilesystems", vm_noop_action),
    Route("POST", "/vms/{vm}/thawfilesystems", vm_noop_action),
)


# /vms/{vm}/diskattachments


def _attachment(v: Vm, att: str) -> Attachment:
    a = v.attachment(att)
    if a is None:
        raise get_or_404({}, att)
    return a


def list_attachments(e: Engine, req: Request, vm: str) -> Response:
    with e.state.lock:
        v = get_or_404(e.state.vms, vm)
        items = [conv.attachment(e, "vms", v.id, a) for a in v.attachments]
        follow.apply(e, req, items)
        return xml(xmlio.render_list(items, "disk_attachments"))


def get_attachment(e: Engine, req: Request, vm: str, att: str) -> Response:
    with e.state.lock:
        v = get_or_404(e.state.vms, vm)
        item = conv.attachment(e, "vms", v.id, _attachment(v, att))
        follow.apply(e, req, [item])
        return xml(xmlio.render(item))


def add_attachment(e: Engine, req: Request, vm: str) -> Response:
    st = e.state
    body = parse_body(req, types.DiskAttachment)
    with st.lock:
        v = get_or_404(st.vms, vm)
        if body.interface is None:
            raise bad_request("DiskAttachment [interface] required for add")
        if body.disk is None:
            raise bad_request("DiskAttachment [disk] required for add")
        att = Attachment(
            disk_id="",
            interface=body.interface.value,
            bootable=bool(body.bootable),
            active=True if body.active is None else bool(body.active),
            read_only=bool(body.read_only),
            pass_discard=bool(body.pass_discard),
        )
        if body.disk.id and body.disk.id in st.disks:
            if body.disk.snapshot is not None:
                raise conflict("Cannot attach a disk snapshot: not supported by the simulator.")
            d = st.disks[body.disk.id]
            att.disk_id = d.id
            attach_disk(e, v, d, att)
        else:
            d = api_disks.create_disk(e, body.disk, vm_snapshot_id=v.active_snapshot_id)
            att.disk_id = d.id
            v.attachments.append(att)
        e.save()
        return xml(
            xmlio.render(conv.attachment(e, "vms", v.id, att)),
            status=201,
            Location=href("vms", v.id, "diskattachments", d.id),
        )


def update_attachment(e: Engine, req: Request, vm: str, att: str) -> Response:
    st = e.state
    body = parse_body(req, types.DiskAttachment)
    with st.lock:
        v = get_or_404(st.vms, vm)
        a = _attachment(v, att)
        if body.active is not None:
            a.active = bool(body.active)
        if body.bootable is not None:
            a.bootable = bool(body.bootable)
        if body.interface is not None:
            a.interface = body.interface.value
        if body.read_only is not None:
            a.read_only = bool(body.read_only)
        if body.pass_discard is not None:
            a.pass_discard = bool(body.pass_discard)
        if body.disk is not None:
            api_disks.update_disk(e, st.disks[a.disk_id], body.disk)
        e.save()
        return xml(xmlio.render(conv.attachment(e, "vms", v.id, a)))


def remove_attachment(e: Engine, req: Request, vm: str, att: str) -> Response:
    st = e.state
    with st.lock:
        v = get_or_404(st.vms, vm)
        a = _attachment(v, att)
        d = st.disks.get(a.disk_id)
        if d is not None:
            check_disk_unlocked(d)
            if a.active and v.status != "down":
                raise conflict(
                    f"Cannot detach Virtual Disk. Disk {d.alias} is plugged to a running VM."
                )
            if any(vol.snapshot_id not in (None, v.active_snapshot_id) for vol in d.volumes):
                raise conflict(f"Cannot detach Virtual Disk. Disk {d.alias} has snapshots.")
            d.active.snapshot_id = None
        v.attachments.remove(a)
        e.save()
    return xml(action_done())


VM_DISK_ATTACHMENTS: tuple[Route, ...] = (
    Route("GET", "/vms/{vm}/diskattachments", list_attachments),
    Route("POST", "/vms/{vm}/diskattachments", add_attachment),
    Route("GET", "/vms/{vm}/diskattachments/{att}", get_attachment),
    Route("PUT", "/vms/{vm}/diskattachments/{att}", update_attachment),
    Route("DELETE", "/vms/{vm}/diskattachments/{att}", remove_attachment),
)


# /vms/{vm}/nics


def _nic(v: Vm, nic_id: str) -> Nic:
    n = next((n for n in v.nics if n.id == nic_id), None)
    if n is None:
        raise get_or_404({}, nic_id)
    return n


def list_nics(e: Engine, req: Request, vm: str) -> Response:
    with e.state.lock:
        v = get_or_404(e.state.vms, vm)
        items = [conv.nic(e, "vms", v.id, n) for n in v.nics]
        follow.apply(e, req, items)
        return xml(xmlio.render_list(items, "nics"))


def get_nic(e: Engine, req: Request, vm: str, nic: str) -> Response:
    with e.state.lock:
        v = get_or_404(e.state.vms, vm)
        item = conv.nic(e, "vms", v.id, _nic(v, nic))
        follow.apply(e, req, [item])
        return xml(xmlio.render(item))


def add_nic(e: Engine, req: Request, vm: str) -> Response:
    st = e.state
    body = parse_body(req, types.Nic)
    if not body.name:
        raise bad_request("Nic [name] required for add")
    with st.lock:
        v = get_or_404(st.vms, vm)
        mac = body.mac.address if body.mac is not None and body.mac.address else None
        if mac is not None and any(n.mac == mac for o in st.vms.values() for n in o.nics):
            raise conflict(f"Cannot add Interface. MAC Address {mac} is already in use.")
        profile_id = None
        if body.vnic_profile is not None and (body.vnic_profile.id or body.vnic_profile.name):
            profile = by_id_or_name(st.vnic_profiles, body.vnic_profile, "vnic profile")
            network = st.networks.get(profile.network_id)
            if network is None or network.dc_id != st.clusters[v.cluster_id].dc_id:
                # the engine's VmNicValidator: the profile's network must be in the VM's cluster
                raise conflict(
                    "Cannot add Interface. The Network is not attached to the Cluster "
                    "of the Virtual Machine."
                )
            profile_id = profile.id
        n = Nic(
            id=new_id(),
            name=body.name,
            mac=mac or new_mac(e),
            vnic_profile_id=profile_id,
            interface=body.interface.value if body.interface is not None else "virtio",
            linked=True if body.linked is None else bool(body.linked),
            plugged=True if body.plugged is None else bool(body.plugged),
        )
        v.nics.append(n)
        e.save()
        return xml(
            xmlio.render(conv.nic(e, "vms", v.id, n)),
            status=201,
            Location=href("vms", v.id, "nics", n.id),
        )


def update_nic(e: Engine, req: Request, vm: str, nic: str) -> Response:
    """The engine's UpdateVmInterface rules: only while the VM is up or down; a new MAC
    must be free; the MAC or the interface type of a NIC plugged into a running VM cannot
    change (unplug it, update, plug it again: three updates)."""
    body = parse_body(req, types.Nic)
    st = e.state
    with st.lock:
        v = get_or_404(st.vms, vm)
        n = _nic(v, nic)
        if v.status not in ("up", "down"):
            raise conflict(
                f"Cannot edit Interface. The VM {v.name} is {v.status}; "
                "interfaces can be changed only while the VM is Up or Down."
            )
        mac = body.mac.address if body.mac is not None and body.mac.address else n.mac
        iface = body.interface.value if body.interface is not None else n.interface
        plugged = n.plugged if body.plugged is None else bool(body.plugged)
        if mac != n.mac and any(o.mac == mac for x in st.vms.values() for o in x.nics):
            raise conflict(f"Cannot edit Interface. MAC Address {mac} is already in use.")
        if body.name and body.name != n.name and any(o.name == body.name for o in v.nics):
            raise conflict(f"Cannot edit Interface. Interface name {body.name} is already in use.")
        if v.status == "up" and n.plugged and plugged and (mac != n.mac or iface != n.interface):
            raise conflict(
                "Cannot edit Interface. Updating some of the properties is not supported "
                "while the interface is plugged into a running virtual machine. Please "
                "un-plug the interface, update the properties, and then plug it back."
            )
        if body.name:
            n.name = body.name
        if body.linked is not None:
            n.linked = bool(body.linked)
        n.plugged = plugged
        n.mac = mac
        n.interface = iface
        e.save()
        return xml(xmlio.render(conv.nic(e, "vms", v.id, n)))


def remove_nic(e: Engine, req: Request, vm: str, nic: str) -> Response:
    with e.state.lock:
        v = get_or_404(e.state.vms, vm)
        v.nics.remove(_nic(v, nic))
        e.save()
    return xml(action_done())


VM_NICS: tuple[Route, ...] = (
    Route("GET", "/vms/{vm}/nics", list_nics),
    Route("POST", "/vms/{vm}/nics", add_nic),
    Route("GET", "/vms/{vm}/nics/{nic}", get_nic),
    Route("PUT", "/vms/{vm}/nics/{nic}", update_nic),
    Route("DELETE", "/vms/{vm}/nics/{nic}", remove_nic),
)


# /vms/{vm}/tags


def list_vm_tags(e: Engine, req: Request, vm: str) -> Response:
    st = e.state
    with st.lock:
        v = get_or_404(st.vms, vm)
        items = [conv.tag(e, st.tags[t]) for t in v.tag_ids if t in st.tags]
        return xml(xmlio.render_list(items, "tags"))


def add_vm_tag(e: Engine, req: Request, vm: str) -> Response:
    st = e.state
    body = parse_body(req, types.Tag)
    with st.lock:
        v = get_or_404(st.vms, vm)
        t = by_id_or_name(st.tags, body, "tag")
        if t.id not in v.tag_ids:
            v.tag_ids.append(t.id)
        e.save()
        return xml(
            xmlio.render(conv.tag(e, t)), status=201, Location=href("vms", v.id, "tags", t.id)
        )


def get_vm_tag(e: Engine, req: Request, vm: str, tag: str) -> Response:
    st = e.state
    with st.lock:
        v = get_or_404(st.vms, vm)
        if tag not in v.tag_ids or tag not in st.tags:
            raise get_or_404({}, tag)
        return xml(xmlio.render(conv.tag(e, st.tags[tag])))


def remove_vm_tag(e: Engine, req: Request, vm: str, tag: str) -> Response:
    with e.state.lock:
        v = get_or_404(e.state.vms, vm)
        if tag not in v.tag_ids:
            raise get_or_404({}, tag)
        v.tag_ids.remove(tag)
        e.save()
    return xml(action_done())


VM_TAGS: tuple[Route, ...] = (
    Route("GET", "/vms/{vm}/tags", list_vm_tags),
    Route("POST", "/vms/{vm}/tags", add_vm_tag),
    Route("GET", "/vms/{vm}/tags/{tag}", get_vm_tag),
    Route("DELETE", "/vms/{vm}/tags/{tag}", remove_vm_tag),
)


# sub-collections the simulator always shows empty


def list_empty(e: Engine, req: Request, vm: str, *, root: str) -> Response:
    with e.state.lock:
        get_or_404(e.state.vms, vm)
    return xml(xmlio.render_list([], root))


VM_EMPTY_COLLECTIONS: tuple[Route, ...] = tuple(
    Route("GET", f"/vms/{{vm}}/{root.replace('_', '')}", functools.partial(list_empty, root=root))
    for root in ("permissions", "statistics", "reported_devices", "cdroms", "graphics_consoles")
)


ROUTES: tuple[Route, ...] = (
    *VMS,
    *VM_ACTIONS,
    *VM_DISK_ATTACHMENTS,
    *VM_NICS,
    *VM_TAGS,
    *VM_EMPTY_COLLECTIONS,
)
