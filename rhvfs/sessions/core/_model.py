"""Values that cross the VFS <-> sessions boundary: ``Owner`` and ``SetEntry``.

Owns the file-name and key conventions of a backup set (``vm.ovf``, ``vm.xml``,
``manifest.json``, ``<alias>--<diskid>.raw``). Must not: talk to the engine or
imageio, know about inodes or pyfuse3.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

OVF_NAME = "vm.ovf"
XML_NAME = "vm.xml"
MANIFEST_NAME = "manifest.json"
#: Configuration files in the order they are listed (before any image).
CONFIG_NAMES = (OVF_NAME, XML_NAME, MANIFEST_NAME)
CONFIG_PREFIX = "config:"
DISK_PREFIX = "disk:"


@dataclasses.dataclass(frozen=True)
class Owner:
    """Whose backup set: a VM or a template."""

    kind: Literal["vm", "template"]
    id: str
    name: str


@dataclasses.dataclass(frozen=True)
class SetEntry:
    """One file of a backup set (or of ``vms/<vm>/disks/``).

    ``key`` is stable within the owner (``config:vm.ovf``, ``disk:<disk_id>``);
    ``size`` and ``blocks`` (512-byte units, never 0 when size > 0) stay true
    when the file is read; ``mtime_ns`` is stable while the owner is unchanged.
    """

    name: str
    key: str
    size: int
    blocks: int
    mtime_ns: int
    disk_id: str | None = None


def config_key(name: str) -> str:
    return CONFIG_PREFIX + name


def disk_key(disk_id: str) -> str:
    return DISK_PREFIX + disk_id


def disk_id_of_key(key: str) -> str | None:
    """The disk id of a ``disk:<id>`` key, else None."""
    return key[len(DISK_PREFIX) :] if key.startswith(DISK_PREFIX) else None


def blocks_for(size_bytes: int) -> int:
    """st_blocks (512-byte units) for ``size_bytes`` allocated bytes; at least 1 when non-empty."""
    if size_bytes <= 0:
        return 0
    return max(1, -(-size_bytes // 512))


def escape_name(name: str) -> str:
    """A safe file name for ``name`` (the VFS's reversible escaping)."""
    try:
        from rhvfs.vfs.names import escape
    except ImportError:  # pragma: no cover - the VFS module not landed yet
        return name.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    return escape(name)


def set_image_name(alias: str, disk_id: str) -> str:
    """File name of a disk image inside ``@rhv/``: ``<alias>--<diskid>.raw`` (escaped)."""
    return escape_name(f"{alias}--{disk_id}.raw")


def disk_file_names(disks: list[tuple[str, str]]) -> dict[str, str]:
    """File names for ``vms/<vm>/disks/``: ``<alias>.raw``; colliding aliases get ``--<diskid>``.

    ``disks`` is a list of ``(disk_id, alias)``; returns ``{disk_id: file_name}``.
    """
    counts: dict[str, int] = {}
    for _, alias in disks:
        counts[alias] = counts.get(alias, 0) + 1
    names: dict[str, str] = {}
    for disk_id, alias in disks:
        if counts[alias] > 1:
            names[disk_id] = escape_name(f"{alias}--{disk_id}.raw")
        else:
            names[disk_id] = escape_name(f"{alias}.raw")
    return names
