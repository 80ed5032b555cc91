"""Restore acceptance through a real FUSE mount of the simulator (issue 4).

Sets are backed up through the mount (``cp -a`` of ``vms/<vm>/@rhv``) and
written back into ``restore/<name>/`` with tar, cp and rsync; the engine's
state is checked with the SDK and disk contents with the simulator's own
volume checksums (``SimAdmin.disk_sha256``). Every test removes the VMs it
restored, so the shared simulator is left as it was.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mounts import SimMount, restore_status
from tests.support.restore_mounts import (
    export_sets,
    manifest_disks,
    module_mount,
    removing_vms,
    start_restore,
)
from tests.support.sim import engine_state, remove_vm, vm_details

pytestmark = pytest.mark.slow
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def mnt(sim: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimMount]:
    yield from module_mount(sim, tmp_path_factory, "restore-mount", "--grace-period", "1")


@pytest.fixture(scope="module")
def sets(mnt: SimMount, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Backup sets of web01 (3 disks, running) and myvm0 (1 disk, down), taken through the mount."""
    return export_sets(mnt, tmp_path_factory.mktemp("sets"), ("web01", "myvm0"))


@pytest.fixture
def cleanup(sim: Any) -> Iterator[list[str]]:
    yield from removing_vms(sim)


def check_same_vm(sim: Any, set_dir: Path, restored: dict[str, Any]) -> None:
    want = sorted(manifest_disks(set_dir), key=lambda d: d["alias"])
    got = restored["disks"]
    assert [(d["alias"], d["size"], d["format"], d["interface"], d["bootable"]) for d in got] == [
        (d["alias"], d["size"], d["format"], d["interface"], d["bootable"]) for d in want
    ]
    for w, g in zip(want, got, strict=True):
        assert sim.admin.disk_sha256(g["id"]) == sim.admin.disk_sha256(w["id"]), w["alias"]


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tool", ["tar", "tar-b2048", "cp", "rsync", "rsync-inplace", "restic", "dd-direct", "qemu-img"]
)
def test_round_trip(
    sim: Any, mnt: SimMount, sets: dict[str, Path], tmp_path: Path, tool: str, cleanup: list[str]
) -> None:
    name = f"web01-{tool}"
    cleanup.append(name)
    set_dir = sets["web01"]
    target = start_restore(mnt, name)
    if tool.startswith("tar"):
        archive = tmp_path / "set.tar"
        subprocess.run(
            ["tar", "-cSf", str(archive), "-C", str(set_dir.parent), "web01"], check=True
        )
        # the README's line: 1 MiB records (-b 2048) read from an archive made with
        # tar's default 10 KiB ones, so each write is 1 MiB, one FUSE request
        blocking = ["-b", "2048"] if tool == "tar-b2048" else []
        subprocess.run(
            ["tar", *blocking, "-xSf", str(archive), "-C", str(target), "--strip-components=1"],
            check=True,
        )
    elif tool == "cp":
        (target / "vm.ovf").write_bytes((set_dir / "vm.ovf").read_bytes())
        # cp sizes its writes by st_blksize: 1 MiB, one whole FUSE WRITE each
        assert os.stat(target / "vm.ovf").st_blksize == 1 << 20
        subprocess.run(["cp", "-a", f"{set_dir}/.", str(target)], check=True)
    elif tool == "rsync":
        subprocess.run(["rsync", "-a", f"{set_dir}/", f"{target}/"], check=True)
    elif tool == "rsync-inplace":
        subprocess.run(["rsync", "-a", "--inplace", f"{set_dir}/", f"{target}/"], check=True)
    elif tool in ("dd-direct", "qemu-img"):
        # Images written with O_DIRECT (the configuration files first, with cp).
        for path in sorted(set_dir.iterdir()):
            if not path.name.endswith(".raw"):
                shutil.copy2(path, target / path.name)
        images = sorted(set_dir.glob("*.raw"))
        for path in images:
            if tool == "dd-direct":  # every byte written: complete without a touch
                argv = ["dd", f"if={path}", f"of={target / path.name}", "bs=1M", "oflag=direct"]
            else:  # sizes the file first and skips the zero areas
                argv = ["qemu-img", "convert", "-t", "none", "-f", "raw", "-O", "raw"]
                argv += [str(path), str(target / path.name)]
            subprocess.run(argv, check=True, capture_output=True)
        if tool == "qemu-img":
            # The zero areas it skipped are owed, not assumed: no disk is finished
            # until the README's touch says the files are whole.
            status = restore_status(mnt, name, timeout_s=3)  # past the mount's grace period
            assert status["phase"] == "uploading" and not status["settled"]
            assert all(not d["image_complete"] and d["bytes_owed"] for d in status["disks"])
            assert vm_details(sim, name) is None
            for path in images:
                os.utime(target / path.name)
    else:  # restic writes blobs out of order, reopening each file many times
        env = dict(os.environ, RESTIC_PASSWORD="test", RESTIC_REPOSITORY=str(tmp_path / "repo"))
        subprocess.run(["restic", "init", "-q"], check=True, env=env)
        subprocess.run(["restic", "backup", "-q", "."], check=True, env=env, cwd=set_dir)
        subprocess.run(
            ["restic", "restore", "latest", "--target", str(target)],
            check=True,
            env=env,
            capture_output=True,
        )
    status = restore_status(mnt, name)
    assert status["phase"] == "done", status["error"]
    restored = vm_details(sim, name)
    assert restored is not None and restored["id"] == status["vm_id"]
    check_same_vm(sim, set_dir, restored)
    assert [n for n, _ in restored["nics"]] == ["nic1"]
    original = vm_details(sim, "web01")
    assert original is not None and original["status"] == "up"  # the original is untouched
    assert restored["nics"][0][1] != original["nics"][0][1]  # auto: its MAC is in use, so new
    summary = mnt.status()["restores"][name]
    assert {k: summary[k] for k in ("phase", "vm_id", "error")} == {
        "phase": "done",
        "vm_id": status["vm_id"],
        "error": None,
    }
    # progress: every selected disk done, the total is their sizes
    size = sum(d["size"] for d in status["disks"] if d["selected"])
    assert size > 0
    assert summary["progress"]["size"] == summary["progress"]["bytes_done"] == size
    assert summary["progress"]["percent"] == 100.0 and summary["progress"]["eta_s"] == 0.0
    assert [d["progress"]["percent"] for d in summary["disks"]] == [100.0] * len(summary["disks"])


