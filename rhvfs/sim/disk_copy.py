"""Disk copies for new VMs and templates (the engine's CopyImage), without the state lock.

Owns copying the guest-visible content of a disk's volume chain into the
base volume of a new disk: for a VM made from a template (the template's
disks), a VM cloned from a snapshot (the snapshot's volumes) and a template
made from a VM (the VM's active volumes). It knows nothing about HTTP.

How a copy keeps the lock protocol of `api_base` (the invariant):

1. `copy_disks()` runs in the request, under `State.lock`: it adds the new
   disks `locked` (reason "copy") and marks what the copy involves, as the
   engine does: the new VM `image_locked` or the new template `locked`; for
   a template, the source VM `image_locked` and its disks `locked` (reason
   "template"); for a clone, the source snapshot `locked`. Then it schedules
   one background step per disk. Conflicting requests (remove the VM, the
   template, the disks or the snapshot; snapshot, start, transfer or write
   the source disks...) get the engine's 409 from those marks.
2. The step takes the lock to look the records up and to put the new disk
   into `Engine.busy_disks`, then releases it and runs `qemu-img` (after any
   test-injected `storage_delay("copy")`). The source chain stays as it was:
   its disks or snapshot are locked, or (a template's disks) in use by the
   new VM, so nothing merges, writes or deletes it meanwhile.
3. It re-takes the lock to commit: the new disk `ok` (or `illegal` when the
   copy failed), out of `busy_disks`; the marks are cleared once the last
   copy of the VM or template is done.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from rhvfs.sim.api_base import Engine, volume_file
from rhvfs.sim.state import Attachment, Disk, State, Template, Vm, Volume, new_id

log = logging.getLogger(__name__)

# lock_reason of a template's source disks while they are copied.
TEMPLATE_SOURCE = "template"


@dataclasses.dataclass(frozen=True)
class CopyJob:
    """One disk to copy: `src_vol_id` of `src_disk_id` into `dst_disk_id` of `owner_id`."""

    owner_id: str  # the new VM or template
    src_disk_id: str
    src_vol_id: str
    dst_disk_id: str
    # A template: the VM it is made from (`image_locked` until the template is done).
    source_vm_id: str | None = None
    # A clone: the snapshot it is made from (`locked` until the VM is done).
    source_snapshot_id: str | None = None


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the out-of-lock part needs, read from the records under the lock."""

    src_path: Path
    src_fmt: str
    dst_sd_id: str
    dst_disk_id: str
    dst_vol_id: str
    dst_fmt: Literal["raw", "cow"]
    dst_sparse: bool


def copy_disks(
    e: Engine,
    owner: Vm | Template,
    sources: list[tuple[Attachment, Disk, str]],
    *,
    source_vm_id: str | None = None,
    source_snapshot_id: str | None = None,
) -> None:
    """Give `owner` copies of the (attachment, disk, volume id) sources (caller holds the lock).

    Marks the entities (see the module docstring) and schedules the copies;
    a template without disks becomes `ok` in a step of its own.
    """
    st = e.state
    snapshot_id = owner.active_snapshot_id if isinstance(owner, Vm) else None
    for a, src, vol_id in sources:
        vol = src.volume(vol_id)
        assert vol is not None
        d = Disk(
            id=new_id(),
            alias=src.alias,
            sd_id=src.sd_id,
            provisioned_size=src.provisioned_size,
            sparse=src.sparse,
            backup=src.backup,
            status="locked",
            description=src.description,
            volumes=[Volume(id=new_id(), fmt=src.volumes[0].fmt, snapshot_id=snapshot_id)],
            lock_reason="copy",
        )
        st.disks[d.id] = d
        owner.attachments.append(
            Attachment(disk_id=d.id, interface=a.interface, bootable=a.bootable, active=a.active)
        )
        job = CopyJob(
            owner_id=owner.id,
            src_disk_id=src.id,
            src_vol_id=vol_id,
            dst_disk_id=d.id,
            source_vm_id=source_vm_id,
            source_snapshot_id=source_snapshot_id,
        )
        e.tasks.step(_copy_step, e, job)
    if isinstance(owner, Template):
        owner.status = "locked"
        if not sources:
            e.tasks.step(_unlock_template, e, owner.id, source_vm_id)
    elif sources:
        owner.status = "image_locked"
    if not sources:
        return
    source_vm = st.vms.get(source_vm_id or "")
    if source_vm is not None:
        source_vm.status = "image_locked"
        for _, src, _ in sources:
            src.status = "locked"
            src.lock_reason = TEMPLATE_SOURCE
    snap = st.snapshots.get(source_snapshot_id or "")
    if snap is not None:
        snap.status = "locked"


