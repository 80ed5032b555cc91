"""REST resources for disks: `/disks`, `/disks/{id}`, disk snapshots, reduce/sparsify.

Owns disk creation (record + base volume, `locked` -> `ok` in a background
step; a raw preallocated disk on a block domain starts with stale data, like
an LV), update (alias, description, grow), removal with its 409 rules, and the
disk-snapshot (volume) listings, as route tables of plain handler functions
(`ROUTES`). `create_disk()` and `remove_disk()` are also used by disk
attachments, storage domains and uploads.
"""

from __future__ import annotations

import logging
import time

from ovirtsdk4 import types

from rhvfs.sim import api_types as conv
from rhvfs.sim import follow, xmlio
from rhvfs.sim.api_base import (
    Engine,
    action_done,
    by_id_or_name,
    check_disk_unlocked,
    get_or_404,
    href,
    parse_body,
    sd_used_bytes,
    search,
)
from rhvfs.sim.httpd import Request, Response, Route, bad_request, conflict, xml
from rhvfs.sim.state import BLOCK_STORAGE_TYPES, Disk, Volume, new_id

log = logging.getLogger(__name__)

# The engine refuses new disks below this free space (its low-space threshold).
LOW_SPACE_BYTES = 1024**3


def create_disk(e: Engine, body: types.Disk, *, vm_snapshot_id: str | None = None) -> Disk:
    """Validate an inbound `<disk>`, add the record (locked) and schedule creation.

    Caller holds the lock; the volume appears in a background step.
    """
    st = e.state
    if body.provisioned_size is None or body.format is None:
        raise bad_request("Disk [provisionedSize, format] required for add")
    if not body.storage_domains:
        raise bad_request("Disk [storageDomain] required for add")
    sd = by_id_or_name(st.storage_domains, body.storage_domains[0], "storage domain")
    if sd.status != "active":
        raise conflict(f"Cannot add Virtual Disk. Storage Domain {sd.name} is not active.")
    available = sd.capacity_bytes - sd_used_bytes(e, sd.id)
    needed = int(body.provisioned_size) if body.sparse is False else 0
    if available < LOW_SPACE_BYTES or needed > available:
        raise conflict(f"Cannot add Virtual Disk. Low disk space on Storage Domain {sd.name}.")
    fmt = body.format.value
    sparse = True if body.sparse is None else bool(body.sparse)
    if fmt == "raw" and sparse and sd.storage_type in BLOCK_STORAGE_TYPES:
        raise conflict(
            "Cannot add Virtual Disk. Disk configuration (RAW Sparse) is incompatible with "
            "the storage domain type."
        )
    backup = body.backup.value if body.backup is not None else "none"
    if backup == "incremental" and fmt != "cow":
        raise conflict(
            "Cannot add Virtual Disk. Incremental backup is supported only for QCOW2 disks."
        )
    disk_id = body.id or new_id()
    if disk_id in st.disks:
        raise conflict(f"Cannot add Virtual Disk. Disk id {disk_id} is already in use.")
    vol_id = body.image_id or new_id()
    if st.disk_of_volume(vol_id) is not None:
        raise conflict(f"Cannot add Virtual Disk. Image id {vol_id} is already in use.")
    size = int(body.provisioned_size)
    if size <= 0:
        raise bad_request("provisioned_size must be positive", reason="Invalid value")
    alias = body.alias or body.name or f"disk-{disk_id[:8]}"
    disk = Disk(
        id=disk_id,
        alias=alias,
        sd_id=sd.id,
        provisioned_size=size,
        sparse=sparse,
        backup=backup,
        status="locked",
        description=body.description or "",
        content_type=body.content_type.value if body.content_type else "data",
        shareable=bool(body.shareable),
        wipe_after_delete=bool(body.wipe_after_delete),
        volumes=[Volume(id=vol_id, fmt=fmt, snapshot_id=vm_snapshot_id)],
        lock_reason="creation",
    )
    st.disks[disk.id] = disk
    e.save()
    e.tasks.step(_finish_create, e, disk.id)
    return disk