# -- one test per option --------------------------------------------------------------------

ALT_SD = "bs-scsi-012"


def restore_myvm0(mnt: SimMount, sets: dict[str, Path], name: str, options: str) -> dict[str, Any]:
    target = start_restore(mnt, name, options)
    # cp fails (close: EEXIST, ENOTSUP...) when the restore is refused; .status says why
    subprocess.run(["cp", "-a", f"{sets['myvm0']}/.", str(target)], check=False)
    return restore_status(mnt, name)


@pytest.mark.parametrize(
    ("option", "check"),
    [
        ("vm_name = m0-renamed", lambda vm, d: vm["id"] is not None),
        ("cluster = Default", lambda vm, d: vm["cluster"] == "Default"),
        (f"storage_domain = {ALT_SD}", lambda vm, d: d["sd"] == ALT_SD),
        (
            "vm_switchon = yes",
            lambda vm, d: vm["status"] in ("up", "powering_up", "wait_for_launch"),
        ),
        ("disk_interface = sata", lambda vm, d: d["interface"] == "sata"),
        ("disk_active = no", lambda vm, d: d["active"] is False),
        ("disk_boot = no", lambda vm, d: d["bootable"] is False),
        ("disk_names = myvm0_Disk1:restored-disk", lambda vm, d: d["alias"] == "restored-disk"),
        (
            "nics = nic1:56:6f:aa:bb:cc:01",
            lambda vm, d: vm["nics"] == [("nic1", "56:6f:aa:bb:cc:01")],
        ),
        ("nics = new", lambda vm, d: vm["nics"][0][1] != "56:6f:1a:2b:00:02"),
    ],
)
def test_option(
    sim: Any, mnt: SimMount, sets: dict[str, Path], option: str, check: Any, cleanup: list[str]
) -> None:
    key = option.split("=")[0].strip()
    name = "m0-renamed" if key == "vm_name" else f"m0-{key.replace('_', '-')}-{len(option)}"
    cleanup.append(name)
    dir_name = "m0-dir-for-rename" if key == "vm_name" else name
    status = restore_myvm0(mnt, sets, dir_name, option + "\n")
    assert status["phase"] == "done", status["error"]
    vm = vm_details(sim, name)
    assert vm is not None, f"no VM named {name}"
    assert len(vm["disks"]) == 1
    assert check(vm, vm["disks"][0]), vm
    if key != "disk_names":
        src = manifest_disks(sets["myvm0"])[0]
        assert sim.admin.disk_sha256(vm["disks"][0]["id"]) == sim.admin.disk_sha256(src["id"])


