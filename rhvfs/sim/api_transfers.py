"""Image transfers: validation, the phase machine, tickets, the inactivity poller.

Owns `/imagetransfers` and everything a transfer does to the data plane, the
way the engine and vdsm do it: `format=raw` (and every backup transfer) ->
qemu-nbd export of the volume (with the backup's dirty-bitmap overlay for
incremental disks) behind a daemon ticket; `format=cow` -> a `file://` ticket
on the volume. Disks stay `locked` during plain transfers; a failed or
cancelled upload deletes its disk. Idle transfers meet their
`timeout_policy`; tickets are renewed unless a fault expired them.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Literal

from ovirtsdk4 import types

from rhvfs.sim import api_types as conv
from rhvfs.sim import xmlio
from rhvfs.sim.api_base import (
    Engine,
    action_done,
    by_id_or_name,
    get_or_404,
    href,
    parse_body,
    search,
    volume_file,
)
from rhvfs.sim.httpd import Request, Response, Route, bad_request, conflict, xml
from rhvfs.sim.state import Disk, ImageTransfer, new_id, now_iso, parse_iso

log = logging.getLogger(__name__)

TICKET_TIMEOUT_S = 300
RENEW_EVERY_S = 60.0
POLL_INTERVAL_S = 0.5
QCOW_OVERHEAD_FACTOR = 1.1
QCOW_HEADER_BYTES = 64 * 1024**2

KEEP_SUCCESS_S = 15 * 60
KEEP_FAILURE_S = 30 * 60
SWEEP_INTERVAL_S = 60.0

TERMINAL = ("finished_success", "finished_failure", "finished_cleanup")
_last_renewal: dict[str, float] = {}


def is_finished(t: ImageTransfer) -> bool:
    return t.phase in TERMINAL


def _pick_host(e: Engine, disk: Disk, body_host: types.Host | None) -> str:
    st = e.state
    if body_host is not None and (body_host.id or body_host.name):
        h = by_id_or_name(st.hosts, body_host, "host")
        if h.status != "up":
            raise conflict(f"Cannot transfer Virtual Disk. Host {h.name} is not Up.")
        return h.id
    dc_id = st.storage_domains[disk.sd_id].dc_id
    for h in st.hosts.values():
        if h.status == "up" and st.clusters[h.cluster_id].dc_id == dc_id:
            return h.id
    for h in st.hosts.values():
        if h.status == "up":
            return h.id
    raise conflict("Cannot transfer Virtual Disk. No Up host is available.")


def add_transfer(e: Engine, body: types.ImageTransfer) -> ImageTransfer:
    """Validate and create a transfer (caller holds the lock)."""
    st = e.state
    direction = body.direction.value if body.direction else "upload"
    backup = None
    if body.backup is not None and body.backup.id:
        backup = st.backups.get(body.backup.id)
        if backup is None:
            raise conflict(f"Cannot transfer Virtual Disk. Backup {body.backup.id} does not exist.")
    # The target: a disk (its active volume), a disk snapshot (a volume), or an image (deprecated).
    disk: Disk | None = None
    vol_id: str | None = None
    if body.disk is not None and body.disk.id:
        disk = st.disks.get(body.disk.id)
        if disk is None:
            raise conflict(f"Cannot transfer Virtual Disk. Disk {body.disk.id} does not exist.")
        vol_id = disk.active.id
    elif body.snapshot is not None and body.snapshot.id:
        disk = st.disk_of_volume(body.snapshot.id)
        if disk is None:
            raise conflict(
                f"Cannot transfer Virtual Disk. Disk snapshot {body.snapshot.id} does not exist."
            )
        vol_id = body.snapshot.id
    elif body.image is not None and body.image.id:
        disk = st.disks.get(body.image.id)
        if disk is None:
            raise conflict(f"Cannot transfer Virtual Disk. Image {body.image.id} does not exist.")
        vol_id = disk.active.id
    else:
        raise bad_request("ImageTransfer [disk.id|snapshot.id] required for add")
    assert vol_id is not None
    vol = disk.volume(vol_id)
    assert vol is not None
    sd = st.storage_domains[disk.sd_id]
    if sd.status != "active":
        raise conflict(f"Cannot transfer Virtual Disk. Storage Domain {sd.name} is not active.")
    if disk.status == "illegal":
        raise conflict(f"Cannot transfer Virtual Disk. Disk {disk.alias} status is illegal.")
    fmt = body.format.value if body.format is not None else vol.fmt
    if backup is not None:
        if backup.phase != "ready":
            raise conflict(
                f"Cannot transfer Virtual Disk. Backup {backup.id} is not in READY phase, backup phase is {backup.phase.upper()}."
            )
        if fmt == "cow":
            raise conflict(
                "Cannot transfer Virtual Disk. Backup transfers support only the raw format."
            )
        if direction != "download":
            raise conflict("Cannot transfer Virtual Disk. A backup can only be downloaded.")
        if disk.id not in backup.disk_ids:
            raise conflict(
                f"Cannot transfer Virtual Disk. Disk {disk.alias} is not part of backup {backup.id}."
            )
        snap_vol = next(
            (v for v in disk.volumes if backup.snapshot_id and v.snapshot_id == backup.snapshot_id),
            None,
        )
        if snap_vol is None:
            raise conflict(
                f"Cannot transfer Virtual Disk. Backup {backup.id} has no volume of disk {disk.alias}."
            )
        vol_id = snap_vol.id
    else:
        if disk.status == "locked":
            raise conflict(
                f"Cannot transfer Virtual Disk. Disk {disk.alias} is locked. Please try again in a few minutes."
            )
        vm = st.vm_of_disk(disk.id)
        if vm is not None and vm.status != "down" and vol_id == disk.active.id:
            att = vm.attachment(disk.id)
            if att is not None and att.active:
                raise conflict(
                    f"Cannot transfer Virtual Disk. The disk {disk.alias} is plugged to non-Down VMs: {vm.name}."
                )
    if body.shallow and (fmt != "raw" or direction != "download"):
        raise bad_request("shallow is supported only for raw downloads", reason="Invalid value")
    timeout = body.inactivity_timeout if body.inactivity_timeout is not None else 60
    policy = body.timeout_policy.value if body.timeout_policy is not None else "legacy"
    t = ImageTransfer(
        id=new_id(),
        disk_id=disk.id,
        vol_id=vol_id,
        direction=direction,
        format=fmt,
        host_id=_pick_host(e, disk, body.host),
        shallow=bool(body.shallow),
        backup_id=backup.id if backup is not None else None,
        inactivity_timeout=int(timeout),
        timeout_policy=policy,
        creation_date=now_iso(),
    )
    if backup is None:
        disk.status = "locked"
        disk.lock_reason = "transfer"
    st.transfers[t.id] = t
    e.save()
    log.info(
        "transfer %s: %s %s of disk %s volume %s (backup %s)",
        t.id,
        direction,
        fmt,
        disk.id,
        vol_id,
        t.backup_id,
    )
    if e.tasks.delay_s == 0:
        # Like the engine for an existing disk: prepared inside the POST (answer: transferring).
        _prepare(e, t.id)
    else:
        e.tasks.step(_prepare, e, t.id)
    return t


def _prepare(e: Engine, transfer_id: str) -> None:
    st = e.state
    with st.lock:
        t = st.transfers.get(transfer_id)
        if t is None or t.phase != "initializing":
            return
        disk = st.disks[t.disk_id]
        vol = disk.volume(t.vol_id)
        assert vol is not None
        path = volume_file(e, disk, t.vol_id)
        dp = e.dataplane
        reading = t.direction == "download"
        try:
            if t.backup_id is not None:
                backup = st.backups[t.backup_id]
                mode = backup.modes.get(disk.id, "full")
                if mode == "incremental" and backup.from_checkpoint_id:
                    overlay = e.storage.prepare_dirty_overlay(
                        disk.sd_id,
                        disk.id,
                        t.vol_id,
                        backup.from_checkpoint_id,
                        e.run_dir / "overlays",
                    )
                    export = dp.export_nbd(
                        overlay,
                        fmt="cow",
                        read_only=True,
                        bitmap=backup.from_checkpoint_id,
                        remove_image_on_open=True,
                    )
                    t.dirty = True
                else:
                    export = dp.export_nbd(path, fmt=_fmt(vol.fmt), read_only=True)
                t.export_id = export.id
                t.ticket_url = export.nbd_url
                t.size = disk.provisioned_size
            elif t.format == "raw":
                export = dp.export_nbd(
                    path,
                    fmt=_fmt(vol.fmt),
                    read_only=reading,
                    shallow=t.shallow,
                    discard=(not reading and disk.sparse),
                )
                t.export_id = export.id
                t.ticket_url = export.nbd_url
                t.size = disk.provisioned_size
            else:
                t.ticket_url = f"file://{path}"
                if reading:
                    t.size = path.stat().st_size
                else:
                    t.size = int(disk.provisioned_size * QCOW_OVERHEAD_FACTOR) + QCOW_HEADER_BYTES
            t.ticket_id = new_id()
            e.issued_tickets.append(t.ticket_id)
            _install_ticket(e, t)
        except Exception:
            log.exception("transfer %s: preparing the image failed", t.id)
            _release(e, t)
            t.phase = "finished_failure"
            t.finish_time = now_iso()
            _end_disk(e, t, ok=False)
            e.save()
            return
        t.phase = "transferring"
        e.save()
        log.info("transfer %s: transferring, ticket %s", t.id, t.ticket_id)


def _fmt(fmt: str) -> Literal["raw", "cow"]:
    return "cow" if fmt == "cow" else "raw"


def _install_ticket(e: Engine, t: ImageTransfer) -> None:
    assert t.ticket_id is not None
    disk = e.state.disks[t.disk_id]
    e.dataplane.add_ticket(
        ticket_id=t.ticket_id,
        url=t.ticket_url,
        size=t.size,
        ops=["read"] if t.direction == "download" else ["write"],
        timeout=TICKET_TIMEOUT_S,
        # 0 disables the engine's inactivity check; the daemon still needs a value.
        inactivity_timeout=t.inactivity_timeout if t.inactivity_timeout > 0 else 24 * 3600,
        sparse=disk.sparse,
        dirty=t.dirty,
        transfer_id=t.id,
        filename=f"{disk.alias}.raw" if t.format == "raw" else f"{disk.alias}.qcow2",
    )
    _last_renewal[t.ticket_id] = time.monotonic()
    t.ticket_expired = False


def _remove_ticket(e: Engine, t: ImageTransfer) -> None:
    if t.ticket_id is not None:
        try:
            e.dataplane.remove_ticket(t.ticket_id)
        except Exception:
            log.exception("transfer %s: removing ticket %s failed", t.id, t.ticket_id)
        _last_renewal.pop(t.ticket_id, None)
    t.active = False


def _release(e: Engine, t: ImageTransfer) -> None:
    """Remove the ticket and the export."""
    _remove_ticket(e, t)
    if t.export_id is not None:
        try:
            e.dataplane.unexport(t.export_id)
        except Exception:
            log.exception("transfer %s: unexport failed", t.id)
        t.export_id = None


def _end_disk(e: Engine, t: ImageTransfer, *, ok: bool) -> None:
    """After the transfer: unlock the disk, or delete it after a failed upload."""
    from rhvfs.sim import api_disks

    disk = e.state.disks.get(t.disk_id)
    if disk is None or t.backup_id is not None:
        return
    if t.direction == "upload" and not ok:
        log.info("transfer %s: upload failed, removing disk %s", t.id, disk.id)
        api_disks.drop_disk(e, disk)
        return
    if disk.lock_reason == "transfer":
        disk.status = "ok"
        disk.lock_reason = ""


def _verify_upload(e: Engine, t: ImageTransfer) -> bool:
    disk = e.state.disks.get(t.disk_id)
    if disk is None:
        return False
    vol = disk.volume(t.vol_id)
    if vol is None:
        return False
    try:
        info = e.storage.volume_info(disk.sd_id, disk.id, vol.id)
    except Exception:
        log.exception("transfer %s: the uploaded image is not valid", t.id)
        return False
    if vol.fmt == "cow" and vol.parent_id is None and info.backing_vol_id is not None:
        log.error("transfer %s: uploaded qcow2 base volume has a backing file", t.id)
        return False
    if vol.fmt == "cow" and vol.parent_id is not None and info.backing_vol_id != vol.parent_id:
        log.error("transfer %s: uploaded qcow2 layer names the wrong backing file", t.id)
        return False
    return True


def _advance(e: Engine, transfer_id: str, phases: list[str], ok: bool) -> None:
    """Walk the remaining phases one step at a time, then end the disk state."""
    with e.state.lock:
        t = e.state.transfers.get(transfer_id)
        if t is None:
            return
        t.phase = phases[0]
        if len(phases) > 1:
            e.tasks.step(_advance, e, transfer_id, phases[1:], ok)
        else:
            t.finish_time = now_iso()
            _end_disk(e, t, ok=ok)
            log.info("transfer %s: %s", t.id, t.phase)
        e.save()


def _finalize_step(e: Engine, transfer_id: str) -> None:
    with e.state.lock:
        t = e.state.transfers.get(transfer_id)
        if t is None or t.phase != "finalizing_success":
            return
        _release(e, t)
        ok = True
        if t.direction == "upload":
            ok = _verify_upload(e, t)
        if ok:
            _advance(e, t.id, ["finished_success"], True)
        else:
            disk = e.state.disks.get(t.disk_id)
            if disk is not None:
                disk.status = "illegal"
            _advance(e, t.id, ["finalizing_failure", "finished_failure"], False)


def finalize(e: Engine, t: ImageTransfer) -> None:
    if is_finished(t) or t.phase.startswith("finalizing") or t.phase.startswith("cancelled"):
        return
    if t.phase not in ("transferring", "paused_user", "paused_system", "initializing"):
        raise conflict(f"Cannot finalize transfer in phase {t.phase}.")
    t.phase = "finalizing_success"
    e.save()
    e.tasks.step(_finalize_step, e, t.id)


def cancel(e: Engine, t: ImageTransfer, *, by: str = "user") -> None:
    if is_finished(t) or t.phase.startswith("finalizing") or t.phase.startswith("cancelled"):
        return
    _release(e, t)
    if by == "user":
        t.phase = "cancelled_user"
        phases = ["finalizing_cleanup", "finished_cleanup", "finished_failure"]
    else:
        t.phase = "cancelled_system"
        phases = ["finalizing_failure", "finished_failure"]
    e.save()
    log.info("transfer %s: %s", t.id, t.phase)
    e.tasks.step(_advance, e, t.id, phases, False)


def pause_system(e: Engine, t: ImageTransfer) -> None:
    """The engine pauses the transfer (inactivity with policy pause, or a fault)."""
    if t.phase not in ("transferring", "resuming"):
        raise conflict(f"Cannot pause transfer in phase {t.phase}.")
    _remove_ticket(e, t)
    t.phase = "paused_system"
    e.save()
    log.info("transfer %s: paused_system", t.id)


def expire_ticket(e: Engine, t: ImageTransfer) -> None:
    """Fault: the ticket disappears while the transfer stays `transferring`."""
    if t.ticket_id is not None:
        try:
            e.dataplane.remove_ticket(t.ticket_id)
        except Exception:
            log.exception("expiring ticket %s failed", t.ticket_id)
    t.ticket_expired = True
    t.active = False
    e.save()


def _resume_step(e: Engine, transfer_id: str) -> None:
    with e.state.lock:
        t = e.state.transfers.get(transfer_id)
        if t is None or t.phase != "resuming":
            return
        try:
            _install_ticket(e, t)
        except Exception:
            log.exception("transfer %s: re-adding the ticket failed", t.id)
            t.phase = "paused_system"
            e.save()
            return
        t.phase = "transferring"
        e.save()


def sweep(e: Engine, *, now: datetime.datetime | None = None) -> None:
    """Forget finished transfers like the engine does (15 min after success, 30 after failure)."""
    now = now or datetime.datetime.now(datetime.UTC)
    with e.state.lock:
        for t in list(e.state.transfers.values()):
            if not is_finished(t) or t.finish_time is None:
                continue
            keep_s = KEEP_SUCCESS_S if t.phase == "finished_success" else KEEP_FAILURE_S
            if (now - parse_iso(t.finish_time)).total_seconds() >= keep_s:
                del e.state.transfers[t.id]
                e.save()


def poll(e: Engine) -> None:
    """One inactivity/renewal pass over the transferring transfers."""
    st = e.state
    with st.lock:
        for t in list(st.transfers.values()):
            if t.phase != "transferring" or t.ticket_id is None or t.ticket_expired:
                continue
            try:
                status = e.dataplane.ticket_status(t.ticket_id)
            except Exception:
                log.exception("transfer %s: ticket status failed", t.id)
                continue
            if status is None:
                t.active = False
                continue
            t.active = bool(status.get("active"))
            t.transferred = int(status.get("transferred") or 0)
            now = time.monotonic()
            if now - _last_renewal.get(t.ticket_id, now) >= RENEW_EVERY_S:
                try:
                    e.dataplane.extend_ticket(t.ticket_id, TICKET_TIMEOUT_S)
                    _last_renewal[t.ticket_id] = now
                except Exception:
                    log.exception("transfer %s: renewing the ticket failed", t.id)
            # the engine's rule (TransferDiskImageCommand): the daemon's ticket idle time
            # (whole seconds since its last request ended, 0 while one runs; every request,
            # a flush too, restarts it) *above* the timeout, and no request running
            idle = float(status.get("idle_time") or 0)
            if t.inactivity_timeout > 0 and not t.active and idle > t.inactivity_timeout:
                policy = t.timeout_policy
                if policy == "legacy":
                    policy = "cancel" if t.direction == "download" else "pause"
                log.info(
                    "transfer %s: idle %.1f s > %d s, policy %s",
                    t.id,
                    idle,
                    t.inactivity_timeout,
                    policy,
                )
                if policy == "pause":
                    pause_system(e, t)
                else:
                    cancel(e, t, by="system")


def start_jobs(e: Engine) -> None:
    """Schedule the inactivity/renewal poller and the sweep of finished transfers."""
    e.tasks.every(POLL_INTERVAL_S, lambda: poll(e))
    e.tasks.every(SWEEP_INTERVAL_S, lambda: sweep(e))


# /imagetransfers


def list_transfers(e: Engine, req: Request) -> Response:
    with e.state.lock:
        found = search(
            req,
            list(e.state.transfers.values()),
            {"id": lambda t: t.id, "phase": lambda t: t.phase},
        )
        return xml(xmlio.render_list([conv.transfer(e, t) for t in found], "image_transfers"))


def add_transfer_handler(e: Engine, req: Request) -> Response:
    body = parse_body(req, types.ImageTransfer)
    with e.state.lock:
        t = add_transfer(e, body)
        return xml(
            xmlio.render(conv.transfer(e, t)), status=201, Location=href("imagetransfers", t.id)
        )


def get_transfer(e: Engine, req: Request, transfer: str) -> Response:
    with e.state.lock:
        return xml(xmlio.render(conv.transfer(e, get_or_404(e.state.transfers, transfer))))


def finalize_handler(e: Engine, req: Request, transfer: str) -> Response:
    with e.state.lock:
        finalize(e, get_or_404(e.state.transfers, transfer))
    return xml(action_done())


def cancel_handler(e: Engine, req: Request, transfer: str) -> Response:
    with e.state.lock:
        cancel(e, get_or_404(e.state.transfers, transfer))
    return xml(action_done())


def pause_handler(e: Engine, req: Request, transfer: str) -> Response:
    with e.state.lock:
        t = get_or_404(e.state.transfers, transfer)
        if t.direction != "upload":
            raise conflict("Cannot pause a download transfer.")
        if t.phase != "transferring":
            raise conflict(f"Cannot pause transfer in phase {t.phase}.")
        _remove_ticket(e, t)
        t.phase = "paused_user"
        e.save()
    return xml(action_done())


def resume_handler(e: Engine, req: Request, transfer: str) -> Response:
    with e.state.lock:
        t = get_or_404(e.state.transfers, transfer)
        if t.phase not in ("paused_user", "paused_system"):
            raise conflict(f"Cannot resume transfer in phase {t.phase}.")
        t.phase = "resuming"
        e.save()
        e.tasks.step(_resume_step, e, t.id)
    return xml(action_done())


def extend_handler(e: Engine, req: Request, transfer: str) -> Response:
    """Only refreshes the entity: tickets are renewed by the poller anyway."""
    with e.state.lock:
        get_or_404(e.state.transfers, transfer)
    return xml(action_done())


TRANSFERS: tuple[Route, ...] = (
    Route("GET", "/imagetransfers", list_transfers),
    Route("POST", "/imagetransfers", add_transfer_handler),
    Route("GET", "/imagetransfers/{transfer}", get_transfer),
)

TRANSFER_ACTIONS: tuple[Route, ...] = (
    Route("POST", "/imagetransfers/{transfer}/finalize", finalize_handler),
    Route("POST", "/imagetransfers/{transfer}/cancel", cancel_handler),
    Route("POST", "/imagetransfers/{transfer}/pause", pause_handler),
    Route("POST", "/imagetransfers/{transfer}/resume", resume_handler),
    Route("POST", "/imagetransfers/{transfer}/extend", extend_handler),
)

ROUTES: tuple[Route, ...] = (*TRANSFERS, *TRANSFER_ACTIONS)
