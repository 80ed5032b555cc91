"""VM backups (hybrid model, oVirt 4.5) and checkpoints.

Owns `/vms/{vm}/backups` and `/vms/{vm}/checkpoints`. A backup takes an
`Auto-generated for Backup VM` snapshot (`initializing`), adds the new
checkpoint's bitmap to the new top volumes of its incremental disks
(`starting`), and is `ready` with `to_checkpoint_id`; transfers then read the
snapshot's volumes (see `api_transfers`). Finalize (409 while a transfer of
it is unfinished) merges the snapshot away (`finalizing` -> `succeeded`); a failed backup
(or one finalized before it was ready) also merges it away first
(`finalizing` -> `failed`). A checkpoint is a bitmap of that name on the
volumes of its disks; as in the engine, only a VM's root (oldest) checkpoint
can be removed (409 for a newer one), and its child becomes the root.
"""

from __future__ import annotations

import datetime
import logging

from ovirtsdk4 import types

from rhvfs.sim import api_snapshots, xmlio
from rhvfs.sim import api_types as conv
from rhvfs.sim.api_base import Engine, action_done, get_or_404, href, parse_body, vm_busy
from rhvfs.sim.httpd import Request, Response, Route, bad_request, conflict, xml
from rhvfs.sim.state import Backup, Checkpoint, Vm, new_id, now_iso, parse_iso

log = logging.getLogger(__name__)

BACKUP_SNAPSHOT_DESCRIPTION = "Auto-generated for Backup VM"
ENDED = ("succeeded", "failed")


def _set_phase(e: Engine, b: Backup, phase: str) -> None:
    b.phase = phase
    b.modified_date = now_iso()
    log.info("backup %s: %s", b.id, phase)


def start_backup(e: Engine, vm: Vm, body: types.Backup, *, require_consistency: bool) -> Backup:
    st = e.state
    if vm.status not in ("up", "down"):
        raise conflict(f"Cannot backup VM. VM {vm.name} is {vm.status}; it must be Up or Down.")
    if not body.disks:
        raise bad_request("Backup [disks] required for add")
    for b in st.backups.values():
        if b.vm_id == vm.id and b.phase not in ENDED:
            raise conflict(
                f"Cannot backup VM. Backup {b.id} for VM {vm.name} is already in progress."
            )
    why = vm_busy(e, vm)
    if why:
        raise conflict(f"Cannot backup VM. {why}.")
    backup_id = body.id or new_id()
    if backup_id in st.backups:
        raise conflict(f"Cannot backup VM. Backup id {backup_id} is already in use.")
    disk_ids: list[str] = []
    for ref in body.disks:
        d = st.disks.get(ref.id or "")
        if d is None or vm.attachment(d.id) is None:
            raise bad_request(
                f"Disk {ref.id} is not attached to VM {vm.name}", reason="Invalid value"
            )
        if d.status != "ok":
            raise conflict(f"Cannot backup VM. Disk {d.alias} is {d.status}.")
        disk_ids.append(d.id)
    from_cp = body.from_checkpoint_id or None
    modes: dict[str, str] = {}
    if from_cp:
        cp = st.checkpoints.get(from_cp)
        if cp is None or cp.vm_id != vm.id:
            raise bad_request(
                f"Checkpoint {from_cp} does not exist for VM {vm.name}", reason="Invalid value"
            )
        if cp.state != "created":
            raise conflict(f"Cannot backup VM. Checkpoint {from_cp} is {cp.state}.")
        for disk_id in disk_ids:
            d = st.disks[disk_id]
            if d.backup != "incremental":
                raise conflict(
                    f"Cannot backup VM. Incremental backup is not enabled for disk {d.alias}."
                )
            modes[disk_id] = "incremental" if disk_id in cp.disk_ids else "full"
    else:
        modes = dict.fromkeys(disk_ids, "full")
    incremental_disks = [d for d in disk_ids if st.disks[d].backup == "incremental"]
    host_id = vm.host_id or next(iter(st.hosts), None)
    b = Backup(
        id=backup_id,
        vm_id=vm.id,
        disk_ids=disk_ids,
        description=body.description or "",
        from_checkpoint_id=from_cp,
        host_id=host_id,
        creation_date=now_iso(),
        modified_date=now_iso(),
        modes=modes,
        pending_checkpoint_id=new_id() if incremental_disks else None,
    )
    st.backups[b.id] = b
    snap = api_snapshots.create_snapshot(
        e,
        vm,
        description=BACKUP_SNAPSHOT_DESCRIPTION,
        disks=[(d, None) for d in disk_ids],
        on_done=lambda ok: e.tasks.step(_after_snapshot, e, b.id, ok),
        internal=True,
    )
    b.snapshot_id = snap.id
    e.save()
    log.info("backup %s of vm %s: disks %s from %s", b.id, vm.id, disk_ids, from_cp)
    return b