def test_option_vm_disks_none_restores_configuration_only(
    sim: Any, mnt: SimMount, sets: dict[str, Path], cleanup: list[str]
) -> None:
    cleanup.append("m0-config-only")
    _, disks_before = engine_state(sim)
    target = start_restore(mnt, "m0-config-only", "vm_disks = none\n")
    for name in ("vm.ovf", "manifest.json"):
        shutil.copy(sets["myvm0"] / name, target / name)
    status = restore_status(mnt, "m0-config-only")
    assert status["phase"] == "done", status["error"]
    vm = vm_details(sim, "m0-config-only")
    assert vm is not None and vm["disks"] == [] and [n for n, _ in vm["nics"]] == ["nic1"]
    assert engine_state(sim)[1] == disks_before


def test_option_vm_exclude_disks(
    sim: Any, mnt: SimMount, sets: dict[str, Path], cleanup: list[str]
) -> None:
    cleanup.append("web01-partial")
    disks = {d["alias"]: d for d in manifest_disks(sets["web01"])}
    target = start_restore(
        mnt, "web01-partial", f"vm_exclude_disks = {disks['web01_data']['id']}\n"
    )
    subprocess.run(["cp", "-a", f"{sets['web01']}/.", str(target)], check=True)
    status = restore_status(mnt, "web01-partial")
    assert status["phase"] == "done", status["error"]
    vm = vm_details(sim, "web01-partial")
    assert vm is not None
    assert [d["alias"] for d in vm["disks"]] == ["web01_logs", "web01_os"]


def test_option_vm_force_overwrite_replaces_a_down_vm(
    sim: Any, mnt: SimMount, sets: dict[str, Path], cleanup: list[str]
) -> None:
    cleanup.append("m0-victim")
    assert (
        restore_myvm0(mnt, sets, "m0-victim", "disk_names = myvm0_Disk1:first\n")["phase"] == "done"
    )
    first = vm_details(sim, "m0-victim")
    assert first is not None
    refused = restore_myvm0(mnt, sets, "m0-victim-again", "vm_name = m0-victim\n")
    assert refused["phase"] == "failed" and "already exists" in refused["error"]
    status = restore_myvm0(
        mnt, sets, "m0-victim-over", "vm_name = m0-victim\nvm_force_overwrite = yes\n"
    )
    assert status["phase"] == "done", status["error"]
    second = vm_details(sim, "m0-victim")
    assert second is not None and second["id"] != first["id"]
    assert second["disks"][0]["alias"] == "myvm0_Disk1"
    vms, disks = engine_state(sim)
    assert first["id"] not in vms and first["disks"][0]["id"] not in disks
    assert not [n for n in vms.values() if "-rhvfs-restore-" in n]  # built aside, renamed


