"""Every name of a backup set: kinds, directories, file names and file keys.

Owns:

- the set kinds (``SetKind``: the directory a set is served from, ``@rhv/``,
  ``@rhv-incremental/``, ``@rhv-differential/``, ``@rhv-since/<checkpoint>/``)
  and the set types a manifest records (``SetType``);
- the file names: ``vm.ovf``, ``vm.xml``, ``manifest.json`` of ``@rhv/``;
  ``vm--<set>.ovf``, ``vm--<set>.xml``, ``manifest--<set>.json`` of a set read
  through an engine backup (``<set>`` = its to-checkpoint id, or the backup id);
  images ``<alias>--<diskid>.raw`` (``@rhv/``) and
  ``<alias>--<diskid>--<set>.raw|.qcow2``; ``<alias>.raw`` in ``disks/``.
  ``ConfigFileName``/``ImageFileName`` make them (``encode``) and
  ``parse_file_name`` recognises any of them, also behind rsync's temporary
  name ``.<name>.XXXXXX``;
- the file keys (``FileKey``): the strings that name a file within its owner
  for the VFS (its inode identity) and the sessions: ``config:<name>``,
  ``disk:<disk_id>``, ``<set_id>|<inner key>`` for a file of an engine-backup
  set, ``disks/disk:<disk_id>`` for a file of ``disks/``. They must never
  change: inode numbers are derived from them.

Engine names become file names through ``_escape`` (the same escaping as the
rest of the tree).

Must not: do I/O, know about sessions, inodes or FUSE.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum

from rhvfs.backupset._escape import escape, unescape


class SetKind(StrEnum):
    """Which set a directory serves (``@rhv/`` or one of the engine-backup set directories)."""

    FULL = "full"
    INCREMENTAL = "incremental"
    DIFFERENTIAL = "differential"
    SINCE = "since"


class SetType(StrEnum):
    """What a set holds, as its manifest records it: everything, or changes since a base set."""

    FULL = "full"
    INCREMENTAL = "incremental"
    DIFFERENTIAL = "differential"


#: Directory name of each set kind under ``/vms/<vm>/`` (``since`` has one subdirectory
#: per checkpoint).
SET_DIRS: Mapping[SetKind, str] = {
    SetKind.INCREMENTAL: "@rhv-incremental",
    SetKind.DIFFERENTIAL: "@rhv-differential",
    SetKind.SINCE: "@rhv-since",
    SetKind.FULL: "@rhv",
}


# -- file names ------------------------------------------------------------------------


class ConfigRole(StrEnum):
    """The configuration files of a set."""

    OVF = "ovf"
    XML = "xml"
    MANIFEST = "manifest"


_CONFIG_PARTS: Mapping[ConfigRole, tuple[str, str]] = {
    ConfigRole.OVF: ("vm", "ovf"),
    ConfigRole.XML: ("vm", "xml"),
    ConfigRole.MANIFEST: ("manifest", "json"),
}


def _check_name_set_id(set_id: str | None) -> None:
    if set_id == "":
        raise ValueError("a set id is never empty")


@dataclasses.dataclass(frozen=True)
class ConfigFileName:
    """A configuration file: of ``@rhv/`` (``set_id`` None) or of an engine-backup set."""

    role: ConfigRole
    set_id: str | None = None

    def __post_init__(self) -> None:
        _check_name_set_id(self.set_id)

    def encode(self) -> str:
        stem, ext = _CONFIG_PARTS[self.role]
        if self.set_id is None:
            return f"{stem}.{ext}"
        return escape(f"{stem}--{self.set_id}.{ext}")


@dataclasses.dataclass(frozen=True)
class ImageFileName:
    """A disk image: full data (raw) or a qcow2 delta; ``set_id`` None in ``@rhv/``."""

    alias: str
    disk_id: str
    set_id: str | None = None
    delta: bool = False

    def __post_init__(self) -> None:
        _check_name_set_id(self.set_id)

    def encode(self) -> str:
        tail = "" if self.set_id is None else f"--{self.set_id}"
        return escape(f"{self.alias}--{self.disk_id}{tail}.{'qcow2' if self.delta else 'raw'}")


OVF_NAME = ConfigFileName(ConfigRole.OVF).encode()  # vm.ovf
XML_NAME = ConfigFileName(ConfigRole.XML).encode()  # vm.xml
MANIFEST_NAME = ConfigFileName(ConfigRole.MANIFEST).encode()  # manifest.json
#: The configuration files of ``@rhv/`` in the order they are listed (before any image).
CONFIG_NAMES = (OVF_NAME, XML_NAME, MANIFEST_NAME)


def config_file_names(set_id: str | None = None) -> dict[ConfigRole, str]:
    """The configuration file names of a set: ``@rhv/``'s (None) or ``vm--<set>.ovf``..."""
    return {role: ConfigFileName(role, set_id).encode() for role in ConfigRole}