def _finish_create(e: Engine, disk_id: str) -> None:
    with e.state.lock:
        disk = e.state.disks.get(disk_id)
        if disk is None:
            return
        vol = disk.active
        sd = e.state.storage_domains.get(disk.sd_id)
        try:
            e.storage.create_volume(
                disk.sd_id,
                disk.id,
                vol.id,
                fmt="cow" if vol.fmt == "cow" else "raw",
                size=disk.provisioned_size,
                sparse=disk.sparse,
                # a new LV shows its extents' old contents (a file domain's file reads zeros)
                stale=sd is not None and sd.storage_type in BLOCK_STORAGE_TYPES,
            )
            disk.status = "ok"
        except Exception:
            log.exception("creating disk %s failed", disk_id)
            disk.status = "illegal"
        disk.lock_reason = ""
        e.save()


def remove_disk(e: Engine, disk: Disk) -> None:
    """Delete a disk and its volumes (409 if locked or plugged into a running VM)."""
    st = e.state
    check_disk_unlocked_for_removal(disk)
    vm = st.vm_of_disk(disk.id)
    if vm is not None:
        att = vm.attachment(disk.id)
        if att is not None and att.active and vm.status != "down":
            raise conflict(
                f"Cannot remove Virtual Disk. Disk {disk.alias} is plugged to a running VM {vm.name}."
            )
        vm.attachments = [a for a in vm.attachments if a.disk_id != disk.id]
    for t in st.transfers.values():
        if t.disk_id == disk.id and not t.phase.startswith("finished"):
            raise conflict(f"Cannot remove Virtual Disk. Disk {disk.alias} is being transferred.")
    drop_disk(e, disk)


def drop_disk(e: Engine, disk: Disk) -> None:
    """Remove the record and the volumes, no questions asked (caller holds the lock)."""
    st = e.state
    for vm in st.vms.values():
        vm.attachments = [a for a in vm.attachments if a.disk_id != disk.id]
    st.disks.pop(disk.id, None)
    try:
        e.storage.delete_disk(disk.sd_id, disk.id)
    except Exception:
        log.exception("deleting the volumes of disk %s failed", disk.id)
    e.save()


def check_disk_unlocked_for_removal(disk: Disk) -> None:
    if disk.status == "locked":
        raise conflict(
            f"Cannot remove Virtual Disk. Disk {disk.alias} is locked. Please try again in a few minutes."
        )


def list_disks(e: Engine, req: Request) -> Response:
    st = e.state
    with st.lock:
        fields = {
            "name": lambda d: d.alias,
            "alias": lambda d: d.alias,
            "id": lambda d: d.id,
            "status": lambda d: d.status,
            "description": lambda d: d.description,
            "storage": lambda d: st.storage_domains[d.sd_id].name,
            "format": lambda d: d.active.fmt,
        }
        found = search(req, list(st.disks.values()), fields)
        items = [conv.disk(e, d) for d in found]
        follow.apply(e, req, items)
        return xml(xmlio.render_list(items, "disks"))


def get_disk(e: Engine, req: Request, disk: str) -> Response:
    with e.state.lock:
        item = conv.disk(e, get_or_404(e.state.disks, disk))
        follow.apply(e, req, [item])
        return xml(xmlio.render(item))


def add_disk(e: Engine, req: Request) -> Response:
    st = e.state
    body = parse_body(req, types.Disk)
    with st.lock:
        d = create_disk(e, body)
    # The engine answers 202 while storage works, 201 when asked to wait.
    status = 202
    if "201-created" in req.headers.get("expect", ""):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with st.lock:
                if st.disks.get(d.id) is None or st.disks[d.id].status != "locked":
                    break
            time.sleep(0.02)
        status = 201
    with st.lock:
        d = get_or_404(st.disks, d.id)
        return xml(xmlio.render(conv.disk(e, d)), status=status, Location=href("disks", d.id))


