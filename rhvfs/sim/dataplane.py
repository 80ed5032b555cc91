"""The simulator's data plane: the real ovirt-imageio daemon plus qemu-nbd exports.

Owns the daemon process (its generated configuration, log and control socket in
``run_dir``), every qemu-nbd process it starts, and optionally a ``FaultProxy``
on the public port. Tickets are installed through the daemon's control socket
exactly as vdsm does. Every process it starts is killed by ``stop()`` (also run
at interpreter exit). What it creates is private: directories 0700, and the
daemon's log, its stderr and the qemu-nbd logs 0600 (children run with umask
077, ``_proc``), since the daemon's DEBUG log holds every ticket id. It must not decide which volume a transfer uses or when a
ticket ends: the engine does. Must not import client-side rhvfs.
"""

from __future__ import annotations

import atexit
import errno
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rhvfs.sim import _proc
from rhvfs.sim.faultproxy import FaultProxy
from rhvfs.sim.pki import Pki

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_NBD_TIMEOUT_S = 10.0
_CONTROL_TIMEOUT_S = 90.0
# sun_path holds 108 bytes including the terminating NUL.
_MAX_UNIX_PATH = 100


class DataPlaneError(Exception):
    """The daemon or a qemu-nbd failed to start, or the control service refused a request."""


@dataclass(frozen=True)
class Export:
    """A running qemu-nbd export; ``nbd_url`` (``nbd:unix:<socket>``) goes in a ticket."""

    id: str
    socket_path: Path
    nbd_url: str


@dataclass
class _NbdProc:
    proc: subprocess.Popen[bytes]
    socket_path: Path
    image: Path
    stderr_path: Path


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


