"""Restore options: the knobs of a restore, from the options file and mount defaults.

The options file is ``restore/<name>/rhvfs-restore.conf`` (``OPTIONS_FILE``),
written by the admin next to the backup set, before the set's data arrives.
It holds ``key = value`` lines; ``#`` and ``;`` start comments; an optional
``[restore]`` header line is ignored. Mount-level defaults are the
``restore_<key>`` settings of the config section (``Config.restore_defaults``);
the file overrides them key by key. Keys (names as in other RHV backup
products)::

    vm_name            = NAME        name of the restored VM (default: the directory's name);
                                     ``original``: the name of the VM the set was read from
    cluster            = NAME|ID     target cluster (default: the set's cluster)
    storage_domain     = NAME        one for all disks, and/or per disk: ID:NAME, ID:NAME
    vm_force_overwrite = yes|no      replace an existing VM of that name (only if it is down);
                                     it stays untouched until the new VM is complete (see
                                     ``rhvfs.sessions.restore._overwrite``)
    vm_switchon        = yes|no      start the VM once restored
    disk_interface     = IFACE       virtio|virtio_scsi|sata|ide, for all and/or per disk ID:IFACE
    disk_active        = yes|no      for all and/or per disk ID:yes
    disk_boot          = yes|no      bootable flag, for all and/or per disk ID:yes
    disk_names         = ID:ALIAS, … new disk aliases (a bare ALIAS applies to a one-disk set)
    nics               = auto|original|new|NIC:MAC, …   MAC addresses: auto (default) = the set's
                                     unless in use (a copy next to the original), then new;
                                     original = the set's or fail; new = engine-allocated;
                                     or explicit per NIC (by name or id; unlisted NICs: auto);
                                     or positional, the plugin's syntax: MAC|original|new|auto, …
                                     for the set's NICs in order (``C0:FF:EE:00:00:01,original``:
                                     the first NIC gets that MAC, the second keeps its own)
    vm_disks           = ID, …|all|none   restore only these disks; none = configuration only
    vm_exclude_disks   = ID, …       skip these disks
    vm_missing_disks   = fail|skip   a selected disk whose image never arrives (a set saved
                                     with the tool's exclude, not named in vm_exclude_disks):
                                     once the directory was quiet for ``partial_set_timeout``
                                     with everything else complete, fail naming it (default),
                                     or restore without it (``rhvfs.sessions.restore._partial``)
    template_name      = NAME        template sets: the template's name; VM sets: also make a
                                     template of this name from the restored VM (the engine
                                     copies its disks; ``create_template`` waits until ok)
    remove_base_vm     = yes|no      VM sets with template_name: remove the restored VM (and
                                     its disks) once the template is made (default yes, as the
                                     plugin does)

A disk may be named by its id or its alias in every per-disk value, and
``original`` (for all disks, or ``ID:original``) keeps the set's value:
``disk_interface = original`` is the default. Options
are frozen when the set's first data arrives; see ``rhvfs.sessions.restore._session``.

Must not: talk to the engine or touch files (callers pass text in).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from rhvfs.errors import RestoreError

OPTIONS_FILE = "rhvfs-restore.conf"
#: The ``vm_name`` value that means the name of the VM the set was read from.
ORIGINAL = "original"
_NIC_MODES = frozenset({"auto", "original", "new"})
#: Options file size limit (bytes); anything larger is not an options file.
OPTIONS_MAX_BYTES = 64 * 1024

INTERFACES = frozenset({"virtio", "virtio_scsi", "sata", "ide", "spapr_vscsi"})
KEYS = frozenset(
    {
        "vm_name",
        "cluster",
        "storage_domain",
        "vm_force_overwrite",
        "vm_switchon",
        "disk_interface",
        "disk_active",
        "disk_boot",
        "disk_names",
        "nics",
        "vm_disks",
        "vm_exclude_disks",
        "vm_missing_disks",
        "template_name",
        "remove_base_vm",
    }
)
_BOOL = {
    "yes": True,
    "true": True,
    "on": True,
    "1": True,
    "no": False,
    "false": False,
    "off": False,
    "0": False,
}

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class PerDisk(Generic[T]):
    """A value for all disks (``default``) with per-disk overrides keyed by disk id or alias."""

    default: T | None = None
    by_disk: Mapping[str, T] = dataclasses.field(default_factory=dict)

    def get(self, disk_id: str, alias: str) -> T | None:
        if disk_id in self.by_disk:
            return self.by_disk[disk_id]
        if alias in self.by_disk:
            return self.by_disk[alias]
        return self.default

    def keys(self) -> frozenset[str]:
        return frozenset(self.by_disk)


@dataclasses.dataclass(frozen=True)
class RestoreOptions:
    """Effective options of one restore; ``None`` means "as in the set"."""

    vm_name: str | None = None
    cluster: str | None = None
    storage_domain: PerDisk[str] = dataclasses.field(default_factory=PerDisk)
    vm_force_overwrite: bool = False
    vm_switchon: bool = False
    disk_interface: PerDisk[str] = dataclasses.field(default_factory=PerDisk)
    disk_active: PerDisk[bool] = dataclasses.field(default_factory=PerDisk)
    disk_boot: PerDisk[bool] = dataclasses.field(default_factory=PerDisk)
    disk_names: PerDisk[str] = dataclasses.field(default_factory=PerDisk)
    #: "auto", "original", "new", or "explicit" (then ``nic_macs`` holds NIC name/id -> MAC).
    nics: str = "auto"
    nic_macs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: None = all disks; an empty set = none (configuration-only restore).
    vm_disks: frozenset[str] | None = None
    vm_exclude_disks: frozenset[str] = frozenset()
    #: "fail" or "skip": what a selected disk that never arrived does to the restore.
    vm_missing_disks: str = "fail"
    template_name: str | None = None
    remove_base_vm: bool = True
    #: Positional ``nics`` (the plugin's syntax): per NIC of the set, in order, a MAC or
    #: "original", "new" or "auto"; NICs past the list: auto.
    nic_positions: tuple[str, ...] = ()

    def selects(self, disk_id: str, alias: str) -> bool:
        """True when the disk ``disk_id`` (alias ``alias``) is to be restored."""
        if disk_id in self.vm_exclude_disks or alias in self.vm_exclude_disks:
            return False
        if self.vm_disks is None:
            return True
        return disk_id in self.vm_disks or alias in self.vm_disks

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly view for ``.status``."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, PerDisk):
                v = {"default": v.default, "by_disk": dict(v.by_disk)}
            elif isinstance(v, frozenset):
                v = sorted(v)
            elif isinstance(v, Mapping):
                v = dict(v)
            out[f.name] = v
        return out


def parse_lines(text: str, *, source: str) -> dict[str, str]:
    """The ``key = value`` pairs of an options file; raises ``RestoreError`` on junk."""
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;" or line.lower() == "[restore]":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            key, sep, value = line.partition(":")
        if not sep:
            raise RestoreError(
                f"{source} line {lineno}: expected 'key = value', got {_clip(line)!r}"
            )
        key = key.strip().lower().removeprefix("restore_")
        if key not in KEYS:
            raise RestoreError(f"{source} line {lineno}: unknown option {_clip(key)!r}")
        out[key] = value.strip()
    return out


def _clip(text: str, limit: int = 80) -> str:
    """User text quoted in an error (``.status`` shows one line, not the whole file)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _bool(key: str, value: str) -> bool:
    try:
        return _BOOL[value.strip().lower()]
    except KeyError:
        raise RestoreError(f"option {key} must be yes or no, not {_clip(value)!r}") from None


