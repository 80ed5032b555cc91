"""Restore sessions against the fake engine: completeness, options, refusals, rollback.

Every test runs on ``MockClock(autojump_threshold=0)``: the grace, truncation and
keep-alive timers of a restore (trio's clock) pass instantly and deterministically.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from rhvfs.engine.types import Template, Vm
from rhvfs.errors import RestoreError
from rhvfs.fs import errno_for
from tests.support.backup_sets import DISK_IDS, VM_ID, SetFiles, make_set
from tests.support.configs import restore_config
from tests.support.data import MiB, sha
from tests.support.fake_engine import CLUSTER_ID, SD2_ID, FakeEngine
from tests.support.restore_rig import Harness, start


@pytest.fixture
async def h(nursery: trio.Nursery, tmp_path: Path) -> Harness:
    engine = FakeEngine()
    return await start(nursery, engine, tmp_path, restore_config())


def check_restored(engine: FakeEngine, s: SetFiles, vm_name: str) -> Vm:
    vm = next(v for v in engine.vms.values() if v.name == vm_name)
    atts = {a.disk.alias: a for a in engine.attachments[vm.id]}
    for d in s.manifest["disks"]:
        att = atts[d["alias"]]
        assert att.disk.provisioned_size == d["size"]
        assert att.disk.format == d["format"]
        assert att.interface == d["interface"]
        assert att.bootable == d["bootable"]
        assert sha(engine.disk_bytes(att.disk.id)) == sha(s.files[d["file"]])
    return vm


async def test_tar_order_restores_vm_with_same_disks_and_nics(
    autojump_clock: MockClock, h: Harness
) -> None:
    s = make_set()
    session = h.manager.create("myvm")
    await h.copy(session, s, ["vm.ovf", "vm.xml", "manifest.json", *s.image_names()])
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    vm = check_restored(h.engine, s, "myvm")
    assert status["vm_id"] == vm.id == VM_ID  # the original id was free
    assert set(h.engine.disks) == set(DISK_IDS[:2])  # original disk ids were free
    assert [(n.name, n.mac) for n in h.engine.nics[vm.id]] == [("nic1", "56:6f:00:00:00:01")]
    ovf, name, regen = h.engine.ovfs[0]
    assert name == "myvm" and not regen
    assert "HostResource" not in ovf and "MACAddress" not in ovf and "OperatingSystemSection" in ovf
    assert [d["bytes_written"] for d in status["disks"]] == [2 * MiB, 1 * MiB]
    assert status["disks"][0]["bytes_uploaded"] == 512 * 1024  # only the data quarter
    with pytest.raises(RestoreError) as e:
        session.new_file("late")
    assert errno_for(e.value) == errno.EROFS


async def test_images_before_manifest_are_staged_then_streamed(
    autojump_clock: MockClock, h: Harness
) -> None:
    s = make_set()
    session = h.manager.create("r1")
    await h.copy(session, s, [*s.image_names(), "vm.ovf", "manifest.json"])
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    check_restored(h.engine, s, "r1")
    assert h.manager.staging.used_bytes == 0


async def test_rsync_temp_names_and_sparse_writes(autojump_clock: MockClock, h: Harness) -> None:
    s = make_set()
    session = h.manager.create("r2")
    for name in ["vm.ovf", "manifest.json", *s.image_names()]:
        await h.write_file(session, name, s.files[name], temp_name=f".{name}.Ab12Cd", sparse=True)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    check_restored(h.engine, s, "r2")


async def test_staging_limit_gives_enospc(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    h = await start(nursery, FakeEngine(), tmp_path, restore_config(), limit=1 * MiB)
    s = make_set()
    session = h.manager.create("r3")
    with pytest.raises(RestoreError) as e:
        await h.write_file(session, s.image_names()[0], s.files[s.image_names()[0]])
    assert errno_for(e.value) == errno.ENOSPC
    status = await h.settle(session)
    assert status["phase"] == "failed" and "staging_limit" in status["error"]
    assert h.engine.disks == {}


async def test_name_clash_refused_before_any_engine_change(
    autojump_clock: MockClock, h: Harness
) -> None:
    h.engine.vms["other"] = Vm(id="other", name="myvm", status="down")
    s = make_set()
    session = h.manager.create("myvm")
    await h.write_file(session, "vm.ovf", s.files["vm.ovf"])
    with pytest.raises(RestoreError) as e:
        await h.write_file(session, "manifest.json", s.files["manifest.json"])
    assert errno_for(e.value) == errno.EEXIST
    with pytest.raises(RestoreError) as e:
        await h.write_file(session, s.image_names()[0], s.files[s.image_names()[0]])
    assert errno_for(e.value) == errno.EEXIST
    status = await h.settle(session)
    assert "already exists" in status["error"]
    assert h.engine.disks == {} and "create_disk" not in h.engine.calls


async def test_copy_with_new_name_regenerates_ids_and_new_macs(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine = FakeEngine()
    h = await start(nursery, engine, tmp_path, restore_config(nics="new"))
    s = make_set()
    first = h.manager.create("myvm")
    await h.copy(first, s)
    assert (await h.settle(first))["phase"] == "done"
    second = h.manager.create("copy")
    await h.write_file(
        second, "rhvfs-restore.conf", b"vm_name = copy2\ndisk_names = disk1:renamed\n"
    )
    await h.copy(second, s)
    status = await h.settle(second)
    assert status["phase"] == "done", status["error"]
    copy = next(v for v in engine.vms.values() if v.name == "copy2")
    assert copy.id != VM_ID and engine.ovfs[-1][2] is True
    aliases = sorted(a.disk.alias for a in engine.attachments[copy.id])
    assert aliases == ["disk0", "renamed"]
    assert not set(a.disk.id for a in engine.attachments[copy.id]) & set(DISK_IDS)
    assert engine.nics[copy.id][0].mac.startswith("56:6f:99:99:99:")
    assert len(engine.vms) == 2  # the original is untouched


async def test_nics_auto_falls_back_to_new_mac_but_original_insists(
    autojump_clock: MockClock, h: Harness
) -> None:
    s = make_set()
    first = h.manager.create("myvm")
    await h.copy(first, s)
    assert (await h.settle(first))["phase"] == "done"
    auto = h.manager.create("auto")
    await h.copy(auto, s)
    status = await h.settle(auto)
    assert status["phase"] == "done", status["error"]
    macs = sorted(n.mac for nics in h.engine.nics.values() for n in nics)
    assert len(set(macs)) == 2 and "56:6f:00:00:00:01" in macs
    assert any("is in use" in line for line in status["log"])
    strict = h.manager.create("strict")
    await h.write_file(strict, "rhvfs-restore.conf", b"nics = original\n")
    await h.copy(strict, s)
    status = await h.settle(strict)
    assert status["phase"] == "failed" and "already in use" in status["error"]
    assert sorted(v.name for v in h.engine.vms.values()) == ["auto", "myvm"]
    assert len(h.engine.disks) == 4  # the failed copy's disks are gone


async def test_options_interface_boot_active_sd_cluster_exclude_switchon(
    autojump_clock: MockClock, h: Harness
) -> None:
    s = make_set(sizes=(1 * MiB, 1 * MiB, 1 * MiB))
    session = h.manager.create("opt")
    opts = (
        f"cluster = mycluster\nstorage_domain = mydata, {DISK_IDS[1]}:other\n"
        "disk_interface = sata\ndisk_boot = no\n"
        f"disk_active = {DISK_IDS[1]}:no\nvm_exclude_disks = disk2\nvm_switchon = yes\n"
        "nics = nic1:56:6f:12:34:56:78\n"
    )
    await h.write_file(session, "rhvfs-restore.conf", opts.encode())
    await h.copy(session, s)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    vm = h.engine.vms[status["vm_id"]]
    assert vm.cluster_id == "c2" and vm.status == "up"
    atts = {a.disk.alias: a for a in h.engine.attachments[vm.id]}
    assert sorted(atts) == ["disk0", "disk1"]
    assert {a.interface for a in atts.values()} == {"sata"}
    assert not any(a.bootable for a in atts.values())
    assert atts["disk0"].active and not atts["disk1"].active
    assert atts["disk1"].disk.storage_domain_id == SD2_ID
    assert h.engine.nics[vm.id][0].mac == "56:6f:12:34:56:78"
    assert [d["state"] for d in status["disks"]] == ["uploaded", "uploaded", "skipped"]


async def test_configuration_only(autojump_clock: MockClock, h: Harness) -> None:
    s = make_set()
    session = h.manager.create("cfg")
    await h.write_file(session, "rhvfs-restore.conf", b"vm_disks = none\n")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    assert h.engine.attachments[status["vm_id"]] == [] and h.engine.disks == {}


async def test_overwrite_replaces_down_vm_after_upload(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine = FakeEngine()
    h = await start(nursery, engine, tmp_path, restore_config(vm_force_overwrite="yes"))
    s = make_set()
    first = h.manager.create("myvm")
    await h.copy(first, s)
    assert (await h.settle(first))["phase"] == "done"
    again = h.manager.create("myvm2")
    await h.write_file(again, "rhvfs-restore.conf", b"vm_name = myvm\n")
    await h.copy(again, s)
    status = await h.settle(again)
    assert status["phase"] == "done", status["error"]
    assert [v.name for v in engine.vms.values()] == ["myvm"]
    # the old VM held its id until the new one was complete: the new one has a new id
    assert status["vm_id"] != VM_ID and VM_ID not in engine.vms
    assert any("keeps its new id" in line for line in status["log"])
    assert engine.calls.index("remove_vm") > max(
        i for i, c in enumerate(engine.calls) if c in ("finalize_transfer", "attach_disk")
    )
    assert engine.calls.index("remove_vm") < engine.calls.index("rename_vm")
    vm = check_restored(engine, s, "myvm")
    # auto MACs: the set's MAC was the old VM's; the new VM got it once the old one was gone
    assert [(n.name, n.mac) for n in engine.nics[vm.id]] == [("nic1", "56:6f:00:00:00:01")]


async def test_overwrite_refuses_running_vm(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine = FakeEngine()
    engine.vms["x"] = Vm(id="x", name="myvm", status="up")
    h = await start(nursery, engine, tmp_path, restore_config(vm_force_overwrite="yes"))
    s = make_set()
    session = h.manager.create("myvm")
    await h.write_file(session, "vm.ovf", s.files["vm.ovf"])
    with pytest.raises(RestoreError) as e:
        await h.write_file(session, "manifest.json", s.files["manifest.json"])
    assert errno_for(e.value) == errno.EBUSY
    assert engine.vms["x"].status == "up" and engine.disks == {}


@pytest.mark.parametrize(
    ("mutate", "match", "code"),
    [
        (lambda s: s.files.update({"manifest.json": b"{not json"}), "not valid JSON", errno.EINVAL),
        (
            lambda s: s.files.update({"manifest.json": b'{"format": "x"}'}),
            "not an rhvfs",
            errno.EINVAL,
        ),
        (lambda s: s.files.update({"vm.ovf": b"<html/>"}), "not an OVF", errno.EINVAL),
        (
            lambda s: s.files.update(
                {
                    "vm.ovf": s.files["vm.ovf"].replace(
                        VM_ID.encode(), b"bbbbbbbb-0000-0000-0000-000000000009"
                    )
                }
            ),
            "two different sets",
            errno.EINVAL,
        ),
    ],
)
async def test_bad_configuration_is_a_clear_error(
    autojump_clock: MockClock, h: Harness, mutate, match: str, code: int
) -> None:  # type: ignore[no-untyped-def]
    s = make_set()
    mutate(s)
    session = h.manager.create("bad")
    with pytest.raises(RestoreError) as e:
        await h.copy(session, s, ["vm.ovf", "manifest.json", *s.image_names()])
    assert errno_for(e.value) == code
    status = await h.settle(session)
    assert status["phase"] == "failed" and match in status["error"]
    assert h.engine.disks == {} and h.engine.vms == {}


async def test_truncated_image_fails_and_rolls_back(autojump_clock: MockClock, h: Harness) -> None:
    s = make_set()
    session = h.manager.create("trunc")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    await h.write_file(session, s.image_names()[0], s.files[s.image_names()[0]])
    img = s.image_names()[1]
    f = await h.write_file(session, img, s.files[img][: 512 * 1024])  # dd count=...
    await trio.sleep(240)  # short and closed is no evidence: it waits (< partial_set_timeout)
    assert session.phase == "uploading"
    assert session.disks[s.manifest["disks"][1]["id"]].state == "uploading"
    with pytest.raises(RestoreError, match="truncated"):
        await session.set_times(f)  # the tool says it is finished: truncated
    status = await h.settle(session)
    assert status["phase"] == "failed" and "truncated" in status["error"]
    assert h.engine.disks == {} and h.engine.vms == {}


async def test_no_room_on_storage_domain(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine = FakeEngine(sd_available=2 * MiB)
    h = await start(nursery, engine, tmp_path, restore_config())
    s = make_set()
    session = h.manager.create("big")
    await h.write_file(session, "vm.ovf", s.files["vm.ovf"])
    with pytest.raises(RestoreError) as e:
        await h.write_file(session, "manifest.json", s.files["manifest.json"])
    assert errno_for(e.value) == errno.ENOSPC
    assert "has 2097152 bytes free" in (await h.settle(session))["error"]


async def test_engine_failure_while_creating_vm_rolls_back_everything(
    autojump_clock: MockClock, h: Harness
) -> None:
    h.engine.fail_on.add("add_nic")
    s = make_set()
    session = h.manager.create("boom")
    await h.copy(session, s)
    status = await h.settle(session)
    assert status["phase"] == "failed" and "injected failure of add_nic" in status["error"]
    assert h.engine.disks == {} and h.engine.vms == {}


async def test_template_set_restores_as_template(autojump_clock: MockClock, h: Harness) -> None:
    s = make_set(kind="template", name="tpl")
    first = h.manager.create("tpl1")
    await h.copy(first, s)
    assert (await h.settle(first))["phase"] == "done"
    session = h.manager.create("tpl2")  # a second copy: the original disk ids are taken now
    await h.copy(session, s)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    assert sorted(t.name for t in h.engine.templates.values()) == ["tpl1", "tpl2"]
    assert status["vm_id"] is None and h.engine.vms == {}
    atts = h.engine.attachments[status["template_id"]]
    assert len(atts) == 2 and not {a.disk.id for a in atts} & set(DISK_IDS)
    assert DISK_IDS[0] not in h.engine.template_ovfs[-1]  # references rewritten to new disks
    for att in atts:
        d = next(x for x in s.manifest["disks"] if x["alias"] == att.disk.alias)
        assert sha(h.engine.disk_bytes(att.disk.id)) == sha(s.files[d["file"]])


async def test_template_name_on_a_vm_set_makes_a_template_and_may_drop_the_vm(
    autojump_clock: MockClock, h: Harness
) -> None:
    s = make_set()
    session = h.manager.create("base")
    await h.write_file(
        session, "rhvfs-restore.conf", b"template_name = golden\nremove_base_vm = yes\n"
    )
    await h.copy(session, s)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    assert [t.name for t in h.engine.templates.values()] == ["golden"]
    assert h.engine.vms == {} and status["vm_id"] is None


async def test_template_name_clash(autojump_clock: MockClock, h: Harness) -> None:
    s = make_set(kind="template", name="tpl")
    h.engine.templates["x"] = Template(id="x", name="tplx")
    session = h.manager.create("tplx")
    with pytest.raises(RestoreError) as e:
        await h.copy(session, s, ["vm.ovf", "manifest.json"])
    assert errno_for(e.value) == errno.EEXIST
    assert h.engine.disks == {}


async def test_cluster_id_from_manifest(autojump_clock: MockClock, h: Harness) -> None:
    s = make_set()
    session = h.manager.create("cl")
    await h.copy(session, s)
    status = await h.settle(session)
    assert h.engine.vms[status["vm_id"]].cluster_id == CLUSTER_ID


async def test_flush_of_an_empty_file_is_not_its_last_close(
    autojump_clock: MockClock, h: Harness
) -> None:
    """dd opens the output, dup2()s it and closes the first descriptor before writing."""
    s = make_set()
    session = h.manager.create("dd")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    for name in s.image_names():
        f = session.new_file(name)
        session.open(f)
        await session.flush(f)  # the close of the dup2()ed descriptor
        for off in range(0, len(s.files[name]), 10240):
            await session.write(f, off, s.files[name][off : off + 10240])
        await session.flush(f)
        await session.release(f)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    check_restored(h.engine, s, "dd")


async def test_rmdir_of_an_unfinished_restore_rolls_it_back(
    autojump_clock: MockClock, h: Harness
) -> None:
    s = make_set()
    session = h.manager.create("half")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    image = s.image_names()[0]
    f = session.new_file(image)
    session.open(f)
    await session.write(f, 0, s.files[image][: 1024 * 1024])  # the tool dies here
    assert len(h.engine.disks) == 1
    h.manager.remove("half")
    with trio.fail_after(5):
        await session.wait_finished()
    assert session.phase == "failed" and "removed" in (session.error or "")
    assert h.engine.disks == {} and "half" not in h.manager.sessions


async def test_stopping_the_manager_mid_restore_rolls_back(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    engine = FakeEngine()
    s = make_set()
    async with trio.open_nursery() as nursery:
        h = await start(nursery, engine, tmp_path, restore_config())
        session = h.manager.create("stop")
        await h.copy(session, s, ["vm.ovf", "manifest.json"])
        f = session.new_file(s.image_names()[0])
        session.open(f)
        await session.write(f, 0, b"\x01" * 4096)
        assert len(engine.disks) == 1
        nursery.cancel_scope.cancel()
    assert session.phase == "failed" and "stopped" in (session.error or "")
    assert engine.disks == {}


PLACEHOLDER = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<!-- rhvfs: the engine returned no OVF for template tpl; see vm.xml -->\n"
    b'<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" ovf:version="0.9"/>\n'
    + b" " * 300
    + b"\n"
)


async def test_placeholder_ovf_is_replaced_by_one_built_from_the_manifest(
    autojump_clock: MockClock, h: Harness
) -> None:
    s = make_set(kind="template", name="tpl")
    s.files["vm.ovf"] = PLACEHOLDER
    session = h.manager.create("tpl-from-manifest")
    await h.copy(session, s)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    ovf = h.engine.template_ovfs[-1]
    assert "OperatingSystemSection_Type" in ovf and "disk0" in ovf
    assert len(h.engine.attachments[status["template_id"]]) == 2


async def test_restic_style_many_opens_of_a_preallocated_file(
    autojump_clock: MockClock, h: Harness
) -> None:
    """restic truncates each file to its size, then writes blobs in any order, one open each."""
    s = make_set()
    session = h.manager.create("restic")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    files = {}
    for name in s.image_names():
        f = session.new_file(name)
        session.open(f)
        await session.truncate(f, len(s.files[name]))
        await session.release(f)
        files[name] = f
    block = 256 * 1024
    jobs = [(n, off) for n in files for off in range(0, len(s.files[n]), block)]
    jobs.reverse()
    for name, off in jobs:
        f = files[name]
        session.open(f)
        piece = s.files[name][off : off + block]
        if piece.strip(b"\0"):
            await session.write(f, off, piece)
        await session.flush(f)
        await session.release(f)
    for f in files.values():
        await session.set_times(f)  # restic's metadata pass at the end
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    check_restored(h.engine, s, "restic")


async def test_utimes_completes_at_once_and_carries_the_error(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine = FakeEngine()
    h = await start(nursery, engine, tmp_path, restore_config())
    h.manager.close_grace_s = 3600.0  # only set_times can complete the images here
    s = make_set()
    session = h.manager.create("utimes")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    good, short = s.image_names()
    f = await h.write_file(session, good, s.files[good])
    await session.set_times(f)
    first = session.disks[s.manifest["disks"][0]["id"]]
    assert first.finish.is_set()  # complete at once, no quiet period ...
    assert first.state == "uploading"  # ... finalized only with the set's last image
    g = await h.write_file(session, short, s.files[short][:4096])
    with pytest.raises(RestoreError, match="truncated") as e:
        await session.set_times(g)
    assert errno_for(e.value) == errno.EIO
    assert (await h.settle(session))["phase"] == "failed"
    assert engine.disks == {}


async def test_idle_upload_is_kept_alive_and_a_short_image_waits_for_reopen(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine = FakeEngine()
    h = await start(nursery, engine, tmp_path, restore_config())
    h.manager.keepalive_s = 0.02
    s = make_set()
    session = h.manager.create("pause")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    name = s.image_names()[0]
    data = s.files[name]
    f = await h.write_file(session, name, data[: len(data) // 2])  # closed short: a pause
    await trio.sleep(0.15)
    assert session.phase == "uploading"  # not yet truncated: restic may come back
    assert engine.flushes >= 2  # keep-alives while idle
    session.open(f)  # ... and it does
    for off in range(len(data) // 2, len(data), 65536):
        await session.write(f, off, data[off : off + 65536])
    await session.release(f)
    await h.write_file(session, s.image_names()[1], s.files[s.image_names()[1]])
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    check_restored(engine, s, "pause")


async def test_uploads_outlive_the_inactivity_timeout_while_the_tool_writes_slowly(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The tool writes half of one image, then takes far longer than the engine's
    inactivity timeout over the other image (a slow source: less than a chunk per
    timeout, so the stream sends nothing while the writes keep coming), then finishes
    the first one: both transfers are kept alive (the fake engine kills a transfer idle
    longer than its inactivity timeout, as the engine does with imageio's idle time)."""
    engine = FakeEngine()
    h = await start(nursery, engine, tmp_path, restore_config())
    s = make_set()
    session = h.manager.create("slow")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    first, second = s.image_names()
    a = session.new_file(first)
    session.open(a)
    half = len(s.files[first]) // 2
    await session.write(a, 0, s.files[first][:half])
    timeout = h.manager.inactivity_timeout_s
    b = session.new_file(second)
    session.open(b)
    data, piece = s.files[second], 16 * 1024
    for off in range(0, len(data), piece):
        await session.write(b, off, data[off : off + piece])
        await trio.sleep(timeout / 20)
    assert trio.current_time() > 3 * timeout  # many inactivity timeouts went by
    assert session.phase == "uploading", session.error
    await session.set_times(b)
    await session.release(b)
    await session.write(a, half, s.files[first][half:])
    await session.set_times(a)
    await session.release(a)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    check_restored(engine, s, "slow")
    assert not engine.open_transfers()


