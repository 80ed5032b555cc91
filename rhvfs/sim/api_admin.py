"""Admin endpoints of the simulator (not part of oVirt), under `/rhvfs-sim/`.

Owns what tests and `rhvfs sim guest-write|fault` do to a running engine:
guest writes into a disk's active volume (refused while the disk is locked
for a snapshot, merge or copy), sha256 of a volume's guest-visible content
(waiting until no copy or merge works on the disk), and fault injection
(engine 5xx/delay, slow disk copies and merges, imageio connection drops
through the data plane's FaultProxy, a transfer forced to `paused_system`, an
expired ticket), the SSO counters (tokens issued, refused as expired), and
the engine-call counter (requests by method and path template; reset).
Authenticated by the admin token of `serve.json` (checked in `httpd`);
`ROUTES` is the admin router's table.
"""

from __future__ import annotations

import base64
import logging

from rhvfs.sim import api_transfers
from rhvfs.sim.api_base import Engine, get_or_404, lock_when_idle
from rhvfs.sim.disk_copy import TEMPLATE_SOURCE
from rhvfs.sim.faults import EngineFault, StorageDelay
from rhvfs.sim.httpd import (
    HttpError,
    Request,
    Response,
    Route,
    bad_request,
    conflict,
    json_response,
)
from rhvfs.sim.state import Disk, Vm

log = logging.getLogger(__name__)

# A guest cannot write to a disk being created, snapshotted, merged or copied.
_NO_GUEST_WRITES = ("snapshot", "creation", "copy", TEMPLATE_SOURCE)


def _find_vm(e: Engine, name_or_id: str) -> Vm:
    st = e.state
    vm = st.vms.get(name_or_id) or next((v for v in st.vms.values() if v.name == name_or_id), None)
    if vm is None:
        raise HttpError(404, "Not Found", f"no VM {name_or_id!r}")
    return vm


def _find_disk(e: Engine, vm: Vm | None, alias_or_id: str) -> Disk:
    st = e.state
    candidates = (
        [st.disks[a.disk_id] for a in vm.attachments if a.disk_id in st.disks]
        if vm
        else list(st.disks.values())
    )
    matches = [d for d in candidates if d.id == alias_or_id] or [
        d for d in candidates if d.alias == alias_or_id
    ]
    if not matches:
        raise HttpError(404, "Not Found", f"no disk {alias_or_id!r}")
    if len(matches) > 1:
        raise bad_request(
            f"disk alias {alias_or_id!r} is ambiguous; use the id", reason="Invalid value"
        )
    return matches[0]


def guest_write(e: Engine, req: Request) -> Response:
    doc = req.json()
    offset = int(doc.get("offset", -1))
    if offset < 0:
        raise bad_request("offset required")
    data = base64.b64decode(doc["data"]) if doc.get("data") is not None else None
    pattern = doc.get("pattern")
    size = doc.get("size")
    if (data is None) == (pattern is None):
        raise bad_request("exactly one of data or pattern+size")
    with e.state.lock:
        vm = _find_vm(e, doc["vm"]) if doc.get("vm") else None
        d = _find_disk(e, vm, str(doc["disk"]))
        if d.status == "locked" and d.lock_reason in _NO_GUEST_WRITES:
            raise conflict(f"disk {d.alias} is locked ({d.lock_reason})")
        vol = d.active
        try:
            e.storage.guest_write(
                d.sd_id,
                d.id,
                vol.id,
                offset=offset,
                data=data,
                pattern=None if pattern is None else int(pattern),
                size=None if size is None else int(size),
            )
        except Exception as err:
            raise conflict(f"guest write failed: {err}") from err
        return json_response({"disk_id": d.id, "image_id": vol.id})


def volume_sha256(e: Engine, req: Request) -> Response:
    disk_id = req.query.get("disk")
    if not disk_id:
        raise bad_request("disk required")
    with lock_when_idle(e, lambda: [get_or_404(e.state.disks, disk_id).id]):
        d = get_or_404(e.state.disks, disk_id)
        image = req.query.get("image") or d.active.id
        if d.volume(image) is None:
            raise HttpError(404, "Not Found", f"no volume {image} in disk {disk_id}")
        digest = e.storage.content_sha256(d.sd_id, d.id, image)
        return json_response({"disk_id": d.id, "image_id": image, "sha256": digest})


