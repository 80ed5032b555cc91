"""VM snapshots: create (qcow2 overlays), remove (backward merge), list, disks.

Owns the snapshot phase machines: create marks the snapshot and its disks
`locked`, then a background step takes `Storage.snapshot` of every included
disk (the old top volume now belongs to the snapshot, a new active volume
goes on top) and unlocks; remove locks, then merges each disk's child volume
into the snapshot's volume (`Storage.merge`, the older id survives and takes
the child's role; the merge runs without the state lock, as `api_base`
describes) and drops the record. Hybrid backups reuse both through
`create_snapshot()` / `remove_snapshot()`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ovirtsdk4 import types

from rhvfs.sim import api_types as conv
from rhvfs.sim import xmlio
from rhvfs.sim.api_base import (
    Engine,
    action_done,
    check_disk_unlocked,
    get_or_404,
    href,
    parse_body,
    vm_busy,
)
from rhvfs.sim.httpd import Request, Response, Route, bad_request, conflict, xml
from rhvfs.sim.state import Disk, Snapshot, Vm, Volume, new_id, now_iso

log = logging.getLogger(__name__)

Done = Callable[[bool], None]


def create_snapshot(
    e: Engine,
    vm: Vm,
    *,
    description: str,
    persist_memorystate: bool = False,
    disks: list[tuple[str, str | None]] | None = None,
    on_done: Done | None = None,
    internal: bool = False,
) -> Snapshot:
    """Start a snapshot of `disks` ((disk id, new active image id or None); all
    attached disks when None). Caller holds the lock."""
    from rhvfs.sim import api_ovf

    st = e.state
    if not internal:
        why = vm_busy(e, vm)
        if why:
            raise conflict(f"Cannot create Snapshot. {why}.")
    if vm.status == "image_locked":
        raise conflict(f"Cannot create Snapshot. VM {vm.name} is locked.")
    if disks is None:
        disks = [(a.disk_id, None) for a in vm.attachments]
    targets: list[tuple[Disk, str | None]] = []
    for disk_id, image_id in disks:
        d = st.disks.get(disk_id)
        if d is None or vm.attachment(disk_id) is None:
            raise bad_request(
                f"Disk {disk_id} is not attached to VM {vm.name}", reason="Invalid value"
            )
        check_disk_unlocked(d)
        if image_id and st.disk_of_volume(image_id) is not None:
            raise conflict(f"Cannot create Snapshot. Image id {image_id} is already in use.")
        targets.append((d, image_id))
    snap = Snapshot(
        id=new_id(),
        vm_id=vm.id,
        description=description,
        date=now_iso(),
        status="locked",
        type="regular",
        persist_memorystate=persist_memorystate,
        ovf=api_ovf.make_ovf(e, vm),
    )
    st.snapshots[snap.id] = snap
    pos = vm.snapshot_ids.index(vm.active_snapshot_id)
    vm.snapshot_ids.insert(pos, snap.id)
    for d, _ in targets:
        d.status = "locked"
        d.lock_reason = "snapshot"
    e.save()
    log.info("vm %s: creating snapshot %s (%s)", vm.id, snap.id, description)
    plan = [(d.id, image_id or new_id()) for d, image_id in targets]
    e.tasks.step(_finish_create, e, vm.id, snap.id, plan, on_done)
    return snap


def _finish_create(
    e: Engine, vm_id: str, snap_id: str, plan: list[tuple[str, str]], on_done: Done | None
) -> None:
    st = e.state
    ok = True
    with st.lock:
        vm = st.vms[vm_id]
        snap = st.snapshots[snap_id]
        for disk_id, new_vol_id in plan:
            d = st.disks[disk_id]
            top = d.active
            try:
                e.storage.snapshot(d.sd_id, d.id, top.id, new_vol_id)
            except Exception:
                log.exception("snapshot of disk %s failed", d.id)
                ok = False
                continue
            top.snapshot_id = snap.id
            d.volumes.append(
                Volume(
                    id=new_vol_id, fmt="cow", parent_id=top.id, snapshot_id=vm.active_snapshot_id
                )
            )
        for disk_id, _ in plan:
            d = st.disks[disk_id]
            if d.lock_reason == "snapshot":
                d.status = "ok"
                d.lock_reason = ""
        snap.status = "ok"
        st.add_event(
            f"Snapshot '{snap.description}' creation for VM '{vm.name}' has been completed.",
            code=68,
            vm_id=vm.id,
        )
        e.save()
        log.info("vm %s: snapshot %s ready", vm_id, snap_id)
    if on_done is not None:
        on_done(ok)


def remove_snapshot(
    e: Engine, vm: Vm, snap: Snapshot, *, on_done: Done | None = None, internal: bool = False
) -> None:
    """Start merging `snap` away. Caller holds the lock."""
    st = e.state
    if snap.type == "active":
        raise conflict("Cannot remove Snapshot. The Active VM snapshot cannot be removed.")
    if snap.status == "locked":
        raise conflict("Cannot remove Snapshot. Snapshot is currently being created or removed.")
    if not internal:
        why = vm_busy(e, vm)
        if why:
            raise conflict(f"Cannot remove Snapshot. {why}.")
    involved = [d for d in st.disks.values() if any(v.snapshot_id == snap.id for v in d.volumes)]
    for d in involved:
        check_disk_unlocked(d)
        for t in st.transfers.values():
            if t.disk_id == d.id and not t.phase.startswith("finished"):
                raise conflict(f"Cannot remove Snapshot. Disk {d.alias} is being transferred.")
    snap.status = "locked"
    for d in involved:
        d.status = "locked"
        d.lock_reason = "snapshot"
    e.save()
    log.info("vm %s: removing snapshot %s", vm.id, snap.id)
    e.tasks.step(_finish_remove, e, vm.id, snap.id, [d.id for d in involved], on_done)


def _finish_remove(
    e: Engine, vm_id: str, snap_id: str, disk_ids: list[str], on_done: Done | None
) -> None:
    """Merge each disk's child volume into the snapshot's, then drop the snapshot.

    The merges run without the state lock (see `api_base`): the disks are
    `locked` and the snapshot too, since `remove_snapshot`.
    """
    st = e.state
    with st.lock:
        # (disk id, sd id, the snapshot's volume, its child)
        merges: list[tuple[str, str, str, str]] = []
        for disk_id in disk_ids:
            d = st.disks.get(disk_id)
            if d is None:
                continue
            vol = next((v for v in d.volumes if v.snapshot_id == snap_id), None)
            child = d.child_of(vol.id) if vol is not None else None
            if vol is None or child is None:
                continue
            merges.append((d.id, d.sd_id, vol.id, child.id))
        e.busy_disks.update(m[0] for m in merges)
    merged: list[tuple[str, str, str]] = []
    try:
        if merges:
            delay_s = e.faults.storage_delay("merge")
            if delay_s > 0:
                time.sleep(delay_s)
        for disk_id, sd_id, vol_id, child_id in merges:
            try:
                e.storage.merge(sd_id, disk_id, vol_id, child_id)
            except Exception:
                log.exception("merge of %s into %s failed", child_id, vol_id)
                continue
            merged.append((disk_id, vol_id, child_id))
    finally:
        with st.lock:
            e.busy_disks.difference_update(m[0] for m in merges)
            ok = _commit_remove(
                e, vm_id, snap_id, disk_ids, merged, failed=len(merged) < len(merges)
            )
    if on_done is not None:
        on_done(ok)


def _commit_remove(
    e: Engine,
    vm_id: str,
    snap_id: str,
    disk_ids: list[str],
    merged: list[tuple[str, str, str]],
    *,
    failed: bool,
) -> bool:
    """Records after the merges (lock held): the survivors take their child's role."""
    st = e.state
    vm = st.vms.get(vm_id)
    snap = st.snapshots[snap_id]
    for disk_id, vol_id, child_id in merged:
        # The disk is locked: it and its volumes are still there.
        merged_disk = st.disks[disk_id]
        vol = merged_disk.volume(vol_id)
        child = merged_disk.volume(child_id)
        assert vol is not None and child is not None
        vol.snapshot_id = child.snapshot_id
        # Base-first order holds: the survivor already sits where the child's parent was.
        merged_disk.volumes.remove(child)
        for v in merged_disk.volumes:
            if v.parent_id == child.id:
                v.parent_id = vol.id
    ok = not failed
    for disk_id in disk_ids:
        d = st.disks.get(disk_id)
        if d is not None and d.lock_reason == "snapshot":
            d.status = "ok" if ok else "illegal"
            d.lock_reason = ""
    if ok:
        del st.snapshots[snap_id]
        if vm is not None and snap_id in vm.snapshot_ids:
            vm.snapshot_ids.remove(snap_id)
    else:
        snap.status = "ok"
    if vm is not None:
        st.add_event(
            f"Snapshot '{snap.description}' deletion for VM '{vm.name}' has been completed.",
            code=356,
            vm_id=vm.id,
        )
    e.save()
    log.info("vm %s: snapshot %s removed (ok=%s)", vm_id, snap_id, ok)
    return ok


