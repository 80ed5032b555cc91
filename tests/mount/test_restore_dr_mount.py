"""Disaster recovery: a set backed up from one engine restored into another (issue 14).

Two simulators side by side, ``site-a`` and ``site-b`` (``rhvfs sim serve
--engine-name``): the same names, other ids for everything. On A, ``myvm0``
gets guest data of its own and a second NIC on network ``dmz``, which B does
not have. Sets are copied out of a mount of A (``cp -a``) and into
``restore/`` of a mount of B; the VMs are checked with the SDK on B and the
disks with each simulator's own volume checksums.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ovirtsdk4 import types

from tests.support.mounts import SimMount, restore_status
from tests.support.restore_mounts import export_sets, manifest_disks, module_mount, start_restore
from tests.support.sim import SimProcess, remove_vm, start_sim, vm_details

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
BLANK = "00000000-0000-0000-0000-000000000000"


def started(tmp: pytest.TempPathFactory, name: str, *args: str) -> Iterator[SimProcess]:
    s = start_sim(tmp.mktemp(name), serve_args=("--engine-name", name, *args))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def sim_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    yield from started(tmp_path_factory, "site-a", "--extra-network", "dmz")


@pytest.fixture(scope="module")
def sim_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    yield from started(tmp_path_factory, "site-b")


def inventory(sim: SimProcess) -> dict[str, dict[str, str]]:
    """name -> id of each kind of object the restore looks up on the target."""
    conn = sim.sdk_connection()
    try:
        system = conn.system_service()
        return {
            kind: {x.name: x.id for x in service.list()}
            for kind, service in (
                ("datacenters", system.data_centers_service()),
                ("clusters", system.clusters_service()),
                ("storagedomains", system.storage_domains_service()),
                ("networks", system.networks_service()),
                ("vnicprofiles", system.vnic_profiles_service()),
                ("templates", system.templates_service()),
            )
        }
    finally:
        conn.close()


def prepare_site_a(sim: SimProcess) -> None:
    """myvm0: data B's copy lacks, and a second NIC on ``dmz``."""
    sim.admin.guest_write(vm="myvm0", disk="myvm0_Disk1", offset=64 * MiB, size=MiB, pattern=0xA5)
    conn = sim.sdk_connection()
    try:
        system = conn.system_service()
        vm = system.vms_service().list(search="name=myvm0")[0]
        dmz = next(p for p in system.vnic_profiles_service().list() if p.name == "dmz")
        system.vms_service().vm_service(vm.id).nics_service().add(
            types.Nic(
                name="nic2",
                interface=types.NicInterface.VIRTIO,
                vnic_profile=types.VnicProfile(id=dmz.id),
            )
        )
    finally:
        conn.close()


#: A mount for the length of a ``with`` block.
mounted = contextlib.contextmanager(module_mount)