class DataPlane:
    """The ovirt-imageio daemon serving ``/images/<ticket>`` on ``host:port``.

    ``port=0`` picks a free port. TLS is on when ``pki`` is given. With
    ``proxy=True`` a ``FaultProxy`` owns the public port and forwards to the
    daemon on an internal port (``fault_proxy`` is then set).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        host: str = "localhost",
        port: int = 0,
        pki: Pki | None = None,
        proxy: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.host = host
        self._requested_port = port
        self.pki = pki
        self._want_proxy = proxy
        self.fault_proxy: FaultProxy | None = None
        self._daemon: subprocess.Popen[bytes] | None = None
        self._daemon_port = 0
        self._public_port = 0
        self._exports: dict[str, _NbdProc] = {}
        self._lock = threading.Lock()
        self._sock_dir: Path | None = None
        self._own_sock_dir = False
        self._qemu_nbd = _proc.find_tool("qemu-nbd")
        self._imageio = _proc.find_tool("ovirt-imageio")
        self._direct_io_ok: bool | None = None

    # --- addresses -----------------------------------------------------------

    @property
    def port(self) -> int:
        """The public port clients connect to (the proxy's when proxied)."""
        return self._public_port

    @property
    def daemon_port(self) -> int:
        """The daemon's own port (equals ``port`` unless proxied)."""
        return self._daemon_port

    @property
    def url_base(self) -> str:
        scheme = "https" if self.pki else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def image_url(self, ticket_id: str) -> str:
        """The transfer URL of a ticket, e.g. ``https://localhost:54322/images/<id>``."""
        return f"{self.url_base}/images/{ticket_id}"

    @property
    def control_socket(self) -> Path:
        assert self._sock_dir is not None, "not started"
        return self._sock_dir / "control.sock"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "imageio-daemon.log"

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the daemon (and the proxy) and wait until both answer."""
        if self._daemon is not None:
            raise DataPlaneError("data plane already started")
        _proc.private_dir(self.run_dir)
        for old_log in self.run_dir.glob(self.log_file.name + "*"):  # left by an older run
            os.chmod(old_log, 0o600)
        self._reap_stale()
        self._sock_dir = self._choose_sock_dir()
        atexit.register(self.stop)
        try:
            # The daemon binds its own port (0 = any free one, read back from
            # its log), so no other process can take it between choice and bind.
            self._daemon_port = 0 if self._want_proxy else self._requested_port
            self._start_daemon()
            if self._want_proxy:
                self.fault_proxy = FaultProxy(
                    host=self.host,
                    port=self._requested_port,
                    target_host=self.host,
                    target_port=self._daemon_port,
                )
                self._public_port = self.fault_proxy.port
                self.fault_proxy.start()
            else:
                self._public_port = self._daemon_port
        except BaseException:
            self.stop()
            raise
        log.info(
            "data plane ready at %s (daemon port %d, pid %d)",
            self.url_base,
            self._daemon_port,
            self._daemon.pid if self._daemon else -1,
        )

    def _choose_sock_dir(self) -> Path:
        d = self.run_dir / "sock"
        # Room for "<12 hex>.sock" and "control.sock".
        if len(str(d.resolve())) + 20 <= _MAX_UNIX_PATH:
            _proc.private_dir(d)
            self._own_sock_dir = False
            return d
        self._own_sock_dir = True
        return Path(tempfile.mkdtemp(prefix="rhvfs-sim-"))

    def _write_conf(self) -> Path:
        conf_dir = self.run_dir / "imageio-conf"
        _proc.private_dir(conf_dir / "conf.d")
        daemon_run = self.run_dir / "imageio-run"
        _proc.private_dir(daemon_run)
        lines = [
            "[daemon]",
            "drop_privileges = false",
            f"run_dir = {daemon_run}",
            "systemd_enable = false",
            # serve_forever wakes this often; stop() waits for it per service.
            "poll_interval = 0.1",
            "",
            "[tls]",
        ]
        if self.pki is not None:
            lines += [
                "enable = true",
                f"key_file = {self.pki.key_file}",
                f"cert_file = {self.pki.cert_file}",
                f"ca_file = {self.pki.ca_file}",
            ]
        else:
            lines += ["enable = false"]
        lines += [
            "",
            "[remote]",
            f"host = {self.host}",
            f"port = {self._daemon_port}",
            "",
            "[local]",
            "enable = false",
            "",
            "[control]",
            "transport = unix",
            f"socket = {self.control_socket}",
            "remove_timeout = 30",
            "",
            "[profile]",
            f"filename = {daemon_run / 'profile'}",
            "",
            "[handlers]",
            "keys = logfile",
            "",
            "[logger_root]",
            "level = DEBUG",
            "handlers = logfile",
            "",
            "[handler_logfile]",
            # The vendor default is a RotatingFileHandler with rotation kwargs;
            # only its path changes here.
            f"args = ({str(self.log_file)!r},)",
            'kwargs = {"maxBytes": 10485760, "backupCount": 1}',
            "level = DEBUG",
            "formatter = long",
            "",
        ]
        with os.fdopen(_proc.private_file(conf_dir / "conf.d" / "50-sim.conf"), "w") as f:
            f.write("\n".join(lines))
        return conf_dir

    def _start_daemon(self) -> None:
        conf_dir = self._write_conf()
        self.control_socket.unlink(missing_ok=True)
        stderr_path = self.run_dir / "imageio-daemon.stderr"
        try:
            log_offset = self.log_file.stat().st_size
        except FileNotFoundError:
            log_offset = 0
        self._daemon = self._spawn([self._imageio, "-c", str(conf_dir)], stderr_path, append=True)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            rc = self._daemon.poll()
            if rc is not None:
                raise DataPlaneError(
                    f"ovirt-imageio exited with {rc} while starting: "
                    f"{_tail(stderr_path)} {_tail(self.log_file)}"
                )
            if self._daemon_port == 0:
                self._daemon_port = _listening_port(self.log_file, log_offset)
            if (
                self._daemon_port
                and self._control_answers()
                and _tcp_answers(self.host, self._daemon_port)
            ):
                return
            if time.monotonic() > deadline:
                raise DataPlaneError(
                    f"ovirt-imageio not ready after {_START_TIMEOUT_S} s: {_tail(self.log_file)}"
                )
            time.sleep(0.05)

    def _control_answers(self) -> bool:
        if not self.control_socket.exists():
            return False
        try:
            status, _ = self._control("GET", "/tickets/rhvfs-sim-probe", timeout_s=2.0)
        except OSError:
            return False
        return status < 500

    def stop(self) -> None:
        """Remove all tickets, kill every qemu-nbd, stop the proxy and the daemon (idempotent)."""
        atexit.unregister(self.stop)
        daemon = self._daemon
        if daemon is not None and daemon.poll() is None:
            try:
                self._control("DELETE", "/tickets/", timeout_s=5.0)
            except (OSError, DataPlaneError) as e:
                log.warning("removing all tickets failed: %s", e)
        with self._lock:
            export_ids = list(self._exports)
        for export_id in export_ids:
            self.unexport(export_id)
        if self.fault_proxy is not None:
            self.fault_proxy.close()
        if daemon is not None:
            self._terminate(daemon, "ovirt-imageio")
            self._daemon = None
        if self._sock_dir is not None:
            try:
                self.control_socket.unlink(missing_ok=True)
            except OSError:
                pass
            if self._own_sock_dir:
                try:
                    os.rmdir(self._sock_dir)
                except OSError:
                    pass

    @property
    def daemon_pid(self) -> int | None:
        return self._daemon.pid if self._daemon is not None else None

    def running_pids(self) -> list[int]:
        """Pids of the daemon and all qemu-nbd processes still owned (for tests)."""
        pids = [e.proc.pid for e in self._exports.values() if e.proc.poll() is None]
        if self._daemon is not None and self._daemon.poll() is None:
            pids.append(self._daemon.pid)
        return pids

    # --- child processes -------------------------------------------------------

    @property
    def _pid_dir(self) -> Path:
        return self.run_dir / "pids"

    def _spawn(
        self, argv: list[str], stderr_path: Path, *, append: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start a child in its own session and record it, so a later start can reap it."""
        _proc.private_dir(self._pid_dir)
        fd = _proc.private_file(stderr_path, append=append)
        with os.fdopen(fd, "ab" if append else "wb") as err:
            proc = _proc.spawn(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        # The arguments, not the program: a script runs as "<python> <script> args".
        (self._pid_dir / str(proc.pid)).write_bytes(_cmdline_bytes(argv[1:]))
        return proc

    def _terminate(self, proc: subprocess.Popen[bytes], what: str) -> None:
        """SIGTERM the child's process group, then SIGKILL it if it does not exit in time."""
        try:
            if proc.poll() is not None:
                return
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=_STOP_TIMEOUT_S)
                return
            except subprocess.TimeoutExpired:
                log.warning("%s pid %d ignored SIGTERM; killing it", what, proc.pid)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=_STOP_TIMEOUT_S)
        finally:
            (self._pid_dir / str(proc.pid)).unlink(missing_ok=True)

    def _reap_stale(self) -> None:
        """Kill children left behind by a previous run that died without stop()."""
        if not self._pid_dir.is_dir():
            return
        for entry in self._pid_dir.iterdir():
            try:
                pid = int(entry.name)
                recorded = entry.read_bytes()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    alive = f.read()
            except (ValueError, OSError):
                entry.unlink(missing_ok=True)
                continue
            if recorded and alive.endswith(b"\0" + recorded):
                log.warning("killing stale child %d of a previous run: %r", pid, recorded[:200])
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            entry.unlink(missing_ok=True)

    # --- qemu-nbd exports ------------------------------------------------------

    def export_nbd(
        self,
        image: Path,
        *,
        fmt: Literal["raw", "cow"],
        read_only: bool,
        shallow: bool = False,
        bitmap: str | None = None,
        discard: bool = False,
        remove_image_on_open: bool = False,
    ) -> Export:
        """Export ``image`` with qemu-nbd on a unix socket the way vdsm does.

        ``shallow`` exports a qcow2 layer without its backing chain (holes
        report ``hole: true``); ``bitmap`` exposes that dirty bitmap
        (read-only, not shallow); ``discard`` lets zero writes punch holes.
        ``remove_image_on_open`` unlinks ``image`` once qemu-nbd holds it open
        (for temporary dirty-bitmap overlays).
        """
        if self._sock_dir is None:
            raise DataPlaneError("data plane not started")
        if bitmap is not None and (shallow or not read_only):
            raise DataPlaneError("a bitmap is exported only read-only with the backing chain")
        if shallow and fmt != "cow":
            raise DataPlaneError("shallow exports need a qcow2 image")
        export_id = uuid.uuid4().hex[:12]
        sock = self._sock_dir / f"{export_id}.sock"
        qemu_fmt = "qcow2" if fmt == "cow" else "raw"
        spec: dict[str, Any] = {
            "driver": qemu_fmt,
            "file": {"driver": "file", "filename": str(Path(image).resolve())},
        }
        if shallow:
            spec["backing"] = None
        cache, aio = ("none", "native") if self._direct_io(image) else ("writeback", "threads")
        argv = [
            self._qemu_nbd,
            f"--socket={sock}",
            "--persistent",
            "--shared=8",
            "--export-name=",
            f"--cache={cache}",
            f"--aio={aio}",
        ]
        if fmt == "cow":
            argv.append("--allocation-depth")
        if read_only:
            argv.append("--read-only")
        if discard and not read_only:
            argv += ["--discard=unmap", "--detect-zeroes=unmap"]
        if bitmap is not None:
            argv.append(f"--bitmap={bitmap}")
        argv.append("json:" + json.dumps(spec))
        stderr_path = self._sock_dir / f"{export_id}.stderr"
        proc = self._spawn(argv, stderr_path)
        entry = _NbdProc(proc=proc, socket_path=sock, image=Path(image), stderr_path=stderr_path)
        with self._lock:
            self._exports[export_id] = entry
        deadline = time.monotonic() + _NBD_TIMEOUT_S
        while not _nbd_greets(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                message = _tail(stderr_path)
                self.unexport(export_id)
                raise DataPlaneError(f"qemu-nbd failed for {image}: {message}")
            time.sleep(0.01)
        if remove_image_on_open:
            Path(image).unlink(missing_ok=True)
        log.info(
            "export %s: %s fmt=%s ro=%s shallow=%s bitmap=%s pid=%d",
            export_id,
            image,
            fmt,
            read_only,
            shallow,
            bitmap,
            proc.pid,
        )
        return Export(id=export_id, socket_path=sock, nbd_url=f"nbd:unix:{sock}")

    def _direct_io(self, image: Path) -> bool:
        if self._direct_io_ok is None:
            try:
                fd = os.open(image, os.O_RDONLY | os.O_DIRECT)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise DataPlaneError(f"cannot open {image}: {e}") from e
                self._direct_io_ok = False
                log.warning("%s: no O_DIRECT; qemu-nbd uses cache=writeback", image.parent)
            else:
                os.close(fd)
                self._direct_io_ok = True
        return self._direct_io_ok

    def unexport(self, export_id: str) -> None:
        """Kill that qemu-nbd and remove its socket (idempotent)."""
        with self._lock:
            entry = self._exports.pop(export_id, None)
        if entry is None:
            return
        self._terminate(entry.proc, "qemu-nbd")
        entry.socket_path.unlink(missing_ok=True)
        entry.stderr_path.unlink(missing_ok=True)
        log.info("unexported %s", export_id)

    def exports(self) -> list[Export]:
        with self._lock:
            return [
                Export(id=i, socket_path=e.socket_path, nbd_url=f"nbd:unix:{e.socket_path}")
                for i, e in self._exports.items()
            ]

    # --- tickets ---------------------------------------------------------------

    def _control(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout_s: float = _CONTROL_TIMEOUT_S,
    ) -> tuple[int, bytes]:
        conn = _UnixHTTPConnection(str(self.control_socket), timeout=timeout_s)
        try:
            headers = {}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _control_ok(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, bytes]:
        try:
            status, data = self._control(method, path, body)
        except OSError as e:
            raise DataPlaneError(f"control {method} {path}: {e}") from e
        if status >= 400 and status != 404:
            raise DataPlaneError(
                f"control {method} {path}: {status} {data.decode(errors='replace').strip()}"
            )
        return status, data

    def add_ticket(
        self,
        *,
        ticket_id: str,
        url: str,
        size: int,
        ops: list[str],
        timeout: int = 300,
        inactivity_timeout: int = 60,
        sparse: bool = False,
        dirty: bool = False,
        transfer_id: str | None = None,
        filename: str | None = None,
    ) -> None:
        """Install (or replace) a ticket; ``timeout`` and ``inactivity_timeout`` in seconds."""
        ticket: dict[str, Any] = {
            "uuid": ticket_id,
            "url": url,
            "size": size,
            "ops": list(ops),
            "timeout": timeout,
            "inactivity_timeout": inactivity_timeout,
            "sparse": sparse,
            "dirty": dirty,
        }
        if transfer_id is not None:
            ticket["transfer_id"] = transfer_id
        if filename is not None:
            ticket["filename"] = filename
        status, data = self._control_ok("PUT", f"/tickets/{ticket_id}", ticket)
        if status != 200:
            raise DataPlaneError(f"add ticket {ticket_id}: {status} {data!r}")
        log.info(
            "ticket %s added: ops=%s size=%d url=%s transfer=%s",
            ticket_id,
            ops,
            size,
            url,
            transfer_id,
        )

    def ticket_status(self, ticket_id: str) -> dict[str, Any] | None:
        """The daemon's JSON status of a ticket, or None if it has no such ticket."""
        status, data = self._control_ok("GET", f"/tickets/{ticket_id}")
        if status == 404:
            return None
        result: dict[str, Any] = json.loads(data)
        return result

    def extend_ticket(self, ticket_id: str, timeout: int) -> None:
        """Set the ticket to expire ``timeout`` seconds from now."""
        status, data = self._control_ok("PATCH", f"/tickets/{ticket_id}", {"timeout": timeout})
        if status == 404:
            raise DataPlaneError(f"extend ticket {ticket_id}: no such ticket")

    def remove_ticket(self, ticket_id: str) -> None:
        """Remove a ticket, cancelling its operations (idempotent)."""
        self._control_ok("DELETE", f"/tickets/{ticket_id}")
        log.info("ticket %s removed", ticket_id)


# --- helpers -------------------------------------------------------------------


_LISTENING_RE = re.compile(rb"remote\.service listening on \(.*?, (\d+)\)")


def _listening_port(log_file: Path, offset: int) -> int:
    """The daemon's remote port as logged after ``offset`` of its log, or 0 if not yet."""
    try:
        with open(log_file, "rb") as f:
            f.seek(offset)
            text = f.read()
    except OSError:
        return 0
    match = _LISTENING_RE.search(text)
    return int(match.group(1)) if match else 0


def _tcp_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _nbd_greets(path: Path) -> bool:
    """True once qemu-nbd sends its greeting on ``path``.

    qemu-nbd listens before it opens the image, so an accepted connect alone
    does not mean the export exists; the greeting is sent only after it does.
    """
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            greeting = b""
            while len(greeting) < 8:
                chunk = s.recv(8 - len(greeting))
                if not chunk:
                    return False
                greeting += chunk
        except OSError:
            return False
    return greeting == b"NBDMAGIC"


def _cmdline_bytes(argv: list[str]) -> bytes:
    return b"".join(os.fsencode(a) + b"\0" for a in argv)


def _tail(path: Path, nbytes: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - nbytes))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""