def _after_snapshot(e: Engine, backup_id: str, ok: bool) -> None:
    st = e.state
    with st.lock:
        b = st.backups[backup_id]
        if not ok or b.phase != "initializing":
            _fail(e, b)
            return
        _set_phase(e, b, "starting")
        if not _bitmaps_consistent(e, b):
            _fail(e, b)
            return
        cp_id = b.pending_checkpoint_id
        try:
            if cp_id is not None:
                cp_disks = []
                for disk_id in b.disk_ids:
                    d = st.disks[disk_id]
                    if d.backup != "incremental":
                        continue
                    e.storage.add_bitmap(d.sd_id, d.id, d.active.id, cp_id)
                    cp_disks.append(d.id)
                vm_cps = [c for c in st.checkpoints.values() if c.vm_id == b.vm_id]
                parent = max(vm_cps, key=lambda c: c.creation_date).id if vm_cps else None
                st.checkpoints[cp_id] = Checkpoint(
                    id=cp_id,
                    vm_id=b.vm_id,
                    disk_ids=cp_disks,
                    parent_id=parent,
                    creation_date=now_iso(),
                    description=f"Checkpoint of backup {b.id}",
                )
        except Exception:
            log.exception("backup %s: adding checkpoint bitmaps failed", b.id)
            _fail(e, b)
            return
        e.save()
        e.tasks.step(_ready, e, b.id)


def _bitmaps_consistent(e: Engine, b: Backup) -> bool:
    """vdsm refuses an incremental backup whose checkpoint bitmap is missing on a disk."""
    if not b.from_checkpoint_id:
        return True
    for disk_id, mode in b.modes.items():
        if mode != "incremental":
            continue
        d = e.state.disks[disk_id]
        vol = next((v for v in d.volumes if v.snapshot_id == b.snapshot_id), None)
        if vol is None or vol.fmt != "cow":
            return False
        names = {bm.name for bm in e.storage.list_bitmaps(d.sd_id, d.id, vol.id)}
        if b.from_checkpoint_id not in names:
            log.error(
                "backup %s: bitmap %s is missing on volume %s of disk %s",
                b.id,
                b.from_checkpoint_id,
                vol.id,
                d.id,
            )
            e.state.add_event(
                f"Backup {b.id}: checkpoint {b.from_checkpoint_id} bitmap is missing on disk {d.alias}.",
                severity="error",
                vm_id=b.vm_id,
            )
            return False
    return True


def _ready(e: Engine, backup_id: str) -> None:
    with e.state.lock:
        b = e.state.backups[backup_id]
        if b.phase != "starting":
            return
        b.to_checkpoint_id = b.pending_checkpoint_id
        _set_phase(e, b, "ready")
        e.save()


def _fail(e: Engine, b: Backup) -> None:
    """End the backup as failed: drop its checkpoint and merge its snapshot away.

    As for a finalized backup, the phase shows `failed` only once the snapshot
    is gone (`finalizing` meanwhile), so a client that starts the next backup
    when this one ended does not meet the merge's lock."""
    st = e.state
    cp_id = b.pending_checkpoint_id
    if cp_id is not None and cp_id in st.checkpoints:
        _drop_checkpoint_bitmaps(e, st.checkpoints.pop(cp_id))
    b.to_checkpoint_id = None
    b.modes = {}
    vm = st.vms.get(b.vm_id)
    snap = st.snapshots.get(b.snapshot_id or "")
    if vm is not None and snap is not None and snap.status == "ok":
        try:
            api_snapshots.remove_snapshot(
                e, vm, snap, internal=True, on_done=lambda ok: e.tasks.step(_failed, e, b.id)
            )
        except Exception:
            log.exception("backup %s: removing its snapshot failed", b.id)
        else:
            _set_phase(e, b, "finalizing")
            e.save()
            return
    _failed(e, b.id)


