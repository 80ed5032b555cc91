"""``rhvfs mount`` and ``rhvfs umount`` (``rhvfs status``: ``rhvfs.commands.status``).

``mount`` without ``--foreground`` re-runs itself with ``--foreground`` in a
new session (a daemon), hands it the password through a pipe (never argv,
never its environment: ``$RHVFS_PASSWORD`` was taken out of it when the
configuration was read), and returns 0 only once the child reports over a
readiness pipe that the mount answers; otherwise it prints the child's error
and exits 1. The state dir (and any directory it creates) is 0700, the log
file 0600.

``umount`` asks the mount process (pid from ``/.rhvfs/status.json``) to stop
with SIGTERM, which finishes every session (transfers finalized, snapshots
removed) before the kernel mount goes away, and waits for that. The pid is
signalled only after ``_mounts.verify_daemon`` confirmed from /proc that it is
the rhvfs daemon serving that mountpoint; a mount whose process is gone, hung
or not verified is detached with ``fusermount3 -u`` (which only its owner or
root may do), and a mount that is not rhvfs is left alone.

``-o`` takes ``allow_other``, ``debug``, ``ro`` (no ``restore/`` tree, and the
kernel refuses every write) and the ownership of the tree: ``uid=``/``gid=``
(number or name), ``umask=`` and ``restore_umask=`` (octal; ``parse_o``).
``-o`` may be repeated: the lists are merged (a later value of the same key
wins, as with mount(8)); an unknown option is refused in one line that names
the known ones. ``allow_other`` is refused without an explicit ``umask=``:
letting other users in must say which of them may read.

``mount`` on a mountpoint that holds the dead mount of a crashed rhvfs (the
kernel answers ENOTCONN) replaces it: the old mount is detached only right before
the new one is made, once the engine answered, so a restart that fails leaves
the mount visibly broken, never an empty directory.

``umount --only-if-alive`` (systemd's ExecStop, which also runs after the
daemon crashed) unmounts only a healthy mount: one whose verified rhvfs process
answers. A mount whose process is gone is left as it is (exit 0): a crashed mount
stays visibly broken (ENOTCONN) instead of becoming an empty directory that a
mirroring tool would take for "everything deleted"; a hung or unverified one is
left too (exit 1). A mountpoint with nothing mounted is nothing to do (exit 0).

``umount`` exits non-zero with the reason on stderr whenever the mount is not
gone at the end (not mounted, not rhvfs, the process still cleaning up after
``--timeout``, ``fusermount3`` failed or the mount stayed).

Must not: contain mount lifecycle logic (``rhvfs.mount``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import functools
import grp
import json
import logging
import os
import pwd
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from rhvfs.commands._journal import LOG_FORMATS
from rhvfs.commands._mounts import (
    RHVFS_FSTYPE,
    MountEntry,
    canonical_mountpoint,
    mount_at,
    verify_daemon,
)
from rhvfs.commands.common import (
    add_connection_args,
    check_log_file,
    config_from_args,
    prepare_state_dir,
    run_trio,
    setup_logging,
)
from rhvfs.config import PASSWORD_ENV
from rhvfs.errors import ConfigError, RhvfsError
from rhvfs.private import open_private
from rhvfs.redact import redact
from rhvfs.retry import Backoff, RetryPolicy

STATUS_PATH = ".rhvfs/status.json"
_FLAG_O = {"allow_other", "debug", "ro"}
_VALUE_O = {"uid", "gid", "umask", "restore_umask"}
_KNOWN_O = ", ".join([*sorted(_FLAG_O), *(f"{k}=" for k in sorted(_VALUE_O))])
_ALLOW_OTHER_NEEDS = (
    "-o allow_other needs explicit ownership: add umask= (and gid=/uid=), "
    "e.g. -o allow_other,gid=rhvfs-backup,umask=0027"
)


@dataclasses.dataclass(frozen=True)
class FuseOptions:
    """The ``-o`` options of ``rhvfs mount``, checked (``parse_o``); the same names as
    the fields of ``rhvfs.mount.MountOptions``."""

    allow_other: bool = False
    debug_fuse: bool = False
    read_only: bool = False
    uid: int | None = None
    gid: int | None = None
    umask: int = 0
    restore_umask: int | None = None


def _id(key: str, value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        if key == "uid":
            return pwd.getpwnam(value).pw_uid
        return grp.getgrnam(value).gr_gid
    except KeyError:
        kind = "user" if key == "uid" else "group"
        raise ConfigError(f"-o {key}={value}: no such {kind}") from None


def _mask(key: str, value: str) -> int:
    if not re.fullmatch(r"0?[0-7]{1,3}", value):
        raise ConfigError(f"-o {key}={value}: expected an octal mask such as 0027")
    return int(value, 8)


def parse_o(text: str | Sequence[str]) -> FuseOptions:
    """``-o a,b=c,...`` (or the texts of repeated ``-o``, merged in order: a later
    value of a key wins) as ``FuseOptions``; ``ConfigError`` (one line) for an unknown or
    malformed option, and for ``allow_other`` without ``umask=``."""
    texts = [text] if isinstance(text, str) else list(text)
    flags: set[str] = set()
    values: dict[str, str] = {}
    unknown: list[str] = []
    for item in (o.strip() for t in texts for o in t.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if (key in _FLAG_O and not sep) or (key in _VALUE_O and sep and value):
            if sep:
                values[key] = value
            else:
                flags.add(key)
        elif key in _VALUE_O:
            raise ConfigError(f"mount option {key} needs a value ({key}=...)")
        else:
            unknown.append(item)
    if unknown:
        raise ConfigError(
            f"unknown mount option(s): {', '.join(sorted(unknown))} (known: {_KNOWN_O})"
        )
    if "allow_other" in flags and "umask" not in values:
        raise ConfigError(_ALLOW_OTHER_NEEDS)
    return FuseOptions(
        allow_other="allow_other" in flags,
        debug_fuse="debug" in flags,
        read_only="ro" in flags,
        uid=_id("uid", values["uid"]) if "uid" in values else None,
        gid=_id("gid", values["gid"]) if "gid" in values else None,
        umask=_mask("umask", values["umask"]) if "umask" in values else 0,
        restore_umask=(
            _mask("restore_umask", values["restore_umask"]) if "restore_umask" in values else None
        ),
    )


def _mount_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rhvfs mount", description="Mount an oVirt/RHV engine.")
    add_connection_args(p)
    p.add_argument("mountpoint")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument(
        "-o",
        dest="fuse_options",
        action="append",
        default=[],
        help="mount options, comma-separated, repeatable: ro (no restore/), allow_other "
        "(only with umask=), uid=, gid= (number or name), umask=, restore_umask= (octal; "
        "restore/ defaults to umask|022), debug",
    )
    p.add_argument(
        "--grace-period",
        type=float,
        help="seconds a set's image transfers stay open after its last file is closed",
    )
    p.add_argument(
        "--read-idle-limit",
        type=float,
        help="seconds a read of a set may pause and still get its one point in time "
        "(default 3600); past it, the read fails with ESTALE instead of mixing",
    )
    p.add_argument(
        "--outcome-timeout",
        type=float,
        help="seconds the call that completes a restore set waits for the VM or template "
        "(default 600; 0: never); past it the call succeeds and .status tells the outcome",
    )
    p.add_argument(
        "--partial-set-timeout",
        type=float,
        help="seconds without activity in a restore directory after which a set that lacks "
        "a disk ends: without it (vm_missing_disks = skip) or failed (default 300)",
    )
    p.add_argument("--memory-state", action="store_true", help="include memory state in snapshots")
    load = p.add_argument_group(
        "engine load", "mount-wide limits; more requests wait in line (status.json: queued)"
    )
    load.add_argument(
        "--max-sessions",
        type=int,
        help="snapshots/engine backups at once (default 4; 0: unlimited)",
    )
    load.add_argument(
        "--max-transfers", type=int, help="image transfers at once (default 16; 0: unlimited)"
    )
    sel = p.add_argument_group(
        "selection",
        "show only some VMs (all given criteria must hold; templates and restore/ are not limited)",
    )
    sel.add_argument("--vms", metavar="REGEX", help="VM names matching REGEX (whole name)")
    sel.add_argument(
        "--exclude-vms", metavar="REGEX", help="leave out VM names matching REGEX (whole name)"
    )
    sel.add_argument(
        "--tag", action="append", metavar="TAG", help="VMs with this tag (repeatable: any of them)"
    )
    sel.add_argument(
        "--cluster", action="append", metavar="NAME", help="VMs in this cluster (repeatable)"
    )
    sel.add_argument(
        "--datacenter",
        action="append",
        metavar="NAME",
        help="VMs in a cluster of this data center (repeatable)",
    )
    sel.add_argument(
        "--shard",
        metavar="I/N",
        help="shard I of N (by a stable hash of the VM id): N mounts 0/N..N-1/N split the VMs",
    )
    p.add_argument(
        "--log",
        help="log file (default: stderr in the foreground, a file under the state dir otherwise)",
    )
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="auto",
        help="journal: syslog priority prefixes and no timestamp, for systemd's journal "
        "(auto: when stderr is the journal, JOURNAL_STREAM)",
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    return p


def _default_log(args: argparse.Namespace) -> str:
    name = os.path.abspath(args.mountpoint).strip("/").replace("/", "_") or "root"
    return str(prepare_state_dir(args.state_dir) / f"mount-{name}.log")


def cmd_mount(argv: Sequence[str]) -> int:
    args = _mount_parser().parse_args(list(argv))
    fuse = parse_o(args.fuse_options)
    extra: dict[str, object] = {}
    if args.grace_period is not None:
        extra["grace_period"] = args.grace_period
    if args.read_idle_limit is not None:
        extra["read_idle_limit"] = args.read_idle_limit
    if args.outcome_timeout is not None:
        extra["outcome_timeout"] = args.outcome_timeout
    if args.partial_set_timeout is not None:
        extra["partial_set_timeout"] = args.partial_set_timeout
    if args.memory_state:
        extra["memory_state"] = True
    for key in (
        "max_sessions",
        "max_transfers",
        "vms",
        "exclude_vms",
        "tag",
        "cluster",
        "datacenter",
        "shard",
    ):
        if getattr(args, key) is not None:
            extra[key] = getattr(args, key)
    # Logging first: warnings about the configuration go to the terminal (the daemon's
    # parent) or to the mount's log (the foreground process).
    setup_logging(
        debug=args.debug,
        filename=args.log if args.foreground else None,
        log_format=args.log_format,
    )
    prepare_state_dir(args.state_dir)
    config = config_from_args(args, **extra)  # validates and prompts before forking
    dead = dead_rhvfs_mount(args.mountpoint)
    if dead is None and not os.path.isdir(args.mountpoint):
        raise ConfigError(f"mountpoint {args.mountpoint} is not a directory")
    if not args.foreground:
        return _spawn_daemon(list(argv), args, config.password)

    from rhvfs.mount import MountOptions, serve

    options = MountOptions(
        mountpoint=args.mountpoint, state_dir=args.state_dir, **dataclasses.asdict(fuse)
    )
    ready_fd: int | None = args.ready_fd

    def ready() -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            os.write(ready_fd, b"READY\n")
            os.close(ready_fd)
            ready_fd = None

    try:
        replace = functools.partial(_replace_dead_mount, dead) if dead is not None else None
        run_trio(functools.partial(serve, config, options, ready=ready, replace=replace))
    except BaseException as e:
        logging.getLogger(__name__).error("mount failed: %s", e, exc_info=args.debug)
        if ready_fd is not None:
            text = redact(str(e) if isinstance(e, RhvfsError) else f"{type(e).__name__}: {e}")
            with contextlib.suppress(OSError):
                os.write(ready_fd, f"ERROR {text}\n".encode())
        raise
    return 0


def _spawn_daemon(argv: list[str], args: argparse.Namespace, password: str) -> int:
    log_file = args.log or _default_log(args)
    check_log_file(log_file)
    ready_r, ready_w = os.pipe()
    pw_r, pw_w = os.pipe()
    child_argv = [
        sys.executable, "-m", "rhvfs.cli", "mount", *argv,
        "--foreground", "--log", log_file,
        "--ready-fd", str(ready_w),
        "--password-file", f"/dev/fd/{pw_r}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    with os.fdopen(open_private(log_file, os.O_WRONLY | os.O_APPEND), "ab") as log_out:
        child = subprocess.Popen(
            child_argv,
            pass_fds=(ready_w, pw_r),
            stdin=subprocess.DEVNULL,
            stdout=log_out,
            stderr=log_out,
            start_new_session=True,
            env=env,
        )
    os.close(ready_w)
    os.close(pw_r)
    with os.fdopen(pw_w, "w") as f:
        f.write(password)
    with os.fdopen(ready_r, "rb") as f:
        answer = f.read().decode(errors="replace").strip()
    if answer.startswith("READY"):
        return 0
    code = child.wait()
    message = answer.removeprefix("ERROR ").strip() or f"mount process exited with status {code}"
    print(f"rhvfs: mount failed: {message} (log: {log_file})", file=sys.stderr)
    return 1


def _read_status(mountpoint: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """The mount's status.json; ``TimeoutError`` when a hung mount does not answer."""
    path = os.path.join(mountpoint, STATUS_PATH)
    result: list[Any] = []

    def read() -> None:
        try:
            with open(path, "rb") as f:
                result.append(json.loads(f.read()))
        except (OSError, ValueError) as e:
            result.append(e)

    reader = threading.Thread(target=read, daemon=True)  # a hung FUSE read can't be interrupted
    reader.start()
    reader.join(timeout_s)
    if not result:
        raise TimeoutError(f"{path} did not answer within {timeout_s:.0f} s")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]