def add_fault(e: Engine, req: Request) -> Response:
    doc = req.json()
    kind = doc.get("kind")
    times = int(doc.get("times", 1))
    if kind in ("engine-error", "engine-delay"):
        fault = EngineFault(
            method=str(doc.get("method", "*")),
            path_glob=str(doc["path"]),
            status=int(doc.get("status", 500)) if kind == "engine-error" else 0,
            delay_s=float(doc.get("delay", 0)) if kind == "engine-delay" else 0.0,
            times=times,
        )
        e.faults.add(fault)
        return json_response({"added": kind})
    if kind == "storage-delay":
        try:
            e.faults.add_storage_delay(
                StorageDelay(op=str(doc.get("op")), delay_s=float(doc["delay"]), times=times)
            )
        except ValueError as err:
            raise bad_request(str(err), reason="Invalid value") from err
        return json_response({"added": kind})
    if kind == "drop-imageio":
        proxy = e.dataplane.fault_proxy
        if proxy is None:
            raise conflict("the data plane runs without a fault proxy")
        proxy.drop_after(int(doc.get("after_bytes", 0)), times=times)
        return json_response({"added": kind})
    if kind in ("pause-transfer", "expire-ticket"):
        with e.state.lock:
            t = get_or_404(e.state.transfers, str(doc["transfer"]))
            if kind == "pause-transfer":
                api_transfers.pause_system(e, t)
            else:
                api_transfers.expire_ticket(e, t)
        return json_response({"added": kind})
    if kind in ("invalidate-checkpoint", "break-checkpoint"):
        cp_id = str(doc["checkpoint"])
        with lock_when_idle(e, lambda: get_or_404(e.state.checkpoints, cp_id).disk_ids):
            cp = get_or_404(e.state.checkpoints, cp_id)
            if kind == "invalidate-checkpoint":
                cp.state = "invalid"
            else:
                # The record stays, the bitmaps are gone (a corrupted chain).
                for disk_id in cp.disk_ids:
                    d = e.state.disks.get(disk_id)
                    for vol in d.volumes if d is not None else []:
                        if vol.fmt != "cow" or d is None:
                            continue
                        names = {b.name for b in e.storage.list_bitmaps(d.sd_id, d.id, vol.id)}
                        if cp.id in names:
                            e.storage.remove_bitmap(d.sd_id, d.id, vol.id, cp.id)
            e.save()
        return json_response({"added": kind})
    if kind == "storage-domain":
        with e.state.lock:
            sd = next(
                (
                    x
                    for x in e.state.storage_domains.values()
                    if x.name == doc.get("name") or x.id == doc.get("name")
                ),
                None,
            )
            if sd is None:
                raise HttpError(404, "Not Found", f"no storage domain {doc.get('name')!r}")
            if doc.get("status") is not None:
                sd.status = str(doc["status"])
            if doc.get("capacity_bytes") is not None:
                sd.capacity_bytes = int(doc["capacity_bytes"])
            e.save()
        return json_response({"added": kind})
    if kind == "revoke-tokens":
        if e.auth is not None:
            e.auth.revoke_all()
        return json_response({"added": kind})
    raise bad_request(f"unknown fault kind {kind!r}", reason="Invalid value")


def clear_faults(e: Engine, req: Request) -> Response:
    e.faults.clear()
    if e.dataplane.fault_proxy is not None:
        e.dataplane.fault_proxy.clear()
    return json_response({"cleared": True})


def list_faults(e: Engine, req: Request) -> Response:
    return json_response({"engine": e.faults.list(), "storage": e.faults.list_storage()})


def auth_stats(e: Engine, req: Request) -> Response:
    if e.auth is None:
        raise conflict("the engine runs without SSO")
    return json_response(e.auth.stats())


def _calls_doc(counts: dict[tuple[str, str], int]) -> dict[str, object]:
    return {
        "calls": [
            {"method": method, "path": path, "count": n}
            for (method, path), n in sorted(counts.items())
        ],
        "total": sum(counts.values()),
    }


def engine_calls(e: Engine, req: Request) -> Response:
    """Engine requests so far by method and path template (`GET /vms/{vm}/nics`)."""
    return json_response(_calls_doc(e.calls.snapshot()))


def reset_engine_calls(e: Engine, req: Request) -> Response:
    """Zero the counter; answers the counts it had."""
    return json_response(_calls_doc(e.calls.reset()))


def list_transfers(e: Engine, req: Request) -> Response:
    with e.state.lock:
        return json_response(
            [
                {"id": t.id, "phase": t.phase, "disk_id": t.disk_id, "ticket_id": t.ticket_id}
                for t in e.state.transfers.values()
            ]
        )


def list_credentials(e: Engine, req: Request) -> Response:
    """Every imageio ticket id and SSO token issued so far (read-only; for leak checks)."""
    with e.state.lock:
        tickets = list(e.issued_tickets)
    tokens = e.auth.issued_tokens() if e.auth is not None else []
    return json_response({"tickets": tickets, "tokens": tokens})


ROUTES: tuple[Route, ...] = (
    Route("POST", "/guest-write", guest_write),
    Route("GET", "/volume-sha256", volume_sha256),
    Route("POST", "/faults", add_fault),
    Route("DELETE", "/faults", clear_faults),
    Route("GET", "/faults", list_faults),
    Route("GET", "/transfers", list_transfers),
    Route("GET", "/credentials", list_credentials),
    Route("GET", "/auth", auth_stats),
    Route("GET", "/calls", engine_calls),
    Route("DELETE", "/calls", reset_engine_calls),
)