def _failed(e: Engine, backup_id: str) -> None:
    st = e.state
    with st.lock:
        b = st.backups[backup_id]
        vm = st.vms.get(b.vm_id)
        _set_phase(e, b, "failed")
        st.add_event(
            f"Backup {b.id} for VM {vm.name if vm else b.vm_id} failed.",
            severity="error",
            vm_id=b.vm_id,
        )
        e.save()


def _drop_checkpoint_bitmaps(e: Engine, cp: Checkpoint) -> None:
    for disk_id in cp.disk_ids:
        d = e.state.disks.get(disk_id)
        if d is None:
            continue
        for vol in d.volumes:
            try:
                names = (
                    {bm.name for bm in e.storage.list_bitmaps(d.sd_id, d.id, vol.id)}
                    if vol.fmt == "cow"
                    else set()
                )
                if cp.id in names:
                    e.storage.remove_bitmap(d.sd_id, d.id, vol.id, cp.id)
            except Exception:
                log.exception("removing bitmap %s from %s failed", cp.id, vol.id)


def finalize_backup(e: Engine, b: Backup) -> None:
    st = e.state
    if b.phase in ENDED or b.phase == "finalizing":
        return
    for t in st.transfers.values():
        if t.backup_id == b.id and not t.phase.startswith("finished"):
            raise conflict(
                f"Cannot stop VM Backup. Image transfer {t.id} of backup {b.id} is not finished (phase {t.phase})."
            )
    if b.phase != "ready":
        # A premature stop.
        _fail(e, b)
        return
    _set_phase(e, b, "finalizing")
    e.save()
    vm = st.vms[b.vm_id]
    snap = st.snapshots.get(b.snapshot_id or "")
    if snap is None:
        e.tasks.step(_finalized, e, b.id, True)
        return
    api_snapshots.remove_snapshot(
        e, vm, snap, internal=True, on_done=lambda ok: e.tasks.step(_finalized, e, b.id, ok)
    )


def _finalized(e: Engine, backup_id: str, ok: bool) -> None:
    with e.state.lock:
        b = e.state.backups[backup_id]
        b.modes = {}
        _set_phase(e, b, "succeeded" if ok else "failed")
        e.save()


def remove_checkpoint(e: Engine, vm: Vm, cp: Checkpoint) -> None:
    st = e.state
    for b in st.backups.values():
        if b.vm_id == vm.id and b.phase not in ENDED:
            raise conflict(
                f"Cannot remove checkpoint. Backup {b.id} of VM {vm.name} is in progress."
            )
    for disk_id in cp.disk_ids:
        d = st.disks.get(disk_id)
        if d is not None and d.status == "locked":
            raise conflict(f"Cannot remove checkpoint. Disk {d.alias} is locked.")
    parent = st.checkpoints.get(cp.parent_id or "")
    if parent is not None and parent.vm_id == vm.id:
        # As the engine: the chain is removed from its root; a newer checkpoint waits.
        raise conflict(
            f"Cannot remove checkpoint. Checkpoint {cp.id} of VM {vm.name} is not the root "
            f"checkpoint; remove {parent.id} (and any older one) first."
        )
    _drop_checkpoint_bitmaps(e, cp)
    for other in st.checkpoints.values():
        if other.parent_id == cp.id:
            other.parent_id = cp.parent_id
    del st.checkpoints[cp.id]
    e.save()
    log.info("checkpoint %s of vm %s removed", cp.id, vm.id)


def sweep(e: Engine, *, now: datetime.datetime | None = None) -> None:
    """Forget ended backups like the engine does (15 min after success, 30 after failure)."""
    now = now or datetime.datetime.now(datetime.UTC)
    with e.state.lock:
        for b in list(e.state.backups.values()):
            if b.phase not in ENDED or not b.modified_date:
                continue
            keep_s = 15 * 60 if b.phase == "succeeded" else 30 * 60
            if (now - parse_iso(b.modified_date)).total_seconds() >= keep_s:
                del e.state.backups[b.id]
                e.save()


def start_jobs(e: Engine) -> None:
    """Schedule the periodic sweep of ended backups."""
    e.tasks.every(60.0, lambda: sweep(e))


# /vms/{vm}/backups


