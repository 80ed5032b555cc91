"""The README's backup recipes, each run with the real tool against a simulator mount.

Every command here is the one the README's "Backing up" section shows (with the
mount and backup paths of the test). Each run is checked on its data (sha256
of what came out against the simulator's own sha256 of the disk) and, for the
tools that skip unchanged files, on what the engine did: a second run over an
unchanged down VM creates no snapshot (so it read no disk data) and the tool
reports the images unchanged; after a guest write into the down VM's disk the
next run reads it again and holds the write.

A private simulator (the tests write into a guest) and one mount for the module.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bacula import BaculaRig, FileSet
from tests.support.data import sha256_file
from tests.support.mounts import SimMount, restic_summary, restore_status, set_shas
from tests.support.sim import (
    EngineCalls,
    SimProcess,
    counting_engine_calls,
    remove_vm,
    start_sim,
    vm_and_first_disk,
    vm_details,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
VM = "myvm0"  # down, one 256 MiB thin qcow2 disk with about 1 MiB of guest data
TAG = "mytag"  # myvm and myvm0
SNAPSHOTS = ("POST", "/vms/{vm}/snapshots")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    s = start_sim(tmp_path_factory.mktemp("recipesim"), sample=True)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def mount(sim: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimMount]:
    work = tmp_path_factory.mktemp("recipemnt")
    (work / "state").mkdir()
    m = SimMount(sim, work / "mnt", work / "state", "--grace-period", "1")
    try:
        yield m
    finally:
        m.umount()


def image_of(mount: SimMount, vm: str) -> Path:
    set_dir = mount.mnt / "vms" / vm / "@rhv"
    [image] = [p for p in set_dir.iterdir() if p.name.endswith(".raw")]
    return image


def write_into_down_vm(sim: SimProcess, mount: SimMount, offset_mib: int, text: bytes) -> str:
    """A guest write into the down VM's disk (into space it had not allocated yet, so the
    engine's allocation of the disk changes), once the mount has let go of the disk; returns
    the disk's sha256 afterwards. Waits until the mount's listing shows the new time (its
    listings are renewed after ``listing_ttl``, 5 s)."""
    _, disk = vm_and_first_disk(sim, VM)  # not from the manifest: that would begin a read
    image = image_of(mount, VM)
    assert wait_until(lambda: not mount.status()["sessions"]["sessions"]), mount.status()
    before = os.stat(image)
    sim.admin.guest_write(disk=disk, offset=offset_mib * MiB, data=text * (MiB // len(text)))
    assert wait_until(lambda: os.stat(image).st_mtime_ns != before.st_mtime_ns, 30)
    after = os.stat(image)
    # A new date, in whole seconds too (Bacula compares seconds), never in the future.
    assert after.st_mtime > before.st_mtime and int(after.st_mtime) > int(before.st_mtime)
    assert after.st_ctime_ns == after.st_mtime_ns
    return sim.admin.disk_sha256(disk)


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload, no-any-return]


def sh(script: str, **kw: object) -> subprocess.CompletedProcess[str]:
    """A README line as the shell runs it (its globs expand where the line says)."""
    return run(["sh", "-ec", script], **kw)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


# -- tar, rsync, cp ---------------------------------------------------------------------


def test_tar_one_vm_and_a_tag(sim: SimProcess, mount: SimMount, tmp_path: Path) -> None:
    """``tar -C`` for one VM; for a tag, ``cd`` into the mount first so that the shell expands
    ``tags/<tag>/*/@rhv`` there (``-C`` acts only after the shell expanded the glob)."""
    backup, mnt = tmp_path / "backup", mount.mnt
    backup.mkdir()
    sh(f"tar -cSf {backup}/{VM}.tar -C {mnt}/vms/{VM} @rhv")
    sh(f"cd {mnt} && tar -cSf {backup}/{TAG}.tar tags/{TAG}/*/@rhv")
    members = run(["tar", "-tf", str(backup / f"{TAG}.tar")]).stdout.splitlines()
    assert {m.split("/")[2] for m in members if m.endswith(".raw")} == {"myvm", VM}
    for archive in (f"{VM}.tar", f"{TAG}.tar"):
        out = tmp_path / archive.removesuffix(".tar")
        out.mkdir()
        run(["tar", "-xSf", str(backup / archive), "-C", str(out)])
        sets = [out / "@rhv"] if archive == f"{VM}.tar" else sorted(out.glob("tags/*/*/@rhv"))
        assert len(sets) == (1 if archive == f"{VM}.tar" else 2)
        for set_dir in sets:
            shas = set_shas(set_dir)
            assert shas == {d: sim.admin.disk_sha256(d) for d in shas}, set_dir


