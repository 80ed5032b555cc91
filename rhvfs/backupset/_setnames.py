"""Names and keys of incremental, differential and since-checkpoint sets.

Owns the set kinds and their directory names, the ``<set_id>|<inner>`` keys
that route a file to its set, and the unique file names of a set's
configuration and disks (``<set>`` = the backup's to-checkpoint id).

Must not: do I/O or know about sessions, transfers or the chain state.
"""

from __future__ import annotations

from typing import Literal

from rhvfs.sessions.core._model import escape_name

#: ``full`` is ``@rhv/`` itself served through the engine backup API (see ``open_full``).
SetKind = Literal["incremental", "differential", "since", "full"]
SET_KINDS: tuple[SetKind, ...] = ("incremental", "differential", "since")
#: Directory name of each set kind under ``/vms/<vm>/``.
SET_DIRS: dict[SetKind, str] = {
    "incremental": "@rhv-incremental",
    "differential": "@rhv-differential",
    "since": "@rhv-since",
    "full": "@rhv",
}
KEY_SEP = "|"


def set_key(set_id: str, inner: str) -> str:
    """The key of a file of an incremental set: ``<set_id>|config:vm.ovf`` / ``<set_id>|disk:<id>``."""
    return f"{set_id}{KEY_SEP}{inner}"


def is_incremental_key(key: str) -> bool:
    return KEY_SEP in key


def set_of_key(key: str) -> str:
    return key.split(KEY_SEP, 1)[0]


def config_names(set_id: str) -> dict[str, str]:
    """Unique config file names of a set: ``{"ovf": vm--<set>.ovf, "xml": ..., "manifest": ...}``."""
    return {
        "ovf": escape_name(f"vm--{set_id}.ovf"),
        "xml": escape_name(f"vm--{set_id}.xml"),
        "manifest": escape_name(f"manifest--{set_id}.json"),
    }


def disk_file_name(alias: str, disk_id: str, set_id: str, *, delta: bool) -> str:
    return escape_name(f"{alias}--{disk_id}--{set_id}.{'qcow2' if delta else 'raw'}")