def image_file_name(
    alias: str, disk_id: str, set_id: str | None = None, *, delta: bool = False
) -> str:
    """``<alias>--<diskid>.raw`` in ``@rhv/``, ``<alias>--<diskid>--<set>.raw|.qcow2`` otherwise."""
    return ImageFileName(alias, disk_id, set_id, delta).encode()


def disks_dir_names(disks: Sequence[tuple[str, str]]) -> dict[str, str]:
    """File names for ``vms/<vm>/disks/``: ``<alias>.raw``; colliding aliases get ``--<diskid>``.

    ``disks`` is a list of ``(disk_id, alias)``; returns ``{disk_id: file_name}``.
    """
    counts: dict[str, int] = {}
    for _, alias in disks:
        counts[alias] = counts.get(alias, 0) + 1
    return {
        disk_id: image_file_name(alias, disk_id) if counts[alias] > 1 else escape(f"{alias}.raw")
        for disk_id, alias in disks
    }


# -- recognising a file name -----------------------------------------------------------

#: rsync writes ``.<name>.XXXXXX`` and renames it to ``<name>`` when complete.
_RSYNC_TEMP = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{6}$")
#: Configuration of an engine-backup set, on the name as written; what is configuration is
#: decided here exactly as the restore always did (``$`` also matches before a final newline).
_SET_CONFIG = re.compile(r"^(?:(vm)--([^/]+)\.(ovf|xml)|(manifest)--([^/]+)\.(json))$")
#: Disk ids are UUIDs (as the engine's): that is how an image name's alias and set id are told
#: apart. An alias that itself holds ``--<uuid>`` cannot be told apart and is read shortest.
_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_PLAIN_CONFIG = re.compile(r"(vm|manifest)--(.+)\.(ovf|xml|json)", re.DOTALL)
_IMAGE = re.compile(
    rf"(?P<alias>.*?)--(?P<disk>{_UUID})(?:--(?P<set>.+?))?\.(?P<ext>raw|qcow2)", re.DOTALL
)
_ROLE_BY_PARTS = {parts: role for role, parts in _CONFIG_PARTS.items()}
_CONFIG_BY_NAME = {ConfigFileName(role).encode(): role for role in ConfigRole}


def rsync_target(name: str) -> str | None:
    """The name rsync's temporary file ``name`` (``.<target>.XXXXXX``) will be renamed to."""
    m = _RSYNC_TEMP.match(name)
    return m.group(1) if m else None


@dataclasses.dataclass(frozen=True)
class SetFileName:
    """What a file name in a set directory says.

    ``final`` is the name the file ends up with (an rsync temporary name without
    its decoration, else ``name``); ``file`` is the set file that name is, or
    None for anything else (restore options, foreign files).
    """

    name: str
    final: str
    file: ConfigFileName | ImageFileName | None

    @property
    def rsync_temp(self) -> bool:
        return self.final != self.name

    @property
    def config_role(self) -> ConfigRole | None:
        return self.file.role if isinstance(self.file, ConfigFileName) else None


def parse_file_name(name: str) -> SetFileName:
    """Recognise ``name`` as a file of a backup set (any kind, any tool's temporary name)."""
    final = rsync_target(name) or name
    return SetFileName(name=name, final=final, file=_parse_final(final))


def _parse_final(name: str) -> ConfigFileName | ImageFileName | None:
    role = _CONFIG_BY_NAME.get(name)
    if role is not None:
        return ConfigFileName(role)
    try:
        plain: str | None = unescape(name)
    except ValueError:  # a shortened or non-canonical name: its parts as written
        plain = None
    m = _SET_CONFIG.match(name)
    if m is not None:
        stem, set_id, ext = m.group(1, 2, 3) if m.group(1) else m.group(4, 5, 6)
        if plain is not None:
            pm = _PLAIN_CONFIG.fullmatch(plain)
            if pm is not None and (pm.group(1), pm.group(3)) == (stem, ext):
                set_id = pm.group(2)
        return ConfigFileName(_ROLE_BY_PARTS[(stem, ext)], set_id)
    if plain is None:
        return None
    im = _IMAGE.fullmatch(plain)
    if im is None:
        return None
    return ImageFileName(
        alias=im.group("alias"),
        disk_id=im.group("disk"),
        set_id=im.group("set"),
        delta=im.group("ext") == "qcow2",
    )