def test_rsync_sparse_mirrors_a_set_and_skips_it_when_unchanged(
    sim: SimProcess, mount: SimMount, tmp_path: Path
) -> None:
    """``rsync -aS``: the copy takes about the disk's data, not its size; a second run over
    the unchanged down VM creates no snapshot (rsync's quick check: size and mtime)."""
    mirror = tmp_path / VM
    recipe = f"rsync -aS {mount.mnt}/vms/{VM}/@rhv/ {mirror}/"
    sh(recipe)
    shas = set_shas(mirror)
    assert shas == {d: sim.admin.disk_sha256(d) for d in shas}
    [image] = mirror.glob("*.raw")
    assert image.stat().st_size == 256 * MiB
    assert allocated(image) < 32 * MiB  # about 1 MiB of guest data, holes left out
    with counting_engine_calls(sim) as calls:
        out = sh(recipe.replace("rsync -aS", "rsync -aS --itemize-changes")).stdout
    assert calls.of(*SNAPSHOTS) == 0, calls.counts
    assert ".raw" not in out, out  # nothing to transfer for the image


def test_cp_copies_a_set_sparse(sim: SimProcess, mount: SimMount, tmp_path: Path) -> None:
    copy = tmp_path / VM
    sh(f"cp -a --sparse=always {mount.mnt}/vms/{VM}/@rhv {copy}")
    shas = set_shas(copy)
    assert shas == {d: sim.admin.disk_sha256(d) for d in shas}
    [image] = copy.glob("*.raw")
    assert allocated(image) < 32 * MiB


# -- restic and borg: unchanged down VMs are skipped, changed ones read again ----------------


def restic_env(repo: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": "test",
        "RESTIC_CACHE_DIR": str(repo.parent / "cache"),
    }


def test_restic_skips_an_unchanged_down_vm_and_reads_a_changed_one(
    sim: SimProcess, mount: SimMount, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    env = restic_env(repo)
    run(["restic", "init"], env=env)
    set_dir = mount.mnt / "vms" / VM / "@rhv"
    first = restic_summary(repo, set_dir)
    assert first["files_new"] == 4
    with counting_engine_calls(sim) as calls:
        second = restic_summary(repo, set_dir)
    assert calls.of(*SNAPSHOTS) == 0, calls.counts  # no disk data read
    assert (second["files_new"], second["files_changed"], second["files_unmodified"]) == (0, 0, 4)
    want = write_into_down_vm(sim, mount, 120, b"restic sees this write ")
    with counting_engine_calls(sim) as calls:
        third = restic_summary(repo, set_dir)
    assert calls.of(*SNAPSHOTS) == 1, calls.counts
    assert third["files_changed"] >= 1  # the image (and the configuration, which is newer)
    target = tmp_path / "restored"
    sh(f"restic restore latest --target {target}", env=env)
    restored = target / str(set_dir).lstrip("/")
    assert set(set_shas(restored).values()) == {want}


def borg_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "BORG_REPO": str(tmp_path / "borg"),
        "BORG_BASE_DIR": str(tmp_path / "borghome"),  # its cache and files cache
        "BORG_PASSPHRASE": "",
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
    }


#: The README's archive name, to the microsecond: two runs within a second must not clash.
BORG_ARCHIVE = VM + "-{now:%Y-%m-%dT%H:%M:%S.%f}"


