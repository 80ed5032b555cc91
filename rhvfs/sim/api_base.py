"""What every resource module shares: the `Engine` context, lookups, search, refs.

Owns the glue between the state records and the REST handlers: finding
records or answering 404, resolving inbound references given by id or by
name, the engine's search subset (`name=x and status=up`, `*`, `page N`), the
409 rules about locked disks, and hrefs of nested references. It performs no
storage operation itself.

The state lock and storage work (the invariant every handler and step keeps):

- `State.lock` guards every record. Handlers and steps hold it while they
  read or change records, and for short storage commands (a qcow2 overlay, a
  bitmap, a deletion, a qemu-nbd export).
- Storage work that grows with the data (copying a disk for a new VM or
  template, merging a snapshot away) runs in a background step *without* the
  lock, in three parts: under the lock the step checks its records and adds
  the disks whose volume files it changes to `Engine.busy_disks`; without
  the lock it runs qemu-img; under the lock again it commits the records and
  removes the disks from `busy_disks`.
- The request that started such work marked everything it involves first,
  as the engine does: the disks `locked` (and a new VM `image_locked`, a new
  template `locked`, the source VM's disks `locked` for a template, the
  source snapshot `locked` for a clone). So while the lock is free,
  conflicting requests get the engine's 409 from those marks, and the
  records the step commits to cannot change under it. Reads (`GET`) answer
  meanwhile, showing the marks.
- A busy disk is always `locked`. A handler that runs a storage command on a
  disk under the lock either refuses locked disks (409) or waits until the
  disk is idle (`lock_when_idle`); it never waits for a storage lock while
  holding `State.lock`.
- Background steps run one at a time (`Tasks`), so two storage steps never
  overlap, with or without the lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ovirtsdk4 import types

from rhvfs.sim import xmlio
from rhvfs.sim.dataplane import DataPlane
from rhvfs.sim.faults import Faults
from rhvfs.sim.httpd import Auth, CallCounter, Request, bad_request, conflict, not_found
from rhvfs.sim.state import Disk, State, Vm
from rhvfs.sim.storage import Storage
from rhvfs.sim.tasks import Tasks

log = logging.getLogger(__name__)

T = TypeVar("T")

href = xmlio.href


@dataclasses.dataclass
class Engine:
    """Everything a handler or a background step needs."""

    state: State
    storage: Storage
    dataplane: DataPlane
    tasks: Tasks
    faults: Faults
    run_dir: Path
    # Host name put into transfer URLs (must match the imageio certificate).
    imageio_host: str = "localhost"
    auth: Auth | None = None
    # Engine requests by (method, path template); `httpd.App` counts into it.
    calls: CallCounter = dataclasses.field(default_factory=CallCounter)
    # Disks whose volume files a background step is changing without holding
    # `State.lock` (always `locked` disks). Read and changed under the lock.
    busy_disks: set[str] = dataclasses.field(default_factory=set)
    # Every imageio ticket id handed out (tests check that none leaks); never pruned.
    issued_tickets: list[str] = dataclasses.field(default_factory=list)

    def save(self) -> None:
        self.state.save()


# How long a handler waits for a disk's out-of-lock storage work before a 409.
IDLE_WAIT_S = 600.0


@contextlib.contextmanager
def lock_when_idle(
    e: Engine, disk_ids: Callable[[], Iterable[str]], *, timeout_s: float = IDLE_WAIT_S
) -> Iterator[None]:
    """Hold `State.lock` at a moment when none of `disk_ids()` is busy.

    For handlers that run storage commands on disks under the lock: they
    wait (without the lock) for a copy or merge to commit instead of reading
    half of it or waiting on its storage lock. `disk_ids` runs under the lock
    and may raise (404). 409 after `timeout_s` seconds.
    """
    lock = e.state.lock
    deadline = time.monotonic() + timeout_s
    while True:
        lock.acquire()
        try:
            busy = sorted(set(disk_ids()) & e.busy_disks)
        except BaseException:
            lock.release()
            raise
        if not busy:
            break
        lock.release()
        if time.monotonic() > deadline:
            raise conflict(f"Cannot proceed. Disk {busy[0]} is busy. Please try again later.")
        time.sleep(0.05)
    try:
        yield
    finally:
        lock.release()


def get_or_404(table: dict[str, T], record_id: str) -> T:
    record = table.get(record_id)
    if record is None:
        raise not_found(record_id)
    return record


def by_id_or_name(table: dict[str, T], ref: Any, what: str) -> T:
    """Resolve `<x id="..."/>` or `<x><name>...</name></x>` from a request body."""
    if ref is None:
        raise bad_request(f"{what} required")
    ref_id = getattr(ref, "id", None)
    if ref_id:
        record = table.get(ref_id)
        if record is None:
            raise bad_request(f"{what} {ref_id} not found", reason="Entity not found")
        return record
    name = getattr(ref, "name", None)
    if name:
        for record in table.values():
            if getattr(record, "name", None) == name:
                return record
        raise bad_request(f"{what} {name!r} not found", reason="Entity not found")
    raise bad_request(f"{what} id or name required")


# search


_TEXT_FIELDS = {"name", "alias", "description"}
_PAGE = re.compile(r"(?:^|\s+and\s+|\s+)page\s+(\d+)\s*$", re.IGNORECASE)


def search(
    req: Request,
    records: Sequence[T],
    fields: dict[str, Callable[[T], str | None | list[str]]],
) -> list[T]:
    """Filter by the `search` query and `max` (with `page N`).

    The query is terms `field=value` or `field!=value` (`*` wildcards)
    joined by `and` and `or` (`and` binds tighter). A field whose getter
    returns a list (a VM's tags) matches `=` when any of its values does, and
    `!=` when none does."""
    query = req.query.get("search", "").strip()
    case_sensitive = req.query.get("case_sensitive", "false").lower() == "true"
    result = list(records)
    page = 0
    m = _PAGE.search(query)
    if m:
        page = int(m.group(1))
        query = query[: m.start()].strip()
    if query:
        lowered = {k.lower(): v for k, v in fields.items()}
        alternatives = [
            [
                _term(term, query, lowered, case_sensitive)
                for term in re.split(r"\s+and\s+", conj, flags=re.IGNORECASE)
            ]
            for conj in re.split(r"\s+or\s+", query, flags=re.IGNORECASE)
        ]
        result = [r for r in result if any(all(t(r) for t in conj) for conj in alternatives)]
    limit = int(req.query["max"]) if req.query.get("max", "").lstrip("-").isdigit() else -1
    if page:
        size = limit if limit > 0 else len(result) or 1
        result = result[(page - 1) * size : page * size]
    elif limit >= 0:
        result = result[:limit]
    return result


def _term(
    term: str,
    query: str,
    fields: dict[str, Callable[[T], str | None | list[str]]],
    case_sensitive: bool,
) -> Callable[[T], bool]:
    """One `field=value` / `field!=value` term as a predicate on records."""
    m = re.fullmatch(r"\s*([\w.]+)\s*(!=|=)\s*(.*?)\s*", term)
    if m is None:
        raise bad_request(f"Cannot parse search {query!r}", reason="Invalid value")
    field, op, value = m.group(1).lower(), m.group(2), m.group(3)
    getter = fields.get(field)
    if getter is None:
        raise bad_request(f"Unknown search field {field!r}", reason="Invalid search")
    pattern = value.strip("\"'")
    # Enum-like fields (status=Up) match regardless of case, as on the engine.
    exact = case_sensitive and field in _TEXT_FIELDS

    def matches(record: T) -> bool:
        got = getter(record)
        values = got if isinstance(got, list) else [got]
        hit = any(_match(v, pattern, exact) for v in values)
        return hit if op == "=" else not hit

    return matches


def _match(value: str | None, pattern: str, case_sensitive: bool) -> bool:
    if value is None:
        return False
    if not case_sensitive:
        value, pattern = value.lower(), pattern.lower()
    return fnmatch.fnmatchcase(value, pattern)


# locks and 409 rules


def check_disk_unlocked(disk: Disk) -> None:
    if disk.status == "locked":
        raise conflict(
            f"Cannot proceed. Disk {disk.alias} is locked. Please try again in a few minutes."
        )
    if disk.status == "illegal":
        raise conflict(f"Cannot proceed. Disk {disk.alias} status is illegal.")


def vm_busy(e: Engine, vm: Vm) -> str | None:
    """Why the VM cannot start another snapshot/backup now, or None."""
    for sid in vm.snapshot_ids:
        snap = e.state.snapshots.get(sid)
        if snap is not None and snap.status == "locked":
            return "Snapshot is currently being created or removed for VM " + vm.name
    for b in e.state.backups.values():
        if b.vm_id == vm.id and b.phase not in ("succeeded", "failed"):
            return f"VM {vm.name} is locked: backup {b.id} is in progress"
    return None


def volume_file(e: Engine, disk: Disk, vol_id: str) -> Path:
    return e.storage.volume_path(disk.sd_id, disk.id, vol_id)


def allocated_bytes(e: Engine, disk: Disk, vol_ids: Sequence[str] | None = None) -> int:
    total = 0
    for vol in disk.volumes:
        if vol_ids is not None and vol.id not in vol_ids:
            continue
        try:
            total += os.stat(volume_file(e, disk, vol.id)).st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def sd_used_bytes(e: Engine, sd_id: str) -> int:
    return sum(allocated_bytes(e, d) for d in e.state.disks.values() if d.sd_id == sd_id)


def sd_committed_bytes(e: Engine, sd_id: str) -> int:
    return sum(d.provisioned_size for d in e.state.disks.values() if d.sd_id == sd_id)


# nested references with hrefs


def with_href(obj: T, target: str) -> T:
    """SDK types take `href` as an attribute, not as a constructor argument."""
    obj.href = target  # type: ignore[attr-defined]
    return obj


def ref_vm(vm_id: str) -> types.Vm:
    return with_href(types.Vm(id=vm_id), href("vms", vm_id))


def ref_cluster(cluster_id: str) -> types.Cluster:
    return with_href(types.Cluster(id=cluster_id), href("clusters", cluster_id))


def ref_dc(dc_id: str) -> types.DataCenter:
    return with_href(types.DataCenter(id=dc_id), href("datacenters", dc_id))


def ref_host(host_id: str) -> types.Host:
    return with_href(types.Host(id=host_id), href("hosts", host_id))


def ref_sd(sd_id: str) -> types.StorageDomain:
    return with_href(types.StorageDomain(id=sd_id), href("storagedomains", sd_id))


def ref_disk(disk_id: str) -> types.Disk:
    return with_href(types.Disk(id=disk_id), href("disks", disk_id))


def ref_template(template_id: str) -> types.Template:
    return with_href(types.Template(id=template_id), href("templates", template_id))


def ref_snapshot(vm_id: str, snapshot_id: str) -> types.Snapshot:
    return with_href(types.Snapshot(id=snapshot_id), href("vms", vm_id, "snapshots", snapshot_id))


def ref_tag(tag_id: str) -> types.Tag:
    return with_href(types.Tag(id=tag_id), href("tags", tag_id))


def ref_vnic_profile(profile_id: str) -> types.VnicProfile:
    return with_href(types.VnicProfile(id=profile_id), href("vnicprofiles", profile_id))


def ref_network(network_id: str) -> types.Network:
    return with_href(types.Network(id=network_id), href("networks", network_id))


def enum(cls: type, value: str | None) -> Any:
    return None if value is None else cls(value)


def parse_body(req: Request, cls: type) -> Any:
    """The request body as an SDK object of `cls` (400 otherwise)."""
    try:
        obj = xmlio.parse(req.body)
    except ValueError as err:
        raise bad_request(str(err), reason="Invalid value") from err
    if not isinstance(obj, cls):
        raise bad_request(
            f"Expected {cls.__name__}, got {type(obj).__name__}", reason="Invalid value"
        )
    return obj


def action_done(**fields: Any) -> bytes:
    return xmlio.render(types.Action(status="complete", **fields))