def template_disks(sim: Any, name: str) -> tuple[str, list[str]] | None:
    """(template id, its disk ids) of the template named ``name``, or None."""
    conn = sim.sdk_connection()
    try:
        templates = conn.system_service().templates_service()
        found = [x for x in templates.list(search=f"name={name}") if x.name == name]
        if not found:
            return None
        atts = templates.template_service(found[0].id).disk_attachments_service().list()
        return found[0].id, [a.id for a in atts]
    finally:
        conn.close()


def remove_template(sim: Any, template_id: str) -> None:
    conn = sim.sdk_connection()
    try:
        conn.system_service().templates_service().template_service(template_id).remove()
    finally:
        conn.close()


@pytest.mark.parametrize("remove_base_vm", ["no", "yes"])
def test_option_template_name_on_a_vm_set_makes_a_template(
    sim: Any, mnt: SimMount, sets: dict[str, Path], cleanup: list[str], remove_base_vm: str
) -> None:
    name, tname = f"m0-tpl-{remove_base_vm}", f"m0tpl-{remove_base_vm}"
    cleanup.append(name)
    src = manifest_disks(sets["myvm0"])[0]
    want = sim.admin.disk_sha256(src["id"])
    status = restore_myvm0(
        mnt, sets, name, f"template_name = {tname}\nremove_base_vm = {remove_base_vm}\n"
    )
    assert status["phase"] == "done", status["error"]
    found = template_disks(sim, tname)
    assert found is not None, f"no template named {tname}"
    tid, tdisks = found
    try:
        assert status["template_id"] == tid
        assert len(tdisks) == 1 and tdisks[0] != src["id"]
        assert sim.admin.disk_sha256(tdisks[0]) == want
        vm = vm_details(sim, name)
        if remove_base_vm == "yes":
            assert vm is None  # the restored VM is gone, its template stays
        else:
            assert vm is not None and vm["status"] == "down"
            assert [d["id"] for d in vm["disks"]] != tdisks
            assert sim.admin.disk_sha256(vm["disks"][0]["id"]) == want
    finally:
        remove_vm(sim, name)
        remove_template(sim, tid)


def test_template_set_restores_as_template(sim: Any, mnt: SimMount, tmp_path: Path) -> None:
    set_dir = tmp_path / "tpl"
    subprocess.run(
        ["cp", "-a", str(mnt.mnt / "templates/mytemplate/@rhv"), str(set_dir)], check=True
    )
    target = start_restore(mnt, "mytemplate-copy", "disk_interface = sata\ndisk_boot = no\n")
    subprocess.run(["cp", "-a", f"{set_dir}/.", str(target)], check=True)
    status = restore_status(mnt, "mytemplate-copy")
    assert status["phase"] == "done", status["error"]
    conn = sim.sdk_connection()
    try:
        templates = conn.system_service().templates_service()
        service = templates.template_service(status["template_id"])
        assert service.get().name == "mytemplate-copy"
        atts = service.disk_attachments_service().list()
        src = manifest_disks(set_dir)[0]
        assert len(atts) == 1 and atts[0].id != src["id"]
        assert (atts[0].interface.value, atts[0].bootable) == ("sata", False)  # the options
        assert sim.admin.disk_sha256(atts[0].id) == sim.admin.disk_sha256(src["id"])
        assert [n.name for n in service.nics_service().list()] == ["nic1"]
        service.remove()
    finally:
        conn.close()


# -- bad input ----------------------------------------------------------------------------


