"""The `rhvfs sim serve` lifecycle: one state dir, one engine, one data plane.

Owns start-up (logging, password, PKI, storage, inventory load or `--sample`
seed with `--extra-vms`, `--engine-name` and `--extra-network`, crash recovery of unfinished transfers, DataPlane with its FaultProxy,
the HTTPS engine with its emulated latency, the data plane's latency, the
background task thread), the readiness artefacts
(`ovirt-img.conf` `[sim]`, `serve.json`, the one `rhvfs-sim ready:` line) and
shutdown on SIGINT/SIGTERM (engine, tasks, every qemu-nbd and the daemon),
leaving the state dir ready for a restart. Never prints or logs the password.
The state dir is private: `serve` runs with umask 077, and `Simulator.start`
makes what an older run left there 0600 (files) and 0700 (directories).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from rhvfs.sim import (
    _proc,
    api_admin,
    api_backups,
    api_disks,
    api_infra,
    api_snapshots,
    api_templates,
    api_transfers,
    api_vms,
)
from rhvfs.sim.api_base import Engine
from rhvfs.sim.dataplane import DataPlane
from rhvfs.sim.faults import Faults
from rhvfs.sim.httpd import (
    DEFAULT_TOKEN_LIFETIME_S,
    DEFAULT_TOKEN_TTL_S,
    App,
    Auth,
    EngineServer,
    Router,
    make_ssl_context,
)
from rhvfs.sim.pki import ensure_pki
from rhvfs.sim.sample import build_sample
from rhvfs.sim.scale import add_extra_vms
from rhvfs.sim.state import State
from rhvfs.sim.storage import Storage
from rhvfs.sim.tasks import Tasks

log = logging.getLogger(__name__)

USERNAME = "admin@internal"
SECTION = "sim"


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    state_dir: Path
    sample: bool = False
    port: int = 0
    imageio_port: int = 0
    delay_s: float = 0.2
    password_file: Path | None = None
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S
    token_lifetime_s: float = DEFAULT_TOKEN_LIFETIME_S
    # With `sample`: that many more VMs (`scale.add_extra_vms`), on a fresh state dir.
    extra_vms: int = 0
    # With `sample`: the ids of another engine (`sample.sid`), and more networks.
    engine_name: str = ""
    extra_networks: tuple[str, ...] = ()
    # Added to every engine request / every imageio request (a remote engine).
    latency_s: float = 0.0
    imageio_latency_s: float = 0.0


def _setup_logging(run_dir: Path) -> None:
    root = logging.getLogger()
    if any(getattr(h, "_rhvfs_sim", False) for h in root.handlers):
        return
    fmt = logging.Formatter("%(asctime)s %(levelname)-7s [%(threadName)s] %(name)s: %(message)s")
    os.close(_proc.private_file(run_dir / "sim.log", append=True))
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stderr),
        logging.FileHandler(run_dir / "sim.log"),
    ]
    for h in handlers:
        h.setFormatter(fmt)
        h._rhvfs_sim = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.INFO)


def _password(state_dir: Path, password_file: Path | None) -> str:
    if password_file is not None:
        return password_file.read_text().strip()
    path = state_dir / "password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18) + "\n")
    return path.read_text().strip()


def _make_private(root: Path) -> None:
    """Directories under `root` (and `root`) 0700, files 0600; symlinks are left alone."""
    os.chmod(root, 0o700)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _recover(state: State) -> None:
    """After a restart no export or ticket survives: end what was in flight."""
    for t in state.transfers.values():
        if not t.phase.startswith("finished"):
            log.info("transfer %s was %s when the engine stopped: failing it", t.id, t.phase)
            t.phase = "finished_failure"
            t.ticket_id = None
            t.export_id = None
            t.active = False
    for d in state.disks.values():
        if d.status == "locked":
            d.status = "ok"
            d.lock_reason = ""
    for s in state.snapshots.values():
        if s.status == "locked":
            s.status = "ok"
    for b in state.backups.values():
        if b.phase in ("initializing", "starting", "finalizing"):
            b.phase = "failed"


class Simulator:
    """A running engine + data plane for one state dir (also usable in-process)."""

    def __init__(self, opts: ServeOptions) -> None:
        self.opts = opts
        self.state_dir = opts.state_dir.resolve()
        self.run_dir = self.state_dir / "run"
        self.server: EngineServer | None = None
        self.dataplane: DataPlane | None = None
        self.tasks: Tasks | None = None
        self.engine: Engine | None = None
        self.admin_token = secrets.token_urlsafe(24)

    @property
    def conf_file(self) -> Path:
        return self.state_dir / "ovirt-img.conf"

    def start(self) -> None:
        start = time.monotonic()
        _proc.private_dir(self.state_dir)
        _make_private(self.state_dir)
        _proc.private_dir(self.run_dir)
        _setup_logging(self.run_dir)
        password = _password(self.state_dir, self.opts.password_file)
        pki = ensure_pki(self.state_dir / "pki", ["localhost"])
        storage = Storage(self.state_dir / "storage")
        engine_json = self.state_dir / "engine.json"
        if engine_json.exists():
            state = State.load(engine_json)
            _recover(state)
            state.save()
        else:
            state = State(engine_json)
            if self.opts.sample:
                build_sample(
                    state,
                    storage,
                    engine_name=self.opts.engine_name,
                    extra_networks=self.opts.extra_networks,
                )
                add_extra_vms(
                    state, storage, self.opts.extra_vms, engine_name=self.opts.engine_name
                )
            state.save()
        self.dataplane = DataPlane(self.run_dir, port=self.opts.imageio_port, pki=pki, proxy=True)
        self.dataplane.start()
        if self.opts.imageio_latency_s:
            assert self.dataplane.fault_proxy is not None
            self.dataplane.fault_proxy.set_latency(self.opts.imageio_latency_s)
        self.tasks = Tasks(delay_s=self.opts.delay_s)
        auth = Auth(
            username=USERNAME,
            password=password,
            admin_token=self.admin_token,
            token_ttl_s=self.opts.token_ttl_s,
            token_lifetime_s=self.opts.token_lifetime_s,
        )
        faults = Faults()
        self.engine = e = Engine(
            state=state,
            storage=storage,
            dataplane=self.dataplane,
            tasks=self.tasks,
            faults=faults,
            run_dir=self.run_dir,
            auth=auth,
        )
        router = Router()
        for routes in (
            api_infra.ROUTES,
            api_templates.ROUTES,
            api_disks.ROUTES,
            api_vms.ROUTES,
            api_snapshots.ROUTES,
            api_transfers.ROUTES,
            api_backups.ROUTES,
        ):
            router.include(routes, e)
        admin_router = Router()
        admin_router.include(api_admin.ROUTES, e)
        api_transfers.start_jobs(e)
        api_backups.start_jobs(e)
        app = App(
            router=router,
            admin_router=admin_router,
            auth=auth,
            faults=faults,
            ca_file=pki.ca_file,
            calls=e.calls,
            latency_s=self.opts.latency_s,
        )
        self.server = EngineServer(
            ("localhost", self.opts.port),
            app,
            ssl_context=make_ssl_context(pki.cert_file, pki.key_file),
        )
        self.tasks.start()
        self.server.start()
        engine_url = f"https://localhost:{self.server.port}"
        _write_private(
            self.conf_file,
            f"[{SECTION}]\n"
            f"engine_url = {engine_url}\n"
            f"username = {USERNAME}\n"
            f"password = {password}\n"
            f"cafile = {pki.ca_file}\n",
        )
        _write_private(
            self.state_dir / "serve.json",
            json.dumps(
                {
                    "pid": os.getpid(),
                    "engine_url": engine_url,
                    "engine_port": self.server.port,
                    "imageio_port": self.dataplane.port,
                    "admin_token": self.admin_token,
                    "cafile": str(pki.ca_file),
                },
                indent=1,
            ),
        )
        log.info(
            "engine ready on %s, imageio on %s (%.1f s)",
            engine_url,
            self.dataplane.url_base,
            time.monotonic() - start,
        )

    @property
    def engine_url(self) -> str:
        assert self.server is not None
        return f"https://localhost:{self.server.port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.tasks is not None:
            self.tasks.stop()
        if self.dataplane is not None:
            self.dataplane.stop()
        if self.engine is not None:
            with self.engine.state.lock:
                _recover(self.engine.state)
                self.engine.state.save()
        (self.state_dir / "serve.json").unlink(missing_ok=True)
        log.info("simulator stopped")


def serve(opts: ServeOptions) -> int:
    """Run in the foreground until SIGINT/SIGTERM."""
    os.umask(_proc.PRIVATE_UMASK)  # this process is the simulator: all it creates is private
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sim = Simulator(opts)
    try:
        sim.start()
        print(f"rhvfs-sim ready: {sim.conf_file} (engine {sim.engine_url})", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        sim.stop()
    return 0