def is_mounted(path: str) -> bool:
    """Whether ``path`` is a mountpoint, from /proc/self/mountinfo: never touches the
    mount itself, so a hung FUSE daemon can't block it (``os.path.ismount`` would)."""
    try:
        return mount_at(canonical_mountpoint(path)) is not None
    except OSError:
        return os.path.ismount(path)


def dead_rhvfs_mount(path: str) -> str | None:
    """The canonical mountpoint when ``path`` holds an rhvfs mount whose process is gone
    (the kernel answers ENOTCONN), else None. A hung mount is not dead: None."""
    try:
        mnt = canonical_mountpoint(path)
        entry = mount_at(mnt)
    except OSError:
        return None
    if entry is None or entry.fstype != RHVFS_FSTYPE:
        return None
    try:
        _read_status(mnt)
    except OSError as e:
        return mnt if e.errno == errno.ENOTCONN else None
    except TimeoutError:
        return None
    return None


def _replace_dead_mount(mnt: str) -> None:
    """Detach the dead rhvfs mount at ``mnt`` (checked again: it may have changed)."""
    if dead_rhvfs_mount(mnt) != mnt:
        raise ConfigError(f"{mnt} is no longer the dead rhvfs mount to replace")
    command = ["fusermount3", "-u", "-z", mnt]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RhvfsError(f"{' '.join(command)}: {result.stderr.strip()}")
    logging.getLogger(__name__).info("replacing the dead rhvfs mount on %s", mnt)


