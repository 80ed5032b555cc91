"""Issue 12, bulk inventory through a real mount: ``ls -lR`` and ``find`` over a few hundred
VMs cost the same few engine calls as over a few, and create nothing on the engine.

The simulator serves the sample plus ``--extra-vms 300``; ``rhvfs mount``
browses it with the tools an admin uses. The simulator's counter gives the
engine calls of each command; status.json shows the mount's own count, by kind.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mounts import SimMount
from tests.support.sim import SimProcess, counting_engine_calls, set_options

pytestmark = pytest.mark.slow

N_EXTRA = 300
#: Engine calls of one command over the whole tree, whatever the number of VMs (lists of
#: clusters, hosts, storage domains, data centers, tags, templates, one search per tag
#: directory, one disk list per storage domain).
BROWSE_CALLS_MAX = 40


def _run(command: list[str]) -> list[str]:
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    return out.stdout.splitlines()


def test_ls_lR_and_find_over_hundreds_of_vms_cost_a_bounded_number_of_calls(
    sim_factory: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = sim_factory(serve_args=("--extra-vms", str(N_EXTRA)))
    # a listing TTL longer than the test: each command is counted on its own
    set_options(sim.conf_file, sim.section, listing_ttl=600)
    m = SimMount(sim, tmp_path / "mnt", tmp_path / "state")
    try:
        with counting_engine_calls(sim) as listed:
            lines = _run(["ls", "-lR", str(m.mnt / "vms")])
        # every VM's @rhv/ with its configuration first and its images, with sizes
        rhv = [i for i, line in enumerate(lines) if line.endswith("/vm-0001/@rhv:")]
        assert len(rhv) == 1
        entries = [line.split() for line in lines[rhv[0] + 2 : rhv[0] + 7]]  # ls sorts them
        assert {"vm.ovf", "vm.xml", "manifest.json"} <= {e[-1] for e in entries}
        assert sum(e[-1].endswith(".raw") for e in entries) == 2
        assert all(int(e[4]) > 0 for e in entries)
        assert sum(line.endswith(".raw") for line in lines) >= 2 * (N_EXTRA + 8)

        with counting_engine_calls(sim) as found:
            paths = _run(["find", str(m.mnt), "-maxdepth", "6"])
        assert len(paths) > 10 * (N_EXTRA + 8)

        for calls in (listed, found):
            api = {k: n for k, n in calls.counts.items() if "sso" not in k[1]}
            # nothing per VM, nothing created or removed
            assert not [k for k in api if k[1].startswith(("/vms/", "/templates/"))], api
            assert {k[0] for k in api} <= {"GET"}, api
            assert sum(api.values()) <= BROWSE_CALLS_MAX, api

        status = m.status()["engine_calls"]
        assert status["by_kind"]["list vms"] == 1
        assert status["total"] == sum(status["by_kind"].values())
        assert not [k for k in status["by_kind"] if "snapshot" in k and "list" not in k]
    finally:
        m.umount()


def test_tools_that_keep_acls_and_xattrs_read_the_read_only_tree_quietly(
    sim: SimProcess, tmp_path: Path
) -> None:
    """The read-only tree answers getxattr with "not supported" (so ``ls -l`` stops probing
    every file): tools asked to keep ACLs and xattrs copy configuration files without a
    complaint, and ``ls -l`` probes the mount at most once."""
    m = SimMount(sim, tmp_path / "mnt", tmp_path / "state")
    try:
        rhv = m.mnt / "vms/myvm0/@rhv"
        want = {n: (rhv / n).read_bytes() for n in ("vm.ovf", "manifest.json")}
        out = tmp_path / "out"
        out.mkdir()
        commands = [
            ["tar", "--acls", "--xattrs", "-cf", str(out / "c.tar"), "-C", str(rhv), *want],
            ["rsync", "-aAX", str(rhv / "vm.ovf"), str(rhv / "manifest.json"), str(out) + "/"],
            ["getfacl", "-p", str(rhv / "vm.ovf")],
            ["getfattr", "-d", str(rhv / "vm.ovf")],
        ]
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            assert (done.returncode, done.stderr) == (0, ""), command
        # each copy is a new read: the same OVF, a manifest naming its own read
        assert (out / "vm.ovf").read_bytes() == want["vm.ovf"]
        copied = json.loads((out / "manifest.json").read_bytes())
        original = json.loads(want["manifest.json"])
        assert copied["vm"] == original["vm"] and copied["disks"] == original["disks"]
        assert copied["point_in_time"]["read_id"] != original["point_in_time"]["read_id"]
        listed = subprocess.run(
            ["strace", "-f", "-e", "trace=getxattr,lgetxattr", "ls", "-lR", str(m.mnt / "vms")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert listed.returncode == 0
        probes = [line for line in listed.stderr.splitlines() if "getxattr(" in line]
        assert len(probes) <= 2, probes[:5]
        assert all("ENOTSUP" in line or "EOPNOTSUPP" in line for line in probes), probes
    finally:
        m.umount()