def _items(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def _per_disk(key: str, value: str, convert: type[str] | type[bool]) -> PerDisk[object]:
    default: object | None = None
    by_disk: dict[str, object] = {}
    for item in _items(value):
        if item.lower() == ORIGINAL:  # the plugin's "as in the set": nothing to override
            continue
        left, sep, right = item.partition(":")
        if sep and right.strip().lower() == ORIGINAL:
            continue
        if sep and left.strip() and right.strip():
            target: object = right.strip()
            if convert is bool:
                target = _bool(key, right)
            by_disk[left.strip()] = target
        else:
            if default is not None:
                raise RestoreError(f"option {key} has two values for all disks: {_clip(value)!r}")
            default = _bool(key, item) if convert is bool else item
    return PerDisk(default=default, by_disk=by_disk)


def _check_interfaces(p: PerDisk[str]) -> None:
    for v in ([p.default] if p.default else []) + list(p.by_disk.values()):
        if v not in INTERFACES:
            raise RestoreError(
                f"option disk_interface: {_clip(v)!r} is not one of {', '.join(sorted(INTERFACES))}"
            )


def _disk_set(value: str) -> frozenset[str]:
    return frozenset(_items(value))


def build_options(
    *,
    defaults: Mapping[str, str],
    file_values: Mapping[str, str] | None = None,
) -> RestoreOptions:
    """Merge mount defaults with the options file (the file wins) and validate."""
    merged: dict[str, str] = {}
    for source, values in (("mount defaults", defaults), (OPTIONS_FILE, file_values or {})):
        for key, value in values.items():
            k = key.lower().removeprefix("restore_")
            if k not in KEYS:
                raise RestoreError(f"{source}: unknown restore option {_clip(key)!r}")
            merged[k] = value
    kw: dict[str, object] = {}
    for key, value in merged.items():
        if key in ("vm_name", "cluster", "template_name"):
            kw[key] = value.strip() or None
        elif key in ("vm_force_overwrite", "vm_switchon", "remove_base_vm"):
            kw[key] = _bool(key, value)
        elif key in ("storage_domain", "disk_interface", "disk_names"):
            kw[key] = _per_disk(key, value, str)
        elif key in ("disk_active", "disk_boot"):
            kw[key] = _per_disk(key, value, bool)
        elif key == "nics":
            kw.update(_nics(value))
        elif key == "vm_disks":
            v = value.strip().lower()
            kw[key] = None if v in ("", "all") else frozenset() if v == "none" else _disk_set(value)
        elif key == "vm_exclude_disks":
            kw[key] = _disk_set(value)
        elif key == "vm_missing_disks":
            v = value.strip().lower()
            if v not in ("fail", "skip"):
                raise RestoreError(f"option vm_missing_disks must be fail or skip, not {value!r}")
            kw[key] = v
    opts = RestoreOptions(**kw)  # type: ignore[arg-type]
    _check_interfaces(opts.disk_interface)
    return opts


def _nics(value: str) -> dict[str, object]:
    """``nics``: one mode, ``NIC:MAC`` pairs, and/or positional values (MAC or mode) for the
    set's NICs in order; a bare MAC is positional, ``name:MAC`` is named."""
    items = _items(value)
    if len(items) <= 1 and (not items or items[0].lower() in _NIC_MODES):
        return {"nics": items[0].lower() if items else "auto"}
    macs: dict[str, str] = {}
    positions: list[str] = []
    for item in items:
        if item.lower() in _NIC_MODES:
            positions.append(item.lower())
        elif _is_mac(item):
            positions.append(item.lower())
        else:
            name, sep, mac = item.partition(":")
            if not sep or not name.strip() or not _is_mac(mac.strip()):
                raise RestoreError(
                    "option nics: expected auto, original, new, NIC:MAC, … or MAC|original|new, "
                    f"… in NIC order; got {_clip(item)!r}"
                )
            macs[name.strip()] = mac.strip().lower()
    return {"nics": "explicit", "nic_macs": macs, "nic_positions": tuple(positions)}


def wanted_mac(
    opts: RestoreOptions, index: int, *, name: str, nic_id: str | None, set_mac: str | None
) -> tuple[str | None, bool]:
    """The MAC to ask for the set's NIC number ``index`` (0-based) and whether it is owed
    (True: fail when taken; False: a taken MAC falls back to a new one). None: a new MAC."""
    mode = opts.nics
    if mode == "explicit":
        named = opts.nic_macs.get(name) or (opts.nic_macs.get(nic_id) if nic_id else None)
        if named:
            return named, True
        mode = opts.nic_positions[index] if index < len(opts.nic_positions) else "auto"
        if mode not in _NIC_MODES:
            return mode, True  # a positional MAC
    if mode == "new":
        return None, False
    return set_mac, mode == "original"


def _is_mac(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 6 and all(len(p) == 2 and _is_hex(p) for p in parts)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def unknown_disk_keys(opts: RestoreOptions, known: Iterable[str]) -> list[str]:
    """Per-disk keys and disk selections that name no disk of the set (ids or aliases)."""
    names = set(known)
    used: set[str] = set()
    for p in (
        opts.storage_domain,
        opts.disk_interface,
        opts.disk_active,
        opts.disk_boot,
        opts.disk_names,
    ):
        used |= p.keys()
    used |= opts.vm_disks or frozenset()
    used |= opts.vm_exclude_disks
    return sorted(used - names)