def borg_create(
    sim: SimProcess, set_dir: Path, env: dict[str, str]
) -> tuple[dict[str, str], EngineCalls]:
    """``borg create --list``: each file's status letter (A added, M modified, U unchanged)
    by name, and the engine calls the run made."""
    with counting_engine_calls(sim) as calls:
        out = run(["borg", "create", "--list", f"::{BORG_ARCHIVE}", str(set_dir)], env=env).stderr
    statuses = {}
    for line in out.splitlines():
        letter, _, path = line.partition(" ")
        if path.startswith(str(set_dir) + "/"):
            statuses[Path(path).name] = letter
    return statuses, calls


def test_borg_skips_an_unchanged_down_vm_and_reads_a_changed_one(
    sim: SimProcess, mount: SimMount, tmp_path: Path
) -> None:
    """borg 1.2 keeps in its files cache only the files older than the newest file it read in
    a run: the configuration files are newer than the images, so the images are kept."""
    env = borg_env(tmp_path)
    run(["borg", "init", "--encryption=none"], env=env)
    set_dir = mount.mnt / "vms" / VM / "@rhv"
    image = image_of(mount, VM).name
    first, _ = borg_create(sim, set_dir, env)
    assert first[image] == "A" and len(first) == 4, first
    second, calls = borg_create(sim, set_dir, env)
    assert calls.of(*SNAPSHOTS) == 0, calls.counts  # no disk data read
    assert second[image] == "U", second
    want = write_into_down_vm(sim, mount, 140, b"borg sees this write ")
    third, calls = borg_create(sim, set_dir, env)
    assert calls.of(*SNAPSHOTS) == 1, calls.counts
    assert third[image] == "M", third
    third_name = sh(f"borg list --short --last 1 --glob-archives '{VM}-*'", env=env).stdout
    fourth, calls = borg_create(sim, set_dir, env)
    assert calls.of(*SNAPSHOTS) == 0 and fourth[image] == "U", (fourth, calls.counts)
    target = tmp_path / "extracted"
    target.mkdir()
    sh(f"borg extract --sparse ::{third_name.strip()}", env=env, cwd=target)
    assert set(set_shas(target / str(set_dir).lstrip("/")).values()) == {want}


# -- Bacula ----------------------------------------------------------------------------------


def test_bacula_job_per_vm_accurate_incrementals_and_restore_into_restore_dir(
    sim: SimProcess, mount: SimMount, tmp_path: Path
) -> None:
    """One Job per VM with a FileSet naming the VM's set directory (``sparse = yes``): an
    Accurate Incremental of the unchanged down VM saves nothing and creates no snapshot;
    after a write the next one saves the image; the Full plus Incrementals restored into
    ``restore/<name>`` (strip_prefix) make a VM whose disk is the disk after the write."""
    set_dir = mount.mnt / "vms" / VM / "@rhv"
    fileset = FileSet([str(set_dir)], options={"signature": "SHA1", "sparse": "yes"})
    name = f"{VM}-bacula"
    with BaculaRig(tmp_path / "bacula") as rig:
        full = rig.run_backup(VM, fileset, accurate=True)
        assert full.ok, full.log
        with counting_engine_calls(sim) as calls:
            same = rig.run_backup(VM, level="Incremental")
        assert same.ok, same.log
        assert calls.of(*SNAPSHOTS) == 0, calls.counts
        assert same.level == "I" and same.files == 0, same.describe()
        want = write_into_down_vm(sim, mount, 160, b"bacula sees this write ")
        with counting_engine_calls(sim) as calls:
            changed = rig.run_backup(VM, level="Incremental")
        assert changed.ok, changed.log
        assert calls.of(*SNAPSHOTS) == 1, calls.counts
        saved = rig.list_files(changed.jobid)
        assert str(image_of(mount, VM)) in saved, saved
        (mount.mnt / "restore" / name).mkdir()
        try:
            restored = rig.run_restore(
                [full.jobid, same.jobid, changed.jobid],
                mount.mnt / "restore" / name,
                strip_prefix=set_dir,
            )
            assert restored.ok, restored.log
            status = restore_status(mount, name)
            assert status["phase"] == "done", status
            details = vm_details(sim, name)
            assert details is not None
            assert [sim.admin.disk_sha256(d["id"]) for d in details["disks"]] == [want]
        finally:
            remove_vm(sim, name)


