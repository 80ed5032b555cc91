"""The mount lifecycle: backend, pyfuse3 init/main/close, signals, readiness.

One root nursery inside an ``AsyncExitStack`` (the s3ql shape): the backend
(engine connections + ``BackupManager.run``) is entered first and left last,
so sessions are cleaned up (transfers finalized, snapshots removed) after the
FUSE loop stops and before the kernel mount goes away. SIGINT/SIGTERM stop
the loop cleanly; after a crash the mount is NOT unmounted (an rsync mirror
reading an empty directory would delete everything), it stays visibly broken.

Readiness: once a ``stat`` of the mountpoint is answered by our own loop,
``ready()`` is called (the CLI writes to its readiness pipe) and systemd is
told ``READY=1`` through ``$NOTIFY_SOCKET`` (``sd_notify`` below, no
dependency). Kernel readahead is raised through sysfs at that point.

Must not: contain filesystem logic (``rhvfs.vfs``), errno mapping (``rhvfs.fs``)
or session logic (``rhvfs.sessions``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import pyfuse3
import trio

import rhvfs
from rhvfs.config import Config
from rhvfs.errors import ConfigError
from rhvfs.events import RecentErrors
from rhvfs.fs import Operations, errno_for
from rhvfs.vfs.backend import BackupSets, EngineInventory, LocalOwner, OwnerFactory
from rhvfs.vfs.tree import Vfs

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MountOptions:
    """How to mount: the ``-o`` options (``rhvfs.commands.mount.parse_o``) and paths.

    ``uid``/``gid``/``umask``/``restore_umask`` are what every node shows
    (``rhvfs.vfs.tree.Vfs``); the kernel enforces them (``default_permissions``
    is always set). ``allow_other`` lets other users than the mounting one in
    at all: the command line accepts it only with an explicit ``umask``.
    ``read_only`` mounts without the ``restore/`` tree (no restore manager runs)
    and asks the kernel for a read-only mount (``ro``).
    """

    mountpoint: str
    allow_other: bool = False
    state_dir: str | None = None
    debug_fuse: bool = False
    read_only: bool = False
    uid: int | None = None  # None: the mounting process's
    gid: int | None = None
    umask: int = 0
    restore_umask: int | None = None  # None: umask | 0o022


@dataclasses.dataclass(frozen=True)
class Backend:
    """What the VFS runs on: the engine facade and the backup sessions."""

    engine: EngineInventory
    backups: BackupSets
    owner_factory: OwnerFactory = LocalOwner
    #: ``rhvfs.sessions.restore.RestoreManager`` (running), or None: ``restore/`` stays read-only.
    restores: Any = None


BackendOpener = Callable[[Config, MountOptions], AbstractAsyncContextManager[Backend]]


@asynccontextmanager
async def open_backend(
    config: Config, options: MountOptions, *, gc_on_start: bool = True
) -> AsyncIterator[Backend]:
    """The real backend: ``open_engine`` + ``BackupManager.run`` in a nursery.

    Leaving it cancels the manager, which closes every session cleanly. A
    read-only mount (``options.read_only``) runs no restore manager.
    """
    from rhvfs.engine import open_engine
    from rhvfs.sessions import BackupManager, Journal, Owner
    from rhvfs.sessions._router import SetRouter
    from rhvfs.sessions.core import EngineEvents, EngineLimits
    from rhvfs.sessions.incremental import IncrementalManager
    from rhvfs.sessions.incremental._chainstate import ChainState
    from rhvfs.sessions.restore import RestoreManager

    async with open_engine(config) as engine:
        journal = Journal.for_engine(config.engine_url, state_dir=options.state_dir)
        limits = EngineLimits.from_config(config)  # mount-wide: both managers share them
        manager = BackupManager(
            engine, config, journal=journal, gc_on_start=gc_on_start, limits=limits
        )
        chain = ChainState.for_engine(config.engine_url, state_dir=options.state_dir)
        incremental = IncrementalManager(
            engine,
            config,
            chain=chain,
            journal=journal,
            cleanup_on_start=gc_on_start,
            limits=limits,
        )
        events = EngineEvents(engine, enabled=config.engine_events)
        restores = (
            None
            if options.read_only
            else RestoreManager(engine, config, errno_for=errno_for, journal=journal, events=events)
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(events.run)
            await nursery.start(manager.run)
            await nursery.start(incremental.run)
            if restores is not None:
                await nursery.start(restores.run)
            try:
                yield Backend(
                    engine=engine,
                    backups=SetRouter(
                        manager,
                        incremental,
                        config=config,
                        full_sets_via_backup=True,
                        events=events,
                    ),
                    owner_factory=Owner,
                    restores=restores,
                )
            finally:
                nursery.cancel_scope.cancel()


def sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's notification socket, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as e:
        log.warning("sd_notify(%s) failed: %s", message, e)
        return False
    return True


def raise_readahead(mountpoint: str, readahead_kb: int) -> None:
    """Set the mount's bdi read_ahead_kb (blocking: call it from a thread)."""
    try:
        st = os.stat(mountpoint)
        path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(readahead_kb))
        log.debug("read_ahead_kb=%d via %s", readahead_kb, path)
    except OSError as e:
        log.debug("could not raise readahead: %s", e)


