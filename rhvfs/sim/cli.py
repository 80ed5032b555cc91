"""`rhvfs sim ...`: the engine simulator's command line.

Commands (the names are a contract that outside scripts use):

``rhvfs sim serve --state-dir DIR [--sample [--extra-vms N] [--engine-name NAME] [--extra-network NAME]...] [--port N] [--imageio-port N] [--delay SECONDS] [--password-file F] [--token-ttl SECONDS] [--token-lifetime SECONDS] [--latency-ms MS] [--imageio-latency-ms MS]``
    Run a simulated oVirt engine (REST API v4 + SSO over HTTPS, CA per state
    dir) with the real ovirt-imageio daemon as data plane, in the foreground
    until SIGINT/SIGTERM; then stop everything it started (daemon, every
    qemu-nbd) and leave DIR so that a restart serves the same inventory and
    bytes. ``--sample`` seeds a fresh DIR with the sample inventory (ignored
    when DIR already holds one). Port 0 (the default) picks free ports.
    ``--delay`` is the time every step of every phase machine takes (default
    0.2 s; tests use 0). The password is generated once per DIR
    (``DIR/password``, mode 0600) unless ``--password-file`` is given; it is
    never printed. When ready it writes ``DIR/ovirt-img.conf`` with section
    ``[sim]`` (``engine_url``, ``username`` = admin@internal, ``password``,
    ``cafile`` = DIR/pki/ca.pem; mode 0600) and ``DIR/serve.json`` (pid,
    ports, admin token), and prints exactly one line:
    ``rhvfs-sim ready: DIR/ovirt-img.conf (engine https://localhost:PORT)``.
    So ``XDG_CONFIG_HOME=DIR ovirt-img download-disk -c sim DISK_ID FILE`` just
    works. Logs go to stderr and ``DIR/run/sim.log``. The engine's CA is also
    served at ``/ovirt-engine/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA``.
    SSO tokens expire as the engine's do: ``--token-ttl`` seconds after the
    last request made with them (default 1800, the engine's
    UserSessionTimeOutInterval of 30 minutes) and at the latest
    ``--token-lifetime`` seconds after the login (default 36000, its
    UserSessionHardLimit of 600 minutes); a request with an expired token
    gets 401 with an empty body, on which the SDK logs in again once.
    Everything it creates under DIR (volumes, logs, the imageio daemon's log)
    is private: files 0600, directories 0700.
    ``--extra-vms N`` (with ``--sample``, on a fresh DIR) adds N small VMs
    ``vm-0000``... spread over the clusters ``Default``/``mycluster``/``remote``
    and the tags ``group0..2``/``even``, each with one or two empty thin disks
    and one or two NICs (``rhvfs.sim.scale`` has the exact shape); a thousand
    take about a second. ``--engine-name NAME`` (with ``--sample``, on a fresh
    DIR) gives every object of the sample (data centers, clusters, storage
    domains, networks, vNIC profiles, VMs, disks...) other ids, fixed for that
    name: two simulators with different names are two engines with the same
    names and different ids, side by side (disaster recovery to another
    engine). ``--extra-network NAME`` (repeatable, with ``--sample``) adds a
    network of data center ``Default`` with a vNIC profile of the same name.
    ``--latency-ms`` emulates a remote engine: every
    engine request (API, SSO) is answered that much later. ``--imageio-latency-ms``
    does the same for the data plane: each request the client sends on an
    imageio connection (and each TLS handshake step) is held back that long.
    Engine requests are counted by method and path template (admin
    ``GET|DELETE /rhvfs-sim/calls``, ``SimAdmin.engine_calls()``).

``rhvfs sim guest-write --state-dir DIR --vm NAME --disk ALIAS_OR_ID --offset BYTES (--size BYTES --pattern BYTE | --from-file F)``
    Write into the VM disk's current (active) volume as its guest would
    (qemu-io, so checkpoints' dirty bitmaps record it), through the running
    ``serve``. Snapshots and backups keep their point in time. ``--pattern 0``
    writes zeroes.

``rhvfs sim fault --state-dir DIR KIND [options]``
    Inject a fault into the running ``serve``:
      ``engine-error --path GLOB [--method M] [--status 500] [--times N]``
          answer calls matching ``METHOD GLOB`` (glob on the request path, e.g.
          ``/ovirt-engine/api/imagetransfers/*``) with that status, N times
          (-1: until cleared);
      ``engine-delay --path GLOB [--method M] --seconds S [--times N]``
          delay those calls;
      ``drop-imageio [--after-bytes B] [--times N]``
          cut the next N imageio connections after B response bytes;
      ``pause-transfer --transfer ID``   force the transfer to ``paused_system``;
      ``expire-ticket --transfer ID``    remove its imageio ticket while the
          transfer stays ``transferring`` (clients get 403);
      ``storage-domain --name SD [--status maintenance|active] [--capacity-bytes N]``
          change a storage domain (inactive domains refuse disks and transfers);
      ``invalidate-checkpoint --checkpoint ID``  mark it ``invalid``;
      ``break-checkpoint --checkpoint ID``  drop its bitmaps (backups from it fail);
      ``revoke-tokens``                  forget every SSO token (clients log in again);
      ``clear``                          remove every engine/imageio fault.

Python API for the same: ``rhvfs.sim.client.SimAdmin(state_dir)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value}: must be a positive number of seconds")
    return seconds


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value}: must not be negative")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{value}: must be a number >= 0")
    return number


_STATE_DIR_HELP = "the simulator's state directory (created if missing)"
_RUNNING_HELP = "the state directory of a running simulator (rhvfs sim serve)"
_FAULT_HELP = {
    "engine-error": "answer matching engine requests with an HTTP error status",
    "engine-delay": "delay matching engine requests",
    "drop-imageio": "drop imageio connections after some bytes",
    "pause-transfer": "pause an image transfer, as the engine's system would",
    "expire-ticket": "expire the imageio ticket of an image transfer",
    "storage-domain": "set a storage domain's status or capacity",
    "invalidate-checkpoint": "mark a checkpoint invalid",
    "break-checkpoint": "remove a checkpoint's bitmaps, keeping its record",
    "revoke-tokens": "revoke every SSO token",
    "clear": "remove every injected fault",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rhvfs sim", description="oVirt engine simulator")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the simulator in the foreground")
    s.add_argument("--state-dir", type=Path, required=True, help=_STATE_DIR_HELP)
    s.add_argument(
        "--sample", action="store_true", help="seed a fresh state dir with the sample inventory"
    )
    s.add_argument("--port", type=int, default=0, help="engine HTTPS port (0: pick a free one)")
    s.add_argument("--imageio-port", type=int, default=0, help="imageio port (0: pick a free one)")
    s.add_argument("--delay", type=float, default=0.2, help="seconds per phase step (default 0.2)")
    s.add_argument("--password-file", type=Path, help="file holding the admin@internal password")
    s.add_argument(
        "--extra-vms",
        type=_non_negative_int,
        default=0,
        help="with --sample: add N small VMs vm-0000... (fresh state dir only)",
    )
    s.add_argument(
        "--engine-name",
        default="",
        help="with --sample: another engine's ids for the same inventory (fresh state dir only)",
    )
    s.add_argument(
        "--extra-network",
        action="append",
        default=[],
        metavar="NAME",
        help="with --sample: one more network (and vNIC profile) NAME in data center Default",
    )
    s.add_argument(
        "--latency-ms",
        type=_non_negative_float,
        default=0.0,
        help="milliseconds added to every engine request (emulates a remote engine)",
    )
    s.add_argument(
        "--imageio-latency-ms",
        type=_non_negative_float,
        default=0.0,
        help="milliseconds added to every imageio request (emulates a remote host)",
    )
    s.add_argument(
        "--token-ttl",
        type=_positive_seconds,
        help="seconds an SSO token stays valid without a request (default 1800, as the engine)",
    )
    s.add_argument(
        "--token-lifetime",
        type=_positive_seconds,
        help="seconds an SSO token stays valid at most (default 36000, as the engine)",
    )

    g = sub.add_parser("guest-write", help="write into a VM disk as its guest would")
    g.add_argument("--state-dir", type=Path, required=True, help=_RUNNING_HELP)
    g.add_argument("--vm", required=True)
    g.add_argument("--disk", required=True, help="disk alias or id")
    g.add_argument("--offset", type=int, required=True, help="bytes")
    g.add_argument("--size", type=int, help="bytes (with --pattern)")
    g.add_argument(
        "--pattern", type=lambda v: int(v, 0), help="byte value, e.g. 0xab (0 writes zeroes)"
    )
    g.add_argument("--from-file", type=Path, help="write this file's bytes")

    f = sub.add_parser("fault", help="inject a fault into a running simulator")
    f.add_argument("--state-dir", type=Path, required=True, help=_RUNNING_HELP)
    kinds = f.add_subparsers(dest="kind", required=True)
    for kind in ("engine-error", "engine-delay"):
        k = kinds.add_parser(kind, help=_FAULT_HELP[kind])
        k.add_argument("--path", required=True, help="glob on the request path")
        k.add_argument("--method", default="*")
        k.add_argument("--times", type=int, default=1)
        if kind == "engine-error":
            k.add_argument("--status", type=int, default=500)
        else:
            k.add_argument("--seconds", type=float, required=True)
    k = kinds.add_parser("drop-imageio", help=_FAULT_HELP["drop-imageio"])
    k.add_argument("--after-bytes", type=int, default=0)
    k.add_argument("--times", type=int, default=1)
    for kind in ("pause-transfer", "expire-ticket"):
        k = kinds.add_parser(kind, help=_FAULT_HELP[kind])
        k.add_argument("--transfer", required=True)
    k = kinds.add_parser("storage-domain", help=_FAULT_HELP["storage-domain"])
    k.add_argument("--name", required=True)
    k.add_argument("--status", choices=["active", "maintenance", "inactive"])
    k.add_argument("--capacity-bytes", type=int)
    for kind in ("invalidate-checkpoint", "break-checkpoint"):
        k = kinds.add_parser(kind, help=_FAULT_HELP[kind])
        k.add_argument("--checkpoint", required=True)
    kinds.add_parser("revoke-tokens", help=_FAULT_HELP["revoke-tokens"])
    kinds.add_parser("clear", help=_FAULT_HELP["clear"])
    return p


def main(argv: list[str]) -> int:
    from rhvfs.sim import INSTALL_HINT, missing_requirements

    missing = missing_requirements()
    if missing:
        print(
            f"rhvfs sim: the simulator needs {', '.join(missing)} (not installed): {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 1
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        if args.extra_vms and not args.sample:
            parser.error("--extra-vms needs --sample")
        if (args.engine_name or args.extra_network) and not args.sample:
            parser.error("--engine-name and --extra-network need --sample")
        from rhvfs.sim.serve import ServeOptions, serve

        opts = ServeOptions(
            state_dir=args.state_dir,
            sample=args.sample,
            port=args.port,
            imageio_port=args.imageio_port,
            delay_s=args.delay,
            password_file=args.password_file,
            extra_vms=args.extra_vms,
            engine_name=args.engine_name,
            extra_networks=tuple(args.extra_network),
            latency_s=args.latency_ms / 1000.0,
            imageio_latency_s=args.imageio_latency_ms / 1000.0,
        )
        # Unset: ServeOptions' defaults, the engine's.
        if args.token_ttl is not None:
            opts = dataclasses.replace(opts, token_ttl_s=args.token_ttl)
        if args.token_lifetime is not None:
            opts = dataclasses.replace(opts, token_lifetime_s=args.token_lifetime)
        return serve(opts)

    from rhvfs.sim.client import SimAdmin, SimAdminError

    try:
        admin = SimAdmin(args.state_dir)
    except FileNotFoundError:
        print(
            f"rhvfs sim: no simulator is running on {args.state_dir} (no serve.json)",
            file=sys.stderr,
        )
        return 1
    try:
        if args.command == "guest-write":
            if args.from_file is not None:
                image = admin.guest_write(
                    vm=args.vm, disk=args.disk, offset=args.offset, data=args.from_file.read_bytes()
                )
            else:
                if args.size is None or args.pattern is None:
                    print(
                        "rhvfs sim guest-write: give --size and --pattern, or --from-file",
                        file=sys.stderr,
                    )
                    return 2
                image = admin.guest_write(
                    vm=args.vm,
                    disk=args.disk,
                    offset=args.offset,
                    size=args.size,
                    pattern=args.pattern,
                )
            print(f"wrote to volume {image}")
            return 0
        if args.kind == "clear":
            admin.clear_faults()
        elif args.kind == "engine-error":
            admin.add_fault(
                args.kind, method=args.method, path=args.path, status=args.status, times=args.times
            )
        elif args.kind == "engine-delay":
            admin.add_fault(
                args.kind, method=args.method, path=args.path, delay=args.seconds, times=args.times
            )
        elif args.kind == "drop-imageio":
            admin.add_fault(args.kind, after_bytes=args.after_bytes, times=args.times)
        elif args.kind == "storage-domain":
            admin.add_fault(
                args.kind, name=args.name, status=args.status, capacity_bytes=args.capacity_bytes
            )
        elif args.kind in ("invalidate-checkpoint", "break-checkpoint"):
            admin.add_fault(args.kind, checkpoint=args.checkpoint)
        elif args.kind == "revoke-tokens":
            admin.add_fault(args.kind)
        else:
            admin.add_fault(args.kind, transfer=args.transfer)
        return 0
    except SimAdminError as err:
        print(f"rhvfs sim: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"rhvfs sim: cannot reach the simulator: {err}", file=sys.stderr)
        return 1