async def test_times_set_through_the_descriptor_complete_at_close(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """cp --preserve sets times with futimens before close(): that close completes the image."""
    engine = FakeEngine()
    h = await start(nursery, engine, tmp_path, restore_config())
    h.manager.close_grace_s = 3600.0
    s = make_set()
    session = h.manager.create("cp-p")
    await h.copy(session, s, ["vm.ovf", "manifest.json"])
    names = s.image_names()
    for name in names:
        f = session.new_file(name)
        session.open(f)
        await session.write(f, 0, s.files[name])
        await session.set_times(f)
        await session.flush(f)  # the last image's returns once its upload is finalized
        assert f.disk is not None and f.disk.finish.is_set()
        assert f.disk.state == ("uploaded" if name == names[-1] else "uploading")
        await session.release(f)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    check_restored(engine, s, "cp-p")


async def test_sparse_disks_need_only_what_they_held(
    autojump_clock: MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    engine = FakeEngine(sd_available=2 * MiB)
    h = await start(nursery, engine, tmp_path, restore_config())
    s = make_set()
    for d in s.manifest["disks"]:
        d["actual_size"] = 512 * 1024
    s.files["manifest.json"] = json.dumps(s.manifest).encode()
    session = h.manager.create("thin")
    await h.copy(session, s)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