def _backup(e: Engine, vm: str, backup: str) -> tuple[Vm, Backup]:
    v = get_or_404(e.state.vms, vm)
    b = get_or_404(e.state.backups, backup)
    if b.vm_id != v.id:
        raise get_or_404({}, backup)
    return v, b


def list_backups(e: Engine, req: Request, vm: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.vms, vm)
        items = [conv.backup(e, b) for b in st.backups.values() if b.vm_id == vm]
        return xml(xmlio.render_list(items, "backups"))


def add_backup(e: Engine, req: Request, vm: str) -> Response:
    body = parse_body(req, types.Backup)
    with e.state.lock:
        v = get_or_404(e.state.vms, vm)
        b = start_backup(e, v, body, require_consistency=req.flag("require_consistency"))
        return xml(
            xmlio.render(conv.backup(e, b)),
            status=202,
            Location=href("vms", v.id, "backups", b.id),
        )


def get_backup(e: Engine, req: Request, vm: str, backup: str) -> Response:
    with e.state.lock:
        _, b = _backup(e, vm, backup)
        return xml(xmlio.render(conv.backup(e, b)))


def list_backup_disks(e: Engine, req: Request, vm: str, backup: str) -> Response:
    st = e.state
    with st.lock:
        _, b = _backup(e, vm, backup)
        items = [
            conv.disk(e, st.disks[d], backup_mode=b.modes.get(d))
            for d in b.disk_ids
            if d in st.disks
        ]
        return xml(xmlio.render_list(items, "disks"))


def finalize_backup_handler(e: Engine, req: Request, vm: str, backup: str) -> Response:
    with e.state.lock:
        _, b = _backup(e, vm, backup)
        finalize_backup(e, b)
    return xml(action_done())


BACKUPS: tuple[Route, ...] = (
    Route("GET", "/vms/{vm}/backups", list_backups),
    Route("POST", "/vms/{vm}/backups", add_backup),
    Route("GET", "/vms/{vm}/backups/{backup}", get_backup),
    Route("GET", "/vms/{vm}/backups/{backup}/disks", list_backup_disks),
    Route("POST", "/vms/{vm}/backups/{backup}/finalize", finalize_backup_handler),
)


# /vms/{vm}/checkpoints


def _checkpoint(e: Engine, vm: str, checkpoint: str) -> tuple[Vm, Checkpoint]:
    v = get_or_404(e.state.vms, vm)
    c = get_or_404(e.state.checkpoints, checkpoint)
    if c.vm_id != v.id:
        raise get_or_404({}, checkpoint)
    return v, c


def list_checkpoints(e: Engine, req: Request, vm: str) -> Response:
    st = e.state
    with st.lock:
        get_or_404(st.vms, vm)
        cps = sorted(
            (c for c in st.checkpoints.values() if c.vm_id == vm), key=lambda c: c.creation_date
        )
        return xml(xmlio.render_list([conv.checkpoint(e, c) for c in cps], "checkpoints"))


def get_checkpoint(e: Engine, req: Request, vm: str, checkpoint: str) -> Response:
    with e.state.lock:
        _, c = _checkpoint(e, vm, checkpoint)
        return xml(xmlio.render(conv.checkpoint(e, c)))


def list_checkpoint_disks(e: Engine, req: Request, vm: str, checkpoint: str) -> Response:
    st = e.state
    with st.lock:
        _, c = _checkpoint(e, vm, checkpoint)
        items = [conv.disk(e, st.disks[d]) for d in c.disk_ids if d in st.disks]
        return xml(xmlio.render_list(items, "disks"))


def remove_checkpoint_handler(e: Engine, req: Request, vm: str, checkpoint: str) -> Response:
    with e.state.lock:
        v, c = _checkpoint(e, vm, checkpoint)
        remove_checkpoint(e, v, c)
    return xml(action_done())


CHECKPOINTS: tuple[Route, ...] = (
    Route("GET", "/vms/{vm}/checkpoints", list_checkpoints),
    Route("GET", "/vms/{vm}/checkpoints/{checkpoint}", get_checkpoint),
    Route("GET", "/vms/{vm}/checkpoints/{checkpoint}/disks", list_checkpoint_disks),
    Route("DELETE", "/vms/{vm}/checkpoints/{checkpoint}", remove_checkpoint_handler),
)

ROUTES: tuple[Route, ...] = (*BACKUPS, *CHECKPOINTS)
