"""Configuration: ovirt-img.conf-style INI sections plus command-line flags, validated once.

A section looks like the one ``ovirt-img`` reads (and ``rhvfs sim serve`` writes)::

    [sim]
    engine_url = https://localhost:8443
    username = admin@internal
    password = secret          ; or password_file = /path, or $RHVFS_PASSWORD, or a prompt
    cafile = /path/ca.pem
    secure = yes               ; "no" disables TLS verification (not recommended)

rhvfs-specific keys (all optional) tune the mount; see ``Config`` for units.
The keys only ``ovirt-img`` uses (``OVIRT_IMG_KEYS``: ``disk_timeout``,
``description``, ``log_file``, ``log_level``) are accepted and ignored, so one
section serves both tools; ``ovirt-img`` in turn ignores ``password_file`` and the
rhvfs keys. A ``password_file`` that starts with ``%d/`` names a systemd
credential: the file of that name in ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``).
An ``http://`` engine_url is refused unless ``secure = no`` (``--insecure``):
the password would cross the network in clear. ``$RHVFS_PASSWORD`` is taken
out of the environment as soon as it is read (``rhvfs.private``), and a
password file that group or others can read gets a warning.
This module owns parsing and validation, and the one edit ``rhvfs ca fetch`` makes
to a section (``set_option``): it never connects anywhere, and it never logs or
prints the password.
"""

from __future__ import annotations

import configparser
import dataclasses
import getpass
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rhvfs.errors import ConfigError
from rhvfs.private import loose_secret_file, take_from_environ
from rhvfs.selection import VmSelection

log = logging.getLogger(__name__)

PASSWORD_ENV = "RHVFS_PASSWORD"
#: Keys of ovirt-img's own configuration (ovirt_imageio.client._options, ``config=True``)
#: that rhvfs has no use for: accepted in a section and ignored. ``disk_timeout`` and
#: ``description`` are about uploads of ``ovirt-img``; ``log_file``/``log_level`` are its
#: logging (rhvfs logs with ``--log``/``--debug``, never into ovirt-img's file).
OVIRT_IMG_KEYS = frozenset({"disk_timeout", "description", "log_file", "log_level"})
#: ``password_file = %d/NAME``: the credential NAME of a systemd service.
CREDENTIALS_PREFIX = "%d/"
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


