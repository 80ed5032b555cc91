"""A mount survives the expiry of its SSO tokens: the engine answers 401 and the mount logs in
again, without the reader noticing.

The simulator runs with a 3 s token ttl (the engine's default is 30 minutes);
the mount is left idle past it, then lists VMs and reads a whole backup set,
whose images must equal the simulator's volumes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.data import sha256_file
from tests.support.mounts import SimMount
from tests.support.sim import live_transfers

pytestmark = pytest.mark.slow

TOKEN_TTL_S = 3.0
LISTING_TTL_S = 5.0  # the mount's default: a listing older than this asks the engine again


def test_a_mount_logs_in_again_after_its_tokens_expired(
    sim_factory: Callable[..., Any], tmp_path: Path
) -> None:
    sim = sim_factory(serve_args=("--token-ttl", str(TOKEN_TTL_S)))
    state_dir = tmp_path / "state"
    mounted = SimMount(sim, tmp_path / "mnt", state_dir, "--grace-period", "1")
    try:
        vms = mounted.mnt / "vms"
        names = sorted(os.listdir(vms))
        assert {"myvm", "web01"} <= set(names)
        before = sim.admin.auth_stats()
        assert before["token_ttl_s"] == TOKEN_TTL_S and before["issued"] >= 1
        time.sleep(max(TOKEN_TTL_S, LISTING_TTL_S) + 2.0)  # idle: every token expires
        assert sorted(os.listdir(vms)) == names  # a fresh listing, through an expired token
        set_dir = vms / "myvm" / "@rhv"
        manifest = json.loads((set_dir / "manifest.json").read_bytes())
        images = {d["file"]: d["id"] for d in manifest["disks"]}
        assert images
        got = {name: sha256_file(set_dir / name) for name in images}
        want = {name: sim.admin.disk_sha256(disk_id) for name, disk_id in images.items()}
        assert got == want
        after = sim.admin.auth_stats()
        # The engine refused expired tokens, and the mount logged in again.
        assert after["expired"] > before["expired"]
        assert after["issued"] > before["issued"]
        assert mounted.status()["pid"] == mounted.pid  # the same mount process throughout
    finally:
        mounted.umount()
    assert live_transfers(sim) == []
    log = next(state_dir.glob("mount-*.log")).read_text()
    assert " ERROR " not in log and "Traceback" not in log