def update_disk_handler(e: Engine, req: Request, disk: str) -> Response:
    body = parse_body(req, types.Disk)
    with e.state.lock:
        d = get_or_404(e.state.disks, disk)
        update_disk(e, d, body)
        return xml(xmlio.render(conv.disk(e, d)))


def remove_disk_handler(e: Engine, req: Request, disk: str) -> Response:
    with e.state.lock:
        remove_disk(e, get_or_404(e.state.disks, disk))
    return xml(action_done())


def list_disk_snapshots(e: Engine, req: Request, disk: str) -> Response:
    with e.state.lock:
        d = get_or_404(e.state.disks, disk)
        include_active = req.flag("include_active")
        items = [
            conv.disk_snapshot(e, d, v) for v in d.volumes if include_active or v is not d.active
        ]
        return xml(xmlio.render_list(items, "disk_snapshots"))


def get_disk_snapshot(e: Engine, req: Request, disk: str, image: str) -> Response:
    with e.state.lock:
        d = get_or_404(e.state.disks, disk)
        vol = d.volume(image)
        if vol is None:
            raise get_or_404({}, image)
        return xml(xmlio.render(conv.disk_snapshot(e, d, vol)))


def _unlock_reduced(e: Engine, disk_id: str) -> None:
    with e.state.lock:
        d = e.state.disks.get(disk_id)
        if d is not None and d.lock_reason == "reduce":
            d.status = "ok"
            d.lock_reason = ""
            e.save()


def disk_noop_action(e: Engine, req: Request, disk: str) -> Response:
    """reduce / sparsify: nothing to do on the simulator's volumes; lock for one step."""
    with e.state.lock:
        d = get_or_404(e.state.disks, disk)
        check_disk_unlocked(d)
        d.status = "locked"
        d.lock_reason = "reduce"
        e.save()
        e.tasks.step(_unlock_reduced, e, d.id)
    return xml(action_done())


DISKS: tuple[Route, ...] = (
    Route("GET", "/disks", list_disks),
    Route("POST", "/disks", add_disk),
    Route("GET", "/disks/{disk}", get_disk),
    Route("PUT", "/disks/{disk}", update_disk_handler),
    Route("DELETE", "/disks/{disk}", remove_disk_handler),
    Route("POST", "/disks/{disk}/reduce", disk_noop_action),
    Route("POST", "/disks/{disk}/sparsify", disk_noop_action),
)

DISK_SNAPSHOTS: tuple[Route, ...] = (
    Route("GET", "/disks/{disk}/disksnapshots", list_disk_snapshots),
    Route("GET", "/disks/{disk}/disksnapshots/{image}", get_disk_snapshot),
)

ROUTES: tuple[Route, ...] = (*DISKS, *DISK_SNAPSHOTS)


def update_disk(e: Engine, d: Disk, body: types.Disk) -> None:
    """Alias, description, backup mode and growing `provisioned_size` (caller holds the lock)."""
    if body.alias or body.name:
        d.alias = body.alias or body.name
    if body.description is not None:
        d.description = body.description
    if body.backup is not None:
        if body.backup.value == "incremental" and d.active.fmt != "cow":
            raise conflict("Cannot edit Virtual Disk. Incremental backup requires a QCOW2 disk.")
        d.backup = body.backup.value
    if body.provisioned_size is not None and int(body.provisioned_size) != d.provisioned_size:
        new_size = int(body.provisioned_size)
        if new_size < d.provisioned_size:
            raise conflict(
                "Cannot edit Virtual Disk. New disk size cannot be smaller than the current."
            )
        check_disk_unlocked(d)
        e.storage.resize(d.sd_id, d.id, d.active.id, new_size)
        d.provisioned_size = new_size
    e.save()