def fuse_options(options: MountOptions) -> set[str]:
    opts = set(pyfuse3.default_options)
    # The kernel checks every access against the modes and owners we show; without it
    # allow_other would let anybody read anything.
    opts |= {"default_permissions", "fsname=rhvfs", "subtype=rhvfs"}
    if options.allow_other:
        opts.add("allow_other")
    if options.debug_fuse:
        opts.add("debug")
    if options.read_only:
        opts.add("ro")
    return opts


def _check_mountpoint(path: str, *, replacing: bool = False) -> str:
    mountpoint = os.path.abspath(path)
    if replacing:  # a dead mount: stat fails (ENOTCONN) until it is detached
        return mountpoint
    if not os.path.isdir(mountpoint):
        raise ConfigError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise ConfigError(f"{mountpoint} is already a mountpoint")
    return mountpoint


async def _wait_answering(mountpoint: str, readahead_kb: int) -> None:
    def probe() -> None:
        os.stat(mountpoint)  # answered by our own loop: the mount is live
        os.listdir(mountpoint)
        raise_readahead(mountpoint, readahead_kb)

    await trio.to_thread.run_sync(probe, abandon_on_cancel=True)


async def _stop_on_signal(stopping: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info(
                "received %s: finishing sessions, then unmounting", signal.Signals(signum).name
            )
            sd_notify("STOPPING=1")
            stopping.set()
            pyfuse3.terminate()
            return


async def serve(
    config: Config,
    options: MountOptions,
    *,
    ready: Callable[[], None] | None = None,
    backend: BackendOpener = open_backend,
    replace: Callable[[], None] | None = None,
) -> None:
    """Mount, serve until unmounted or signalled, clean up; the whole life of a mount.

    ``replace`` (given when the mountpoint holds the dead mount of a crashed rhvfs) is
    called in a thread right before mounting, once the engine answered, to detach it:
    until then the old mount stays visibly broken rather than an empty directory."""
    mountpoint = _check_mountpoint(options.mountpoint, replacing=replace is not None)
    started = time.time()
    stopping = trio.Event()
    crashed = True
    mounted = False
    try:
        async with AsyncExitStack() as stack:
            # Errors, warnings and retries as they happen, for status.json's "errors".
            recent = RecentErrors()
            logging.getLogger("rhvfs").addHandler(recent)
            stack.callback(logging.getLogger("rhvfs").removeHandler, recent)
            back = await stack.enter_async_context(backend(config, options))
            vfs: Vfs

            def status_info() -> dict[str, Any]:
                return {
                    "mountpoint": mountpoint,
                    "engine_url": config.engine_url,
                    # False with --insecure / secure = no, or a plain http engine_url.
                    "tls_verified": config.secure and config.engine_url.startswith("https://"),
                    "started": started,
                    "uptime_s": round(time.time() - started, 1),
                    "open_files": vfs.open_handles,
                    "restores": back.restores.status() if back.restores is not None else {},
                    "stopping": stopping.is_set(),
                    "selection": config.selection.describe(),
                    # the newest errors, warnings and retries of the whole mount (listings,
                    # reads, cleanups), oldest first; error_counts: all seen since the start
                    "errors": recent.list(),
                    "error_counts": recent.counts(),
                }

            vfs = Vfs(
                back.engine,
                back.backups,
                listing_ttl_s=config.listing_ttl,
                owner_factory=back.owner_factory,
                status_info=status_info,
                restores=back.restores,
                restore_dir=not options.read_only,
                uid=options.uid,
                gid=options.gid,
                umask=options.umask,
                restore_umask=options.restore_umask,
                selection=config.selection,
            )
            # Fail before mounting when the engine can't be reached or refuses us.
            await vfs.listdir((await vfs.resolve("/vms")).ino)
            product = await vfs.inventory.engine_product()  # for status.json
            log.info("engine: %s", product)
            ops = Operations(vfs)
            if replace is not None:
                await trio.to_thread.run_sync(replace)
            pyfuse3.init(ops, mountpoint, fuse_options(options))
            mounted = True
            log.info("rhvfs %s mounted %s on %s", rhvfs.__version__, config.engine_url, mountpoint)
            log.info(
                "access: %s, owner %d:%d, umask %04o, %s",
                "other users by mode (allow_other)" if options.allow_other else "this user only",
                vfs.uid,
                vfs.gid,
                vfs.umask,
                "read-only (no restore/)"
                if options.read_only
                else f"restore/ umask {vfs.restore_umask:04o}",
            )
            async with trio.open_nursery() as nursery:

                async def announce() -> None:
                    await _wait_answering(mountpoint, config.readahead_kb)
                    log.info("mount %s is ready", mountpoint)
                    if ready is not None:
                        ready()
                    sd_notify("READY=1")

                nursery.start_soon(_stop_on_signal, stopping)
                nursery.start_soon(announce)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
            crashed = False
            log.info("FUSE loop ended; closing %d open file(s) and the sessions", vfs.open_handles)
            await vfs.release_all()
    finally:
        if mounted:
            log.info(
                "%s %s", "unmounting" if not crashed else "crashed: leaving mounted", mountpoint
            )
            pyfuse3.close(unmount=not crashed)