def restore_snapshot(e: Engine, vm: Vm, snap: Snapshot) -> None:
    """Revert the VM's disks to `snap` (preview + commit in one step). Caller holds the lock.

    Volumes newer than the snapshot's are deleted with the snapshots owning
    them, a fresh active volume goes on top of the snapshot's volume, and the
    VM's checkpoints become `invalid` (their bitmaps no longer describe the disks).
    """
    st = e.state
    if snap.type != "regular" or snap.status != "ok":
        raise conflict(
            f"Cannot restore Snapshot. Snapshot {snap.description} cannot be restored now."
        )
    if vm.status != "down":
        raise conflict(f"Cannot restore Snapshot. VM {vm.name} must be Down.")
    why = vm_busy(e, vm)
    if why:
        raise conflict(f"Cannot restore Snapshot. {why}.")
    involved = [d for d in st.disks.values() if any(v.snapshot_id == snap.id for v in d.volumes)]
    for d in involved:
        check_disk_unlocked(d)
    snap.status = "locked"
    for d in involved:
        d.status = "locked"
        d.lock_reason = "snapshot"
    e.save()
    e.tasks.step(_finish_restore, e, vm.id, snap.id, [d.id for d in involved])


def _finish_restore(e: Engine, vm_id: str, snap_id: str, disk_ids: list[str]) -> None:
    st = e.state
    with st.lock:
        vm = st.vms[vm_id]
        newer = vm.snapshot_ids[vm.snapshot_ids.index(snap_id) + 1 :]
        for disk_id in disk_ids:
            d = st.disks[disk_id]
            keep = next(i for i, v in enumerate(d.volumes) if v.snapshot_id == snap_id)
            for v in d.volumes[keep + 1 :]:
                e.storage.delete_volume(d.sd_id, d.id, v.id)
            del d.volumes[keep + 1 :]
            new_vol = new_id()
            e.storage.snapshot(d.sd_id, d.id, d.volumes[keep].id, new_vol)
            d.volumes.append(
                Volume(
                    id=new_vol,
                    fmt="cow",
                    parent_id=d.volumes[keep].id,
                    snapshot_id=vm.active_snapshot_id,
                )
            )
            d.status = "ok"
            d.lock_reason = ""
        for sid in newer:
            if sid != vm.active_snapshot_id:
                st.snapshots.pop(sid, None)
                vm.snapshot_ids.remove(sid)
        st.snapshots[snap_id].status = "ok"
        for cp in st.checkpoints.values():
            if cp.vm_id == vm_id:
                cp.state = "invalid"
        st.add_event(
            f"VM {vm.name} restored from snapshot '{st.snapshots[snap_id].description}'.",
            vm_id=vm_id,
        )
        e.save()
        log.info("vm %s restored to snapshot %s", vm_id, snap_id)