def copy_expecting_failure(argv: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode != 0
    return result


def test_name_clash_is_refused_before_any_engine_change(
    sim: Any, mnt: SimMount, sets: dict[str, Path]
) -> None:
    before = engine_state(sim)
    original_sha = sim.admin.disk_sha256(manifest_disks(sets["myvm0"])[0]["id"])
    target = start_restore(mnt, "myvm0")
    result = copy_expecting_failure(["cp", "-a", f"{sets['myvm0']}/.", str(target)])
    assert "File exists" in result.stderr
    status = restore_status(mnt, "myvm0")
    assert status["phase"] == "failed" and "already exists" in status["error"]
    assert status["errno"] == "EEXIST"
    assert engine_state(sim) == before
    assert sim.admin.disk_sha256(manifest_disks(sets["myvm0"])[0]["id"]) == original_sha


def test_truncated_image(sim: Any, mnt: SimMount, sets: dict[str, Path]) -> None:
    before = engine_state(sim)
    target = start_restore(mnt, "m0-truncated")
    for name in ("vm.ovf", "manifest.json"):
        shutil.copy(sets["myvm0"] / name, target / name)
    image = manifest_disks(sets["myvm0"])[0]["file"]
    subprocess.run(
        ["dd", f"if={sets['myvm0'] / image}", f"of={target / image}", "bs=1M", "count=8"],
        check=True,
    )
    # setting the times by path (what tar and cp -a do after writing) says "complete": refused
    with pytest.raises(OSError) as e:
        os.utime(target / image, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    assert e.value.errno == errno.EIO
    status = restore_status(mnt, "m0-truncated")
    assert status["phase"] == "failed" and "truncated" in status["error"]
    assert engine_state(sim) == before


@pytest.mark.parametrize("what", ["corrupt-manifest", "foreign-ovf", "too-big"])
def test_bad_configuration(
    sim: Any, mnt: SimMount, sets: dict[str, Path], tmp_path: Path, what: str
) -> None:
    before = engine_state(sim)
    bad = tmp_path / "set"
    shutil.copytree(sets["myvm0"], bad)
    manifest = bad / "manifest.json"
    if what == "corrupt-manifest":
        manifest.write_bytes(manifest.read_bytes()[:200])
        expect = "not valid JSON"
    elif what == "foreign-ovf":
        shutil.copy(sets["web01"] / "vm.ovf", bad / "vm.ovf")
        expect = "two different sets"
    else:
        doc = json.loads(manifest.read_bytes())
        doc["disks"][0]["size"] = doc["disks"][0]["actual_size"] = 1 << 50
        manifest.write_text(json.dumps(doc))
        expect = "bytes free"
    target = start_restore(mnt, f"m0-{what}")
    copy_expecting_failure(["cp", "-a", f"{bad}/.", str(target)])
    status = restore_status(mnt, f"m0-{what}")
    assert status["phase"] == "failed" and expect in status["error"], status["error"]
    assert engine_state(sim) == before


def test_engine_failure_mid_upload_rolls_back(
    sim: Any, mnt: SimMount, sets: dict[str, Path]
) -> None:
    before = engine_state(sim)
    sim.admin.add_fault("drop-imageio", after_bytes=0, times=1000)
    try:
        target = start_restore(mnt, "m0-dropped")
        copy_expecting_failure(["cp", "-a", f"{sets['myvm0']}/.", str(target)])
        status = restore_status(mnt, "m0-dropped")
    finally:
        sim.admin.clear_faults()
    assert status["phase"] == "failed" and "upload" in status["error"], status["error"]
    deadline = time.monotonic() + 30
    while engine_state(sim) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engine_state(sim) == before


def test_status_and_rmdir(mnt: SimMount) -> None:
    target = start_restore(mnt, "m0-empty")
    status = json.loads((target / ".status").read_bytes())
    assert (status["phase"], status["vm_id"], status["error"]) == ("receiving", None, None)
    (target / "sub" / "dir").mkdir(parents=True)  # mkdir -p of a restore job's path
    (target / "sub" / "dir").rmdir()
    with pytest.raises(OSError) as e:
        (mnt.mnt / "vms" / "x").mkdir()
    assert e.value.errno == errno.EROFS
    (target / "sub").rmdir()
    (target / "x.conf").write_text("# not part of a set\n")
    subprocess.run(["rm", "-rf", str(target)], check=True)  # .status included, quietly
    assert "m0-empty" not in [p.name for p in (mnt.mnt / "restore").iterdir()]