@pytest.fixture(scope="module")
def sets(sim_a: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    prepare_site_a(sim_a)
    with mounted(sim_a, tmp_path_factory, "site-a-mount", "--grace-period", "1") as mnt:
        return export_sets(mnt, tmp_path_factory.mktemp("sets"), ("myvm0", "tmplvm"))


@pytest.fixture(scope="module")
def mnt_b(sim_b: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimMount]:
    yield from module_mount(sim_b, tmp_path_factory, "site-b-mount", "--grace-period", "1")


@pytest.fixture
def cleanup_b(sim_b: SimProcess) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        remove_vm(sim_b, name)


def restore(mnt: SimMount, set_dir: Path, name: str, options: str = "") -> dict[str, Any]:
    target = start_restore(mnt, name, options)
    subprocess.run(["cp", "-a", f"{set_dir}/.", str(target)], check=True)
    return restore_status(mnt, name)


def check_disks(sim_a: SimProcess, sim_b: SimProcess, set_dir: Path, vm: dict[str, Any]) -> None:
    """The restored disks on B hold what the set's disks held on A, on B's storage domain."""
    want = {d["alias"]: d for d in manifest_disks(set_dir)}
    assert sorted(want) == [d["alias"] for d in vm["disks"]]
    for got in vm["disks"]:
        src = want[got["alias"]]
        assert got["sd"] == src["storage_domain"]["name"]
        assert sim_b.admin.disk_sha256(got["id"]) == sim_a.admin.disk_sha256(src["id"])


def warnings(status: dict[str, Any]) -> list[str]:
    return [line for line in status["log"] if " warning: " in line]


def test_two_simulators_are_two_engines_with_the_same_names(
    sim_a: SimProcess, sim_b: SimProcess
) -> None:
    a, b = inventory(sim_a), inventory(sim_b)
    for kind in ("datacenters", "clusters", "storagedomains", "networks", "vnicprofiles"):
        assert set(b[kind]) <= set(a[kind]) and set(b[kind]), kind  # A has dmz too
        assert not set(a[kind].values()) & set(b[kind].values()), kind
    assert set(a["networks"]) - set(b["networks"]) == {"dmz"}


def test_restore_into_another_engine_maps_nics_by_network_name(
    sim_a: SimProcess,
    sim_b: SimProcess,
    sets: dict[str, Path],
    mnt_b: SimMount,
    cleanup_b: list[str],
) -> None:
    cleanup_b.append("dr-m0")
    set_dir = sets["myvm0"]
    manifest_nics = {n["name"]: n for n in _manifest(set_dir)["nics"]}
    assert manifest_nics["nic2"]["network"] == "dmz"  # the set carries the names
    status = restore(mnt_b, set_dir, "dr-m0", "vm_switchon = yes\n")
    assert status["phase"] == "done", status["error"]
    vm = vm_details(sim_b, "dr-m0")
    assert vm is not None and vm["id"] == status["vm_id"] and vm["status"] == "up"
    b = inventory(sim_b)
    assert (vm["cluster"], vm["cluster_id"]) == ("Default", b["clusters"]["Default"])
    # nic1 on B's ovirtmgmt by name; dmz does not exist on B: the management network's
    # profile, with a warning in .status
    assert vm["nic_profiles"] == [
        ("nic1", b["vnicprofiles"]["ovirtmgmt"]),
        ("nic2", b["vnicprofiles"]["ovirtmgmt"]),
    ]
    (warning,) = warnings(status)
    assert "nic nic2: network dmz/dmz does not exist on cluster Default" in warning
    assert any("the set's cluster id is not on this engine" in line for line in status["log"])
    check_disks(sim_a, sim_b, set_dir, vm)


def test_network_map_to_another_network(
    sim_a: SimProcess,
    sim_b: SimProcess,
    sets: dict[str, Path],
    mnt_b: SimMount,
    cleanup_b: list[str],
) -> None:
    cleanup_b.append("dr-m0-mapped")
    set_dir = sets["myvm0"]
    status = restore(
        mnt_b, set_dir, "dr-m0-mapped", "network_map = ovirtmgmt:mynetwork, dmz:mynetwork\n"
    )
    assert status["phase"] == "done", status["error"]
    vm = vm_details(sim_b, "dr-m0-mapped")
    assert vm is not None
    mynetwork = inventory(sim_b)["vnicprofiles"]["mynetwork"]
    assert vm["nic_profiles"] == [("nic1", mynetwork), ("nic2", mynetwork)]
    assert warnings(status) == []
    check_disks(sim_a, sim_b, set_dir, vm)


def test_bad_network_map_target_creates_nothing(
    sim_b: SimProcess, sets: dict[str, Path], mnt_b: SimMount
) -> None:
    before = inventory(sim_b)
    conn = sim_b.sdk_connection()
    try:
        disks_before = {d.id for d in conn.system_service().disks_service().list()}
    finally:
        conn.close()
    target = start_restore(mnt_b, "dr-bad-map", "network_map = dmz:nothere\n")
    result = subprocess.run(
        ["cp", "-a", f"{sets['myvm0']}/.", str(target)], capture_output=True, text=True
    )
    assert result.returncode != 0
    status = restore_status(mnt_b, "dr-bad-map")
    assert status["phase"] == "failed"
    assert (
        "option network_map dmz:nothere: no vnic profile 'nothere' on cluster Default"
        in (status["error"])
    )
    assert vm_details(sim_b, "dr-bad-map") is None
    conn = sim_b.sdk_connection()
    try:
        assert {d.id for d in conn.system_service().disks_service().list()} == disks_before
    finally:
        conn.close()
    assert inventory(sim_b) == before


def test_vm_on_a_template_the_engine_lacks_restores_independent(
    sim_a: SimProcess,
    sim_b: SimProcess,
    sets: dict[str, Path],
    mnt_b: SimMount,
    cleanup_b: list[str],
) -> None:
    # B has no mytemplate at all (and so no tmplvm made from it)
    remove_vm(sim_b, "tmplvm")
    conn = sim_b.sdk_connection()
    try:
        templates = conn.system_service().templates_service()
        for t in templates.list(search="name=mytemplate"):
            templates.template_service(t.id).remove()
    finally:
        conn.close()
    assert "mytemplate" not in inventory(sim_b)["templates"]
    cleanup_b.append("dr-tmplvm")
    set_dir = sets["tmplvm"]
    assert _manifest(set_dir)["vm"]["template_id"] == inventory(sim_a)["templates"]["mytemplate"]
    status = restore(mnt_b, set_dir, "dr-tmplvm")
    assert status["phase"] == "done", status["error"]
    vm = vm_details(sim_b, "dr-tmplvm")
    assert vm is not None and vm["template_id"] == BLANK
    assert any("template mytemplate" in line and "independent" in line for line in status["log"])
    check_disks(sim_a, sim_b, set_dir, vm)


def test_same_engine_keeps_the_exact_profiles_and_template(
    sim_a: SimProcess, sets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    a = inventory(sim_a)
    with mounted(sim_a, tmp_path_factory, "site-a-again", "--grace-period", "1") as mnt:
        try:
            status = restore(mnt, sets["myvm0"], "same-m0")
            assert status["phase"] == "done", status["error"]
            vm = vm_details(sim_a, "same-m0")
            assert vm is not None
            assert vm["nic_profiles"] == [
                ("nic1", a["vnicprofiles"]["ovirtmgmt"]),
                ("nic2", a["vnicprofiles"]["dmz"]),
            ]
            assert warnings(status) == []
            status = restore(mnt, sets["tmplvm"], "same-tmplvm")
            assert status["phase"] == "done", status["error"]
            vm = vm_details(sim_a, "same-tmplvm")
            assert vm is not None and vm["template_id"] == a["templates"]["mytemplate"]
        finally:
            remove_vm(sim_a, "same-m0")
            remove_vm(sim_a, "same-tmplvm")


def _manifest(set_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((set_dir / "manifest.json").read_bytes())
    return doc