def snapshot_disks(e: Engine, vm: Vm, snap: Snapshot) -> list[types.Disk]:
    result = []
    for a in vm.attachments:
        d = e.state.disks.get(a.disk_id)
        if d is None:
            continue
        vol = next((v for v in d.volumes if v.snapshot_id == snap.id), None)
        if vol is not None:
            result.append(conv.disk(e, d, volume=vol))
    return result


def _vm_snap(e: Engine, vm: str, snapshot: str) -> tuple[Vm, Snapshot]:
    v = get_or_404(e.state.vms, vm)
    s = get_or_404(e.state.snapshots, snapshot)
    if s.vm_id != v.id:
        raise get_or_404({}, snapshot)
    return v, s


def _all_content(req: Request) -> bool:
    return req.flag("all_content") or req.headers.get("all-content") == "true"


def list_snapshots(e: Engine, req: Request, vm: str) -> Response:
    st = e.state
    with st.lock:
        v = get_or_404(st.vms, vm)
        all_content = _all_content(req)
        items = [
            conv.snapshot(e, st.snapshots[sid], all_content=all_content)
            for sid in v.snapshot_ids
            if sid in st.snapshots
        ]
        return xml(xmlio.render_list(items, "snapshots"))


def add_snapshot(e: Engine, req: Request, vm: str) -> Response:
    body = parse_body(req, types.Snapshot)
    if not body.description:
        raise bad_request("Snapshot [description] required for add")
    with e.state.lock:
        v = get_or_404(e.state.vms, vm)
        disks = None
        if body.disk_attachments is not None:
            disks = []
            for a in body.disk_attachments:
                disk_ref = a.disk
                disk_id = (disk_ref.id if disk_ref is not None else None) or a.id
                if not disk_id:
                    raise bad_request("disk_attachment [disk.id] required")
                disks.append((disk_id, disk_ref.image_id if disk_ref is not None else None))
        persist = body.persist_memorystate
        if persist is None:
            persist = v.status == "up"
        snap = create_snapshot(
            e, v, description=body.description, persist_memorystate=bool(persist), disks=disks
        )
        return xml(
            xmlio.render(conv.snapshot(e, snap)),
            status=202,
            Location=href("vms", v.id, "snapshots", snap.id),
        )