def test_bacula_fileset_for_a_tag_lists_its_set_directories(
    sim: SimProcess, mount: SimMount, tmp_path: Path
) -> None:
    """``File = tags/<tag>`` saves the symlinks only; a command the File Daemon runs when
    the job starts (``\\|``) lists the set directories behind them, under ``vms/``."""
    mnt = mount.mnt
    links = FileSet([f"{mnt}/tags/{TAG}"], options={"signature": "SHA1", "sparse": "yes"})
    listed = FileSet(
        [f"\\|sh -c 'readlink -f {mnt}/tags/{TAG}/*/@rhv'"],
        options={"signature": "SHA1", "sparse": "yes"},
    )
    with BaculaRig(tmp_path / "bacula") as rig:
        only_links = rig.run_backup("tag-links", links)
        assert only_links.ok, only_links.log
        assert not [f for f in rig.list_files(only_links.jobid) if f.endswith(".raw")]
        assert only_links.bytes == 0, only_links.describe()
        job = rig.run_backup("tag-sets", listed)
        assert job.ok, job.log
        saved = rig.list_files(job.jobid)
        images = [f for f in saved if f.endswith(".raw")]
        assert {Path(f).parent.parent.name for f in images} == {"myvm", VM}, saved
        assert all(f.startswith(f"{mnt}/vms/") for f in images), images
        where = tmp_path / "where"
        restored = rig.run_restore(job.jobid, where)
        assert restored.ok, restored.log
        for vm in ("myvm", VM):
            shas = set_shas(where / str(mnt).lstrip("/") / "vms" / vm / "@rhv")
            assert shas == {d: sim.admin.disk_sha256(d) for d in shas}, vm


def test_tar_configuration_only_creates_nothing_on_the_engine(
    mount: SimMount, sim: SimProcess, tmp_path: Path
) -> None:
    set_dir = mount.mnt / "vms" / VM / "@rhv"
    with counting_engine_calls(sim) as calls:
        sh(f"tar -cf {tmp_path}/cfg.tar {set_dir}/vm.ovf {set_dir}/manifest.json")
    assert calls.of(*SNAPSHOTS) == 0, calls.counts
    names = run(["tar", "-tf", str(tmp_path / "cfg.tar")]).stdout.split()
    assert [Path(n).name for n in names] == ["vm.ovf", "manifest.json"]


def test_tar_skipping_a_disk(sim: SimProcess, mount: SimMount, tmp_path: Path) -> None:
    """Last in the module: a set read without one of its disks never completes, so its
    snapshot stays until ``read_idle_limit`` (or the unmount)."""
    set_dir = mount.mnt / "vms/myvm/@rhv"
    # alias -> (file name, disk id), from the listing alone (reading the manifest would begin
    # a read of the set before tar's)
    images = {
        n.split("--")[0]: (n, n.removesuffix(".raw").split("--")[1])
        for n in os.listdir(set_dir)
        if n.endswith(".raw")
    }
    (_, skipped), (kept_name, kept) = images["myvm_Disk1"], images["mydisk"]
    sh(f"tar -cSf {tmp_path}/db.tar --exclude='*--{skipped}.raw' -C {mount.mnt}/vms/myvm @rhv")
    out = tmp_path / "out"
    out.mkdir()
    run(["tar", "-xSf", str(tmp_path / "db.tar"), "-C", str(out)])
    assert sorted(p.name for p in (out / "@rhv").glob("*.raw")) == [kept_name]
    assert sha256_file(out / "@rhv" / kept_name) == sim.admin.disk_sha256(kept)
