"""Content of a backup set's configuration files, and their announced sizes.

Owns ``manifest.json`` (what a restore and a human need to know about the set),
the padding rule that keeps sizes announced before a session exact when the
session's real content is served (trailing whitespace, valid for JSON and
XML), and the fingerprints that decide when an owner "visibly changed".

Must not: talk to the engine (callers pass the data in), serve reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import rhvfs
from rhvfs.engine.types import Disk, DiskAttachment, Nic, Template, Vm
from rhvfs.errors import DataIntegrityError

PAD_ROUND_BYTES = 64 * 1024
PAD_HEADROOM_BYTES = 16 * 1024
#: Placeholder ids of the same length as real ones, for content generated before a session.
NO_ID = "00000000-0000-0000-0000-000000000000"
#: mtime of an owner without a creation time (2001-01-01T00:00:00Z).
_FALLBACK_EPOCH_S = 978307200


@dataclasses.dataclass(frozen=True)
class OwnerData:
    """Everything the configuration files are made of, fetched from the engine at one time."""

    kind: str  # vm | template
    entity: Vm | Template
    attachments: tuple[DiskAttachment, ...]
    nics: tuple[Nic, ...]
    ovf: bytes
    xml: bytes
    cluster_names: Mapping[str, str]
    storage_domain_names: Mapping[str, str]
    ovf_available: bool = True


def missing_ovf(kind: str, name: str) -> bytes:
    """A well-formed, empty OVF envelope for an owner the engine has no OVF for."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<!-- rhvfs: the engine returned no OVF for {kind} {_xml_comment(name)}; see vm.xml -->\n"
        '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" ovf:version="0.9"/>\n'
    ).encode()


def _xml_comment(text: str) -> str:
    return text.replace("--", "- -")