def get_snapshot(e: Engine, req: Request, vm: str, snapshot: str) -> Response:
    with e.state.lock:
        _, s = _vm_snap(e, vm, snapshot)
        return xml(xmlio.render(conv.snapshot(e, s, all_content=_all_content(req))))


def remove_snapshot_handler(e: Engine, req: Request, vm: str, snapshot: str) -> Response:
    with e.state.lock:
        v, s = _vm_snap(e, vm, snapshot)
        remove_snapshot(e, v, s)
    return xml(action_done())


def list_snapshot_disks(e: Engine, req: Request, vm: str, snapshot: str) -> Response:
    with e.state.lock:
        v, s = _vm_snap(e, vm, snapshot)
        return xml(xmlio.render_list(snapshot_disks(e, v, s), "disks"))


def list_snapshot_nics(e: Engine, req: Request, vm: str, snapshot: str) -> Response:
    with e.state.lock:
        v, _ = _vm_snap(e, vm, snapshot)
        items = [conv.nic(e, "vms", v.id, n) for n in v.nics]
        return xml(xmlio.render_list(items, "nics"))


def restore_snapshot_handler(e: Engine, req: Request, vm: str, snapshot: str) -> Response:
    with e.state.lock:
        v, s = _vm_snap(e, vm, snapshot)
        restore_snapshot(e, v, s)
    return xml(action_done())


SNAPSHOTS: tuple[Route, ...] = (
    Route("GET", "/vms/{vm}/snapshots", list_snapshots),
    Route("POST", "/vms/{vm}/snapshots", add_snapshot),
    Route("GET", "/vms/{vm}/snapshots/{snapshot}", get_snapshot),
    Route("DELETE", "/vms/{vm}/snapshots/{snapshot}", remove_snapshot_handler),
    Route("POST", "/vms/{vm}/snapshots/{snapshot}/restore", restore_snapshot_handler),
)

SNAPSHOT_DISKS: tuple[Route, ...] = (
    Route("GET", "/vms/{vm}/snapshots/{snapshot}/disks", list_snapshot_disks),
)

SNAPSHOT_NICS: tuple[Route, ...] = (
    Route("GET", "/vms/{vm}/snapshots/{snapshot}/nics", list_snapshot_nics),
)

ROUTES: tuple[Route, ...] = (*SNAPSHOTS, *SNAPSHOT_DISKS, *SNAPSHOT_NICS)