# -- file keys ------------------------------------------------------------------------

_CONFIG_PREFIX = "config:"
_DISK_PREFIX = "disk:"
_SET_SEP = "|"
_DISKS_DIR_PREFIX = "disks/"


class FileKey(abc.ABC):
    """The key of a file within its owner: ``encode()`` is the string the VFS derives the
    file's inode from and the sessions look it up by; ``FileKey.parse`` reads it back."""

    __slots__ = ()

    @abc.abstractmethod
    def encode(self) -> str: ...

    @staticmethod
    def parse(text: str) -> FileKey:
        """The key ``text`` encodes; ``ValueError`` if it is none."""
        if text.startswith(_DISKS_DIR_PREFIX):
            inner = FileKey.parse(text[len(_DISKS_DIR_PREFIX) :])
            if not isinstance(inner, DiskKey):
                raise ValueError(f"not a file key: {text!r}")
            return DisksDirKey(inner.disk_id)
        if _SET_SEP in text:
            set_id, _, rest = text.partition(_SET_SEP)
            inner = FileKey.parse(rest)
            if not isinstance(inner, ConfigKey | DiskKey):
                raise ValueError(f"not a file key: {text!r}")
            return SetFileKey(set_id, inner)
        if text.startswith(_CONFIG_PREFIX):
            return ConfigKey(text[len(_CONFIG_PREFIX) :])
        if text.startswith(_DISK_PREFIX):
            return DiskKey(text[len(_DISK_PREFIX) :])
        raise ValueError(f"not a file key: {text!r}")


def _check_key_part(value: str, what: str) -> None:
    if _SET_SEP in value:
        raise ValueError(f"{what} {value!r} contains {_SET_SEP!r}")


@dataclasses.dataclass(frozen=True)
class ConfigKey(FileKey):
    """A configuration file, by its file name: ``config:vm.ovf``."""

    name: str

    def __post_init__(self) -> None:
        _check_key_part(self.name, "config file name")

    def encode(self) -> str:
        return _CONFIG_PREFIX + self.name


@dataclasses.dataclass(frozen=True)
class DiskKey(FileKey):
    """A disk image, by its disk id: ``disk:<disk_id>``."""

    disk_id: str

    def __post_init__(self) -> None:
        _check_key_part(self.disk_id, "disk id")

    def encode(self) -> str:
        return _DISK_PREFIX + self.disk_id


@dataclasses.dataclass(frozen=True)
class SetFileKey(FileKey):
    """A file of an engine-backup set: ``<set_id>|config:<name>`` or ``<set_id>|disk:<id>``."""

    set_id: str
    inner: ConfigKey | DiskKey

    def __post_init__(self) -> None:
        if not self.set_id or "/" in self.set_id:
            raise ValueError(f"not a set id: {self.set_id!r}")
        _check_key_part(self.set_id, "set id")

    def encode(self) -> str:
        return f"{self.set_id}{_SET_SEP}{self.inner.encode()}"


@dataclasses.dataclass(frozen=True)
class DisksDirKey(FileKey):
    """A file of ``vms/<vm>/disks/`` (browsing, snapshot-based): ``disks/disk:<disk_id>``."""

    disk_id: str

    def __post_init__(self) -> None:
        _check_key_part(self.disk_id, "disk id")

    def encode(self) -> str:
        return _DISKS_DIR_PREFIX + DiskKey(self.disk_id).encode()


def parse_key(text: str) -> FileKey | None:
    """``FileKey.parse(text)``, or None when ``text`` is not a file key."""
    try:
        return FileKey.parse(text)
    except ValueError:
        return None


def disk_id_of_key(key: str) -> str | None:
    """The disk id of a ``disk:<id>`` key, else None (what ``FileKey.parse`` says, without
    building a key: the full sessions ask on every read)."""
    if key.startswith(_DISK_PREFIX) and _SET_SEP not in key:
        return key[len(_DISK_PREFIX) :]
    return None