def copy_template_disks(e: Engine, vm: Vm, template_id: str) -> None:
    """A VM made from a template gets copies of the template's disks (caller holds the lock)."""
    t = e.state.templates.get(template_id)
    if t is None:
        return
    sources = [
        (a, e.state.disks[a.disk_id], e.state.disks[a.disk_id].active.id)
        for a in t.attachments
        if a.disk_id in e.state.disks
    ]
    copy_disks(e, vm, sources)


def _copy_step(e: Engine, job: CopyJob) -> None:
    """Copy one disk: look up under the lock, copy without it, commit under it."""
    st = e.state
    with st.lock:
        plan = _plan(e, job)
        if plan is not None:
            e.busy_disks.add(job.dst_disk_id)
    ok = False
    try:
        if plan is not None:
            delay_s = e.faults.storage_delay("copy")
            if delay_s > 0:
                time.sleep(delay_s)
            _copy(e, plan)
            ok = True
    except Exception:
        log.exception("copying disk %s to %s failed", job.src_disk_id, job.dst_disk_id)
    finally:
        with st.lock:
            e.busy_disks.discard(job.dst_disk_id)
            _commit(e, job, ok=ok)


def _plan(e: Engine, job: CopyJob) -> _Plan | None:
    st = e.state
    src = st.disks.get(job.src_disk_id)
    dst = st.disks.get(job.dst_disk_id)
    if src is None or dst is None:
        return None
    vol = src.volume(job.src_vol_id)
    if vol is None:
        log.error("copying disk %s: volume %s is gone", src.id, job.src_vol_id)
        return None
    return _Plan(
        src_path=volume_file(e, src, vol.id),
        src_fmt=vol.fmt,
        dst_sd_id=dst.sd_id,
        dst_disk_id=dst.id,
        dst_vol_id=dst.active.id,
        dst_fmt="cow" if dst.active.fmt == "cow" else "raw",
        dst_sparse=dst.sparse,
    )


def _copy(e: Engine, plan: _Plan) -> None:
    """The guest-visible content of the chain ending at `src_path` into the new base volume."""
    path = plan.src_path
    with tempfile.TemporaryDirectory(dir=e.storage.root, prefix=".copy-") as tmp:
        if plan.src_fmt == "cow":
            flat = Path(tmp) / "flat.raw"
            subprocess.run(
                [
                    "qemu-img",
                    "convert",
                    "-U",
                    "-q",
                    "-f",
                    "qcow2",
                    "-O",
                    "raw",
                    str(path),
                    str(flat),
                ],
                check=True,
                capture_output=True,
            )
            path = flat
        e.storage.import_raw(
            plan.dst_sd_id,
            plan.dst_disk_id,
            plan.dst_vol_id,
            path,
            fmt=plan.dst_fmt,
            sparse=plan.dst_sparse,
        )


def _pending(st: State, attachments: list[Attachment]) -> bool:
    """Whether a copy into one of these disks is still to come."""
    return any(
        (d := st.disks.get(a.disk_id)) is not None and d.lock_reason == "copy" for a in attachments
    )


def _commit(e: Engine, job: CopyJob, *, ok: bool) -> None:
    """Record the copy's outcome and clear the marks the last copy leaves behind (lock held)."""
    st = e.state
    dst = st.disks.get(job.dst_disk_id)
    if dst is not None:
        dst.status = "ok" if ok else "illegal"
        dst.lock_reason = ""
    src = st.disks.get(job.src_disk_id)
    if src is not None and src.lock_reason == TEMPLATE_SOURCE:
        src.status = "ok"
        src.lock_reason = ""
    vm = st.vms.get(job.owner_id)
    if vm is not None and not _pending(st, vm.attachments):
        if vm.status == "image_locked":
            vm.status = "down"
        snap = st.snapshots.get(job.source_snapshot_id or "")
        if snap is not None and snap.status == "locked":
            snap.status = "ok"
    if job.owner_id in st.templates:
        _unlock_template(e, job.owner_id, job.source_vm_id)
    e.save()


def _unlock_template(e: Engine, template_id: str, source_vm_id: str | None) -> None:
    """A template whose copies are all done: `ok` (or `illegal`), its source VM `down` again."""
    st = e.state
    with st.lock:
        t = st.templates.get(template_id)
        if t is not None and t.status == "locked":
            if _pending(st, t.attachments):
                return
            disks = [st.disks.get(a.disk_id) for a in t.attachments]
            bad = any(d is None or d.status != "ok" for d in disks)
            t.status = "illegal" if bad else "ok"
            st.add_event(f"Template {t.name} creation {'failed' if bad else 'completed'}.")
        vm = st.vms.get(source_vm_id or "")
        if vm is not None and vm.status == "image_locked":
            vm.status = "down"
        e.save()
