"""Browsing a big engine through a mount: time and engine calls per command. Not a test.

Starts ``rhvfs sim serve --sample --extra-vms N --latency-ms MS`` (default 1000
VMs, 20 ms per engine request), then for each command mounts the simulator
afresh (``rhvfs mount``), runs the command twice -- cold (right after the
mount) and warm (again at once, inside the listing TTL) -- and prints a table:
wall time, engine calls (the simulator's counter, logins left out) and the
mount's resident memory (RSS, and its peak) after the warm run.

Commands: ``ls MNT/vms``, ``ls -l MNT/vms/*/``, ``ls -lR MNT/vms``,
``find MNT -maxdepth 6``. Targets (issue 12): warm ``ls -lR vms`` <= 2 s,
cold <= 10 s, RSS <= 300 MiB.

Run: ``.venv/bin/python bench/bench_scale.py [--extra-vms 1000] [--latency-ms 20]
[--listing-ttl 60]``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.mounts import SimMount  # noqa: E402
from tests.support.sim import SimProcess, counting_engine_calls, set_options, start_sim  # noqa: E402

COMMANDS: list[tuple[str, str]] = [
    ("ls MNT/vms", "ls {mnt}/vms"),
    ("ls -l MNT/vms/*/", "ls -l {mnt}/vms/*/"),
    ("ls -lR MNT/vms", "ls -lR {mnt}/vms"),
    ("find MNT -maxdepth 6", "find {mnt} -maxdepth 6"),
]


def _rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()

    def field(name: str) -> float:
        m = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) / 1024 if m else float("nan")

    return field("VmRSS"), field("VmHWM")


def _run(sim: SimProcess, command: str) -> tuple[float, int, int]:
    """(seconds, engine calls, output lines) of one shell command."""
    with counting_engine_calls(sim) as calls:
        start = time.perf_counter()
        out = subprocess.run(
            command, shell=True, check=True, capture_output=True, text=True, timeout=3600
        )
        took = time.perf_counter() - start
    api = sum(n for (_, path), n in calls.counts.items() if "sso" not in path)
    return took, api, out.stdout.count("\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extra-vms", type=int, default=1000)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument(
        "--listing-ttl",
        type=float,
        default=60.0,
        help="the mount's listing_ttl (s); warm runs are inside it (default 60)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        start = time.monotonic()
        sim = start_sim(
            root / "sim",
            serve_args=(
                "--extra-vms",
                str(args.extra_vms),
                "--latency-ms",
                str(args.latency_ms),
            ),
        )
        print(
            f"simulator: {args.extra_vms} extra VMs (+8 sample), {args.latency_ms:g} ms per "
            f"engine request, ready in {time.monotonic() - start:.1f} s; "
            f"mount listing_ttl {args.listing_ttl:g} s"
        )
        set_options(sim.conf_file, sim.section, listing_ttl=args.listing_ttl)
        rows = []
        try:
            for i, (label, template) in enumerate(COMMANDS):
                mnt = root / f"mnt{i}"
                mount = SimMount(sim, mnt, root / f"state{i}")
                try:
                    command = template.format(mnt=mnt)
                    cold = _run(sim, command)
                    warm = _run(sim, command)
                    rss, peak = _rss_mib(mount.pid)
                    status = mount.status()["engine_calls"]
                finally:
                    mount.umount()
                rows.append((label, cold, warm, rss, peak, status.get("total")))
        finally:
            sim.stop()
    head = (
        f"{'command':<22} {'cold s':>7} {'calls':>6} {'warm s':>7} {'calls':>6} "
        f"{'lines':>7} {'RSS MiB':>8} {'peak':>6} {'mount calls':>11}"
    )
    print(head)
    print("-" * len(head))
    for label, cold, warm, rss, peak, total in rows:
        print(
            f"{label:<22} {cold[0]:7.2f} {cold[1]:6d} {warm[0]:7.2f} {warm[1]:6d} "
            f"{cold[2]:7d} {rss:8.1f} {peak:6.1f} {total!s:>11}"
        )
    print(
        "calls: engine requests the simulator counted during the command (logins left out); "
        "mount calls: status.json engine_calls.total at the end (mount start included)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