def _daemon_mountpoint(args: Sequence[str]) -> str | None:
    """The mountpoint that ``rhvfs mount ARGS`` mounts; None when ARGS don't parse."""
    parser = _mount_parser()

    def fail(message: str) -> NoReturn:
        raise ValueError(message)

    parser.error = fail  # type: ignore[method-assign]
    try:
        parsed, _ = parser.parse_known_args(list(args))
    except (ValueError, SystemExit):
        return None
    mountpoint = parsed.mountpoint
    return mountpoint if isinstance(mountpoint, str) and mountpoint else None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# Waits of the (blocking) umount command: look every 0.1 s, a last time at the deadline.
_WAIT_INTERVAL_S = 0.1


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Whether ``predicate()`` became true within ``timeout_s`` (blocking; not under trio)."""
    policy = RetryPolicy.for_polling(
        interval_s=_WAIT_INTERVAL_S, max_interval_s=_WAIT_INTERVAL_S, timeout_s=timeout_s
    )
    for _ in Backoff(policy, last_at_deadline=True):
        if predicate():
            return True
    return False


def _service_result() -> str:
    """What systemd says about the service (``$SERVICE_RESULT`` etc., set for ExecStop)."""
    names = ("SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS")
    found = [f"{n}={os.environ[n]}" for n in names if os.environ.get(n)]
    return f" (systemd: {' '.join(found)})" if found else ""


def _unhealthy(pid: int | None, *, hung: bool, entry: MountEntry) -> tuple[int, str] | None:
    """(exit code, reason) when the mount is not a healthy rhvfs mount to stop; None if it is."""
    if hung:
        return 1, "it does not answer (hung)"
    if pid is None or not _alive(pid):
        return 0, "its rhvfs process is gone, so it stays visibly broken (ENOTCONN)"
    problem = verify_daemon(pid, entry, mountpoint_of=_daemon_mountpoint)
    if problem is not None:
        return 1, f"process {pid} is not verified as its rhvfs daemon ({problem})"
    return None


def cmd_umount(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="rhvfs umount", description="Finish sessions and unmount.")
    p.add_argument("mountpoint")
    p.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait for sessions to clean up"
    )
    p.add_argument(
        "--only-if-alive",
        action="store_true",
        help="unmount only a healthy mount (its rhvfs process answers); leave a crashed "
        "or hung one visibly broken (systemd's ExecStop, which also runs after a crash)",
    )
    args = p.parse_args(list(argv))
    mnt = canonical_mountpoint(args.mountpoint)
    entry = mount_at(mnt)
    if entry is None:
        if args.only_if_alive:
            print(f"rhvfs: {mnt} is not mounted: nothing to stop", file=sys.stderr)
            return 0
        raise ConfigError(f"{mnt} is not mounted")
    if entry.fstype != RHVFS_FSTYPE:
        raise ConfigError(f"{mnt} is not an rhvfs mount ({entry.fstype}): left alone")
    pid: int | None = None
    hung = False
    try:
        pid = int(_read_status(mnt)["pid"])
    except TimeoutError:
        hung = True  # our own reader is stuck on the mount: only a lazy unmount can succeed
    except (OSError, ValueError, KeyError, TypeError):
        pid = None
    if args.only_if_alive:
        unhealthy = _unhealthy(pid, hung=hung, entry=entry)
        if unhealthy is not None:
            code, reason = unhealthy
            print(
                f"rhvfs: {mnt} left as it is: {reason}{_service_result()}; "
                "`rhvfs umount` without --only-if-alive detaches it",
                file=sys.stderr,
            )
            return code
    if pid is not None and _alive(pid):
        # The pid comes from the mount: signal it only once /proc confirms it serves it.
        problem = verify_daemon(pid, entry, mountpoint_of=_daemon_mountpoint)
        if problem is not None:
            print(
                f"rhvfs: not signalling process {pid} ({problem}); "
                f"detaching {mnt} with fusermount3 -u",
                file=sys.stderr,
            )
        else:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError as e:
                raise ConfigError(f"cannot signal the mount process {pid}: {e.strerror}") from None
            if not _wait(lambda: not _alive(pid), args.timeout):
                raise RhvfsError(
                    f"mount process {pid} still cleaning up after {args.timeout:.0f} s"
                )
    if is_mounted(mnt):  # crashed, hung or unverified process, or one in another namespace
        command = ["fusermount3", "-u", *(["-z"] if hung else []), mnt]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RhvfsError(f"{' '.join(command)}: {result.stderr.strip()}")
        if not _wait(lambda: not is_mounted(mnt), 10.0):
            raise RhvfsError(f"{mnt} is still mounted after {' '.join(command)}")
    return 0
