"""What a set's listing announces before its session: exact sizes and stable times.

Owns the padding rule that keeps the sizes announced for the configuration
files before a session exact when the session's real content is served
(``announced_size`` with headroom, ``pad_to`` with trailing whitespace, valid
for JSON and XML), the bounds that size ``vm.ovf`` and ``vm.xml`` from what
a listing knows (``config_size_bounds``: fetching every owner's OVF to list a
directory would cost one engine call per VM), the placeholder ids of content
made before a session, and the fingerprints that decide when an owner
"visibly changed" (new sizes, new mtime) and the mtimes derived from them.

Must not: talk to the engine (callers pass the data in), serve reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from datetime import datetime

from rhvfs.backupset._manifest import OwnerData
from rhvfs.backupset._names import OVF_NAME, XML_NAME
from rhvfs.engine.types import INLINED_FIELDS
from rhvfs.errors import DataIntegrityError

PAD_ROUND_BYTES = 64 * 1024
PAD_HEADROOM_BYTES = 16 * 1024
#: Placeholder ids of the same length as real ones, for content generated before a session.
NO_ID = "00000000-0000-0000-0000-000000000000"
#: mtime of an owner without a creation time (2001-01-01T00:00:00Z).
_FALLBACK_EPOCH_S = 978307200


def announced_size(content_len: int) -> int:
    """The size announced for a config file whose content is ``content_len`` bytes today.

    Rounded up to 64 KiB after 16 KiB of headroom, so the content generated
    later in a session (a new snapshot in the OVF, longer ids) still fits.
    """
    return -(-(content_len + PAD_HEADROOM_BYTES) // PAD_ROUND_BYTES) * PAD_ROUND_BYTES


#: ``config_size_bounds``: an OVF without disks or NICs, and what each disk, NIC and
#: character of the owner's own text (name, description, comment) may add to it. An
#: engine's OVF of a VM with one disk and one NIC is 8-15 KiB; these are generous.
OVF_BASE_BYTES = 32 * 1024
OVF_PER_DISK_BYTES = 4 * 1024
OVF_PER_NIC_BYTES = 2 * 1024
#: Each character of the owner's text may be written several times and escaped.
OVF_PER_TEXT_CHAR_BYTES = 12
#: The API XML (all content) is the entity's representation plus the OVF, escaped.
XML_BASE_BYTES = 16 * 1024


def config_size_bounds(data: OwnerData) -> dict[str, int]:
    """Upper bounds of the lengths of ``vm.ovf`` and ``vm.xml``, from what a listing knows
    (the entity, its disks and NICs; ``data.ovf``/``xml`` are not looked at).

    Listings announce ``announced_size`` of these (the headroom then holds what a session
    adds), so a set's sizes and times never need its OVF. Content that outgrows them
    when it is read is re-announced larger, as any content that grew.
    """
    entity = data.entity
    text = sum(
        len(x.encode("utf-8"))
        for x in (entity.name, entity.description, getattr(entity, "comment", ""))
    )
    ovf = (
        OVF_BASE_BYTES
        + OVF_PER_DISK_BYTES * len(data.attachments)
        + OVF_PER_NIC_BYTES * len(data.nics)
        + OVF_PER_TEXT_CHAR_BYTES * text
    )
    # The XML holds the OVF with <, > and & escaped (up to 5 bytes for 1) plus the entity.
    xml = XML_BASE_BYTES + 2 * ovf
    return {OVF_NAME: ovf, XML_NAME: xml}


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


def entity_stop_time(data: OwnerData) -> datetime | None:
    """When the owner last stopped running, as the engine's listing of it says (None for
    templates and VMs that never ran)."""
    stop: datetime | None = getattr(data.entity, "stop_time", None)
    return stop


def data_fingerprint(data: OwnerData) -> str:
    """Changes when the owner's data may have changed while it was not running."""
    # stop_time moves whenever the guest ran: a preallocated disk's size and volume ids
    # stay the same when it writes, so they alone cannot tell. The entity's, as listings
    # have it (they have no XML).
    stop = entity_stop_time(data)
    parts = [shape_fingerprint(data), str(data.entity.status), stop.isoformat() if stop else ""]
    parts += sorted(
        f"{a.disk.id}:{a.disk.image_id}:{a.disk.actual_size}:{a.disk.format}"
        for a in data.attachments
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _field_text(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else repr(value)


def config_fingerprint(data: OwnerData) -> str:
    """Changes when what the configuration files say may have changed (the owner's own
    settings, its disks' attachment and its NICs), from fields a listing and a fetch of
    the owner both carry (the owner's own fields, not the collections inlined with it)."""
    entity = data.entity
    parts = [data_fingerprint(data)]
    parts += [
        f"{f.name}={_field_text(getattr(entity, f.name))}"
        for f in dataclasses.fields(entity)
        if f.name not in INLINED_FIELDS
    ]
    parts += sorted(
        f"{a.disk.id}:{a.interface}:{a.bootable}:{a.active}:{a.read_only}" for a in data.attachments
    )
    parts += sorted(f"{n.id}:{n.name}:{n.interface}:{n.mac}" for n in data.nics)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


#: Within a set's second, images' mtimes have fewer nanoseconds than this and the
#: configuration files' at least this many: configuration is always the newest.
CONFIG_NS_FLOOR = 500_000_000


def set_second(when: datetime | None) -> int:
    """The whole second (Unix time) a set's times rest on, from an engine timestamp."""
    return int(when.timestamp()) if when is not None else _FALLBACK_EPOCH_S


def set_times_ns(second_s: int, data_fp: str, config_fp: str) -> tuple[int, int]:
    """(images' mtime, configuration files' mtime) of a set whose times rest on ``second_s``.

    Both keep that second, so tools that compare whole seconds (Bacula) see the
    date; the nanoseconds come from the fingerprints, so tools that compare
    nanoseconds (restic, borg, rsync) also see changes the date does not show.
    The configuration files are always newer than the images, by less than a
    second: borg 1.2 keeps in its files cache only the files of a run that are
    strictly older than the newest file it read in that run, so the images of a
    set read alone are cached and a second run of an unchanged set skips them.
    """
    base = second_s * 1_000_000_000
    image = base + int(data_fp[:15], 16) % CONFIG_NS_FLOOR
    config = base + CONFIG_NS_FLOOR + int(config_fp[:15], 16) % CONFIG_NS_FLOOR
    return image, config