def default_config_file() -> Path:
    """``$XDG_CONFIG_HOME/ovirt-img.conf`` (``~/.config`` when unset), as ovirt-img uses."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "ovirt-img.conf"


@dataclasses.dataclass(frozen=True, repr=False)
class Config:
    """Everything a mount needs. Sizes are bytes, times seconds."""

    engine_url: str
    username: str
    password: str
    cafile: str | None = None
    secure: bool = True
    # Retries of transient engine/imageio errors (the system_* knobs of other products).
    system_tries: int = 5
    system_interval: float = 1.0
    system_timeout: float = 300.0
    # Backup sessions. A read of a set keeps one point in time while it is idle for up to
    # read_idle_limit seconds (a tape change, a throttled tool); its image transfers are
    # released grace_period seconds after the last file of it was closed.
    grace_period: float = 10.0
    read_idle_limit: float = 3600.0
    memory_state: bool = False
    inactivity_timeout: int = 60
    prefetch_memory: int = 128 * 1024 * 1024
    prefetch_streams: int = 4
    readahead_kb: int = 4096
    listing_ttl: float = 5.0
    # Engine load control (rhvfs.sessions.core._limits): at most max_sessions sessions
    # (each one snapshot or engine backup) and max_transfers image transfers at once,
    # mount-wide; more wait in a queue (0: unlimited).
    max_sessions: int = 4
    max_transfers: int = 16
    # Which VMs the tree shows (rhvfs.selection): a name regex and one to exclude (whole
    # names), tags, clusters, data centers (names; comma-separated in a config file),
    # and a shard "I/N" of the VMs by a stable hash of their ids.
    vms: str | None = None
    exclude_vms: str | None = None
    tag: tuple[str, ...] = ()
    cluster: tuple[str, ...] = ()
    datacenter: tuple[str, ...] = ()
    shard: str | None = None
    # Restore staging: data on local disk (staging_dir, at most staging_limit bytes), and
    # the configuration files of all restores held in memory (at most staging_memory bytes).
    staging_dir: str | None = None
    staging_limit: int = 8 * 1024 * 1024 * 1024
    staging_memory: int = 256 * 1024 * 1024
    # Restores. The call that completes a set (the last close, utimes or rename) waits up
    # to outcome_timeout seconds for the VM or template (0: never waits); a set that still
    # lacks a disk after partial_set_timeout seconds without directory activity, with
    # everything else complete, ends (vm_missing_disks: skip or fail).
    outcome_timeout: float = 600.0
    partial_set_timeout: float = 300.0
    # Mount-level restore defaults (names as in other RHV backup products).
    restore_defaults: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Backups and restores post their start, end and failure to the engine's events
    # (origin "rhvfs"; rhvfs.sessions.core._events).
    engine_events: bool = True

    @property
    def selection(self) -> VmSelection:
        """The VMs this mount shows (validated when the config was loaded)."""
        return VmSelection.build(
            vms=self.vms,
            exclude_vms=self.exclude_vms,
            tag=self.tag,
            cluster=self.cluster,
            datacenter=self.datacenter,
            shard=self.shard,
        )

    @property
    def api_url(self) -> str:
        """The REST API root, ``<engine_url>/ovirt-engine/api``."""
        return self.engine_url.rstrip("/") + "/ovirt-engine/api"

    def __repr__(self) -> str:  # never show the password
        return f"Config(engine_url={self.engine_url!r}, username={self.username!r}, cafile={self.cafile!r}, secure={self.secure})"


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
_INT_KEYS = {
    "system_tries",
    "inactivity_timeout",
    "prefetch_memory",
    "prefetch_streams",
    "readahead_kb",
    "staging_limit",
    "staging_memory",
    "max_sessions",
    "max_transfers",
}
_FLOAT_KEYS = {
    "system_interval",
    "system_timeout",
    "grace_period",
    "read_idle_limit",
    "listing_ttl",
    "outcome_timeout",
    "partial_set_timeout",
}
_BOOL_KEYS = {"secure", "memory_state", "engine_events"}
_STR_KEYS = {"engine_url", "username", "password", "cafile", "staging_dir"}
#: names, comma-separated in a config file; a list (repeated options) from the command line
_LIST_KEYS = {"tag", "cluster", "datacenter"}
RESTORE_PREFIX = "restore_"


def _parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def _convert(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key in _LIST_KEYS:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(n for n in (str(i).strip() for i in items) if n)
    if key in _BOOL_KEYS:
        if isinstance(value, bool):
            return value
        try:
            return _BOOL[str(value).strip().lower()]
        except KeyError:
            raise ConfigError(f"{key} must be yes or no, not {value!r}") from None
    try:
        if key in _INT_KEYS:
            return value if isinstance(value, int) else _parse_size(str(value))
        if key in _FLOAT_KEYS:
            return float(value)
    except ValueError:
        raise ConfigError(f"{key} must be a number, not {value!r}") from None
    return str(value)


def _ini_error(path: Path, error: configparser.Error) -> str:
    """One line for an INI syntax error (configparser's own texts span lines). It names
    lines by number only: a malformed line may hold a password."""
    if isinstance(error, configparser.MissingSectionHeaderError):
        return f"{path} line {error.lineno}: expected a [section] header first"
    if isinstance(error, configparser.ParsingError):
        numbers = ", ".join(str(n) for n, _ in error.errors)
        return f'{path}: not INI syntax ("key = value" expected) at line(s) {numbers}'
    return f"{path}: " + " ".join(str(error).split())


def credential_path(path: str | os.PathLike[str]) -> str:
    """``path``, with a leading ``%d/`` replaced by ``$CREDENTIALS_DIRECTORY`` (where systemd
    puts a service's ``LoadCredential=`` files); ``ConfigError`` when that is not set."""
    text = os.fspath(path)
    if not text.startswith(CREDENTIALS_PREFIX):
        return text
    directory = os.environ.get(CREDENTIALS_ENV)
    if not directory:
        raise ConfigError(
            f"password_file {text}: %d/ is the credentials directory of a systemd service "
            f"(LoadCredential=), but ${CREDENTIALS_ENV} is not set"
        )
    return os.path.join(directory, text.removeprefix(CREDENTIALS_PREFIX))


def _parser_for(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except configparser.Error as e:
        raise ConfigError(f"cannot read config file {_ini_error(path, e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    return parser


def set_option(path: Path, section: str, key: str, value: str) -> None:
    """Set ``key = value`` in ``section`` of the INI file ``path``, keeping every other line
    (comments, order, the other sections) as it was: an existing ``key`` line of the
    section is replaced, else the line goes right after the section header. The file is
    replaced atomically and keeps its mode (it may hold a password)."""
    if "\n" in value or "\r" in value:
        raise ConfigError(f"{key}: a value must be one line")
    parser = _parser_for(path)
    if not parser.has_section(section):
        raise ConfigError(f"no section [{section}] in {path}")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    header = re.compile(r"^\[([^\]]+)\]")
    key_line = re.compile(rf"^\s*{re.escape(key)}\s*[=:]", re.IGNORECASE)
    new = f"{key} = {value}\n"
    current: str | None = None
    header_at: int | None = None
    replaced = False
    for i, line in enumerate(lines):
        match = header.match(line)
        if match:
            current = match.group(1).strip()
            if current == section and header_at is None:
                header_at = i
            continue
        if current == section and key_line.match(line):
            lines[i] = new
            replaced = True
            break
    if not replaced:
        assert header_at is not None  # configparser saw the section
        if not lines[header_at].endswith("\n"):
            lines[header_at] += "\n"
        lines.insert(header_at + 1, new)
    mode = path.stat().st_mode & 0o7777
    tmp = path.with_name(f".{path.name}.rhvfs-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_section(path: Path, section: str) -> dict[str, str]:
    """Return the raw key/value pairs of ``section`` in the INI file ``path``."""
    parser = _parser_for(path)
    if not parser.has_section(section):
        raise ConfigError(f"no section [{section}] in {path}")
    return dict(parser.items(section))


def load_config(
    *,
    section: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    password_file: str | os.PathLike[str] | None = None,
    interactive: bool | None = None,
) -> Config:
    """Build a validated ``Config`` from a section and/or explicit overrides.

    Password precedence: ``password_file`` argument, the section's ``password_file``,
    the section's ``password``, ``$RHVFS_PASSWORD``, then a prompt when stdin is a tty.
    ``$RHVFS_PASSWORD`` leaves the environment here whether it is used or not.
    """
    env_password = take_from_environ(PASSWORD_ENV)
    values: dict[str, Any] = {}
    restore: dict[str, str] = {}
    if section is not None:
        path = Path(config_file) if config_file else default_config_file()
        for key, raw in read_section(path, section).items():
            if key in OVIRT_IMG_KEYS:
                log.debug("ignoring ovirt-img's setting %s of [%s]", key, section)
            elif key.startswith(RESTORE_PREFIX):
                restore[key.removeprefix(RESTORE_PREFIX)] = raw
            else:
                values[key] = raw
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value

    pw_file = password_file or values.pop("password_file", None)
    values.pop("password_file", None)
    if pw_file:
        pw_file = credential_path(pw_file)
        loose = loose_secret_file(pw_file)
        if loose is not None:
            log.warning("password file %s", loose)
        try:
            values["password"] = Path(pw_file).read_text(encoding="utf-8").rstrip("\n")
        except OSError as e:
            raise ConfigError(f"cannot read password file {pw_file}: {e.strerror}") from None
    if not values.get("password") and env_password:
        values["password"] = env_password
    if not values.get("password"):
        if interactive is None:
            interactive = sys.stdin is not None and sys.stdin.isatty()
        if not interactive:
            raise ConfigError(
                "no password: use password_file, the config section, or $" + PASSWORD_ENV
            )
        values["password"] = getpass.getpass(f"Password for {values.get('username', '?')}: ")

    known = {f.name for f in dataclasses.fields(Config)} - {"restore_defaults"}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    for key in ("engine_url", "username"):
        if not values.get(key):
            raise ConfigError(f"{key} is required (in the config section or on the command line)")
    converted = {k: _convert(k, v) for k, v in values.items()}
    url = converted["engine_url"]
    if not (url.startswith("https://") or url.startswith("http://")):
        raise ConfigError(f"engine_url must start with https:// or http://, not {url!r}")
    if url.startswith("http://") and converted.get("secure", True):
        raise ConfigError(
            f"engine_url {url} is not https: the password would cross the network in clear; "
            "use https://, or --insecure (secure = no) to allow it"
        )
    if converted.get("secure", True) and url.startswith("https://"):
        cafile = converted.get("cafile")
        if cafile and not Path(cafile).is_file():
            raise ConfigError(f"cafile {cafile} does not exist")
    for key in ("system_tries", "prefetch_streams"):
        if key in converted and converted[key] < 1:
            raise ConfigError(f"{key} must be at least 1")
    if "staging_memory" in converted and converted["staging_memory"] < 64 * 1024 * 1024:
        raise ConfigError("staging_memory must be at least 64 MiB (32 MiB are kept for writes)")
    for key in ("max_sessions", "max_transfers"):
        if key in converted and converted[key] < 0:
            raise ConfigError(f"{key} must be 0 (unlimited) or more")
    for key in ("read_idle_limit", "partial_set_timeout"):
        if key in converted and converted[key] <= 0:
            raise ConfigError(f"{key} must be more than 0 seconds")
    if "outcome_timeout" in converted and converted["outcome_timeout"] < 0:
        raise ConfigError("outcome_timeout must be 0 (do not wait) or more seconds")
    config = Config(**converted, restore_defaults=restore)
    _ = config.selection  # raises ConfigError for a bad pattern or shard
    return config