def announced_size(content_len: int) -> int:
    """The size announced for a config file whose content is ``content_len`` bytes today.

    Rounded up to 64 KiB after 16 KiB of headroom, so the content generated
    later in a session (a new snapshot in the OVF, longer ids) still fits.
    """
    return -(-(content_len + PAD_HEADROOM_BYTES) // PAD_ROUND_BYTES) * PAD_ROUND_BYTES


def pad_to(content: bytes, size: int, *, what: str) -> bytes:
    """``content`` followed by whitespace up to exactly ``size`` bytes; raises if it does not fit."""
    extra = size - len(content)
    if extra < 0:
        raise DataIntegrityError(
            f"{what} is {len(content)} bytes but {size} were announced; refusing to truncate it"
        )
    if extra == 0:
        return content
    return content + b" " * (extra - 1) + b"\n"


def disk_summary(
    att: DiskAttachment,
    *,
    disk: Disk,
    file_name: str,
    storage_domain_names: Mapping[str, str],
) -> dict[str, object]:
    """One disk of the manifest; ``disk`` is the disk as in the snapshot (its volume id)."""
    sd_id = disk.storage_domain_id or att.disk.storage_domain_id
    return {
        "id": disk.id,
        "alias": disk.alias or att.disk.alias,
        "file": file_name,
        "size": disk.provisioned_size,
        "actual_size": disk.actual_size,
        "format": disk.format,
        "sparse": disk.sparse,
        "interface": att.interface,
        "bootable": att.bootable,
        "active": att.active,
        "read_only": att.read_only,
        "storage_domain": {
            "id": sd_id,
            "name": storage_domain_names.get(sd_id or "", None),
        },
        "image_id": disk.image_id,
        "content_type": disk.content_type or att.disk.content_type,
        "shareable": disk.shareable,
        "wipe_after_delete": disk.wipe_after_delete,
        "backup": att.disk.backup,
        "backup_mode": "full",
        "description": att.disk.description,
    }


def nic_summary(nic: Nic) -> dict[str, object]:
    return {
        "id": nic.id,
        "name": nic.name,
        "interface": nic.interface,
        "mac": nic.mac,
        "vnic_profile": {"id": nic.vnic_profile_id, "name": nic.vnic_profile_name},
        "network": nic.network_name,
        "linked": nic.linked,
        "plugged": nic.plugged,
    }


def build_manifest(
    data: OwnerData,
    *,
    disks: Sequence[Disk],
    file_names: Mapping[str, str],
    snapshot_id: str | None,
    backup_time: datetime,
    session_id: str | None,
) -> bytes:
    """``manifest.json`` of a full set. ``disks`` are the disks as of the snapshot."""
    entity = data.entity
    atts = {a.disk.id: a for a in data.attachments}
    owner: dict[str, object] = {
        "id": entity.id,
        "name": entity.name,
        "status": entity.status,
        "cluster": {
            "id": entity.cluster_id,
            "name": data.cluster_names.get(entity.cluster_id or "", None),
        },
        "description": entity.description,
        "memory": entity.memory,
        "creation_time": _iso(entity.creation_time),
    }
    if isinstance(entity, Vm):
        owner["template_id"] = entity.template_id
        owner["os_type"] = entity.os_type
        owner["type"] = entity.type
        owner["cpu"] = {
            "sockets": entity.cpu_sockets,
            "cores": entity.cpu_cores,
            "threads": entity.cpu_threads,
        }
    doc = {
        "format": "rhvfs-backup-set",
        "format_version": 1,
        "rhvfs_version": rhvfs.__version__,
        "kind": data.kind,
        "set_type": "full",
        "backup_time": _iso(backup_time),
        "session_id": session_id,
        "snapshot_id": snapshot_id,
        "checkpoint_id": None,
        data.kind: owner,
        "disks": [
            disk_summary(
                atts[d.id] if d.id in atts else DiskAttachment(disk=d),
                disk=d,
                file_name=file_names[d.id],
                storage_domain_names=data.storage_domain_names,
            )
            for d in disks
        ],
        "nics": [nic_summary(n) for n in data.nics],
        "config_files": {"ovf": "vm.ovf" if data.ovf_available else None, "api_xml": "vm.xml"},
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).isoformat()


_STOP_TIME = re.compile(rb"<stop_time>([^<]{1,64})</stop_time>")


def xml_stop_time(xml: bytes) -> datetime | None:
    """The VM's ``stop_time`` from its API XML: when it last stopped running (None if unknown)."""
    m = _STOP_TIME.search(xml)
    if m is None:
        return None
    try:
        return datetime.fromisoformat(m.group(1).decode("ascii").replace("Z", "+00:00"))
    except ValueError:
        return None


def shape_fingerprint(data: OwnerData) -> str:
    """Changes when the set's shape changes (disks, their sizes, nics): sizes are re-announced."""
    parts = [data.entity.id, data.entity.name]
    parts += sorted(
        f"{a.disk.id}:{a.disk.alias}:{a.disk.provisioned_size}" for a in data.attachments
    )
    parts += sorted(n.id for n in data.nics)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def data_fingerprint(data: OwnerData) -> str:
    """Changes when the owner's data may have changed while it was not running."""
    # stop_time moves whenever the guest ran: a preallocated disk's size and volume ids
    # stay the same when it writes, so they alone cannot tell.
    stop = xml_stop_time(data.xml)
    parts = [shape_fingerprint(data), str(data.entity.status), stop.isoformat() if stop else ""]
    parts += sorted(
        f"{a.disk.id}:{a.disk.image_id}:{a.disk.actual_size}:{a.disk.format}"
        for a in data.attachments
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def stable_mtime_ns(creation_time: datetime | None, fingerprint: str) -> int:
    """An mtime that changes only with ``fingerprint``: the creation second plus hash-derived ns.

    Tools that key on mtime (restic, rsync's quick check) then see an unchanged
    down VM or template as unchanged across runs and mounts, and a changed one
    as changed, without showing a date in the future.
    """
    base_s = int(creation_time.timestamp()) if creation_time is not None else _FALLBACK_EPOCH_S
    return base_s * 1_000_000_000 + int(fingerprint[:15], 16) % 1_000_000_000
