"""Per-call cost of the simulated engine, measured with the upstream SDK. Not a test.

Starts ``rhvfs sim serve --sample --extra-vms N [--latency-ms MS]`` on a
scratch state dir and prints:

- the start-up time (process start to the ready line) and the simulator's own
  "extra VMs ready" time;
- ``vm.get`` and ``nics.list`` on one VM, ``--calls`` times each: mean,
  median and p95 per call (the Nagle/delayed-ACK stall showed as ~40 ms);
- ``vms.list()`` and ``vms.list(follow="disk_attachments.disk,nics,tags")``
  over all VMs, and the engine calls each made (the simulator's counter).

Run: ``.venv/bin/python bench/bench_sim_engine.py [--extra-vms 1000] [--calls 200] [--latency-ms 0]``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.sim import counting_engine_calls, start_sim  # noqa: E402

FOLLOW = "disk_attachments.disk,nics,tags"


def per_call(fn: Callable[[], Any], calls: int) -> str:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    p95 = times[int(len(times) * 0.95) - 1]
    return (
        f"mean {statistics.mean(times) * 1000:6.2f} ms  "
        f"median {statistics.median(times) * 1000:6.2f} ms  p95 {p95 * 1000:6.2f} ms"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extra-vms", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        state_dir = Path(tmp) / "sim"
        start = time.monotonic()
        sim = start_sim(
            state_dir,
            serve_args=(
                "--extra-vms",
                str(args.extra_vms),
                "--latency-ms",
                str(args.latency_ms),
            ),
        )
        ready_s = time.monotonic() - start
        try:
            log = (state_dir / "run" / "sim.log").read_text()
            m = re.search(r"extra VMs \((\d+) disks\) ready in ([\d.]+) s", log)
            extra = f", extra VMs ({m.group(1)} disks) {m.group(2)} s" if m else ""
            print(f"start-up: {ready_s:.1f} s to ready{extra}")
            conn = sim.sdk_connection()
            conn.authenticate()
            vms = conn.system_service().vms_service()
            vm = vms.list(search="name=myvm")[0]
            service = vms.vm_service(vm.id)
            print(f"vm.get      x{args.calls}: {per_call(service.get, args.calls)}")
            nics = service.nics_service()
            print(f"nics.list   x{args.calls}: {per_call(nics.list, args.calls)}")
            for follow in (None, FOLLOW):
                with counting_engine_calls(sim) as calls:
                    start = time.perf_counter()
                    found = vms.list(follow=follow) if follow else vms.list()
                    took = time.perf_counter() - start
                print(
                    f"vms.list(follow={follow!r}): {len(found)} VMs in {took:.2f} s, "
                    f"{calls.total} engine call(s)"
                )
            conn.close()
        finally:
            sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
