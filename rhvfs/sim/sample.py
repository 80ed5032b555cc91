"""The `--sample` inventory: names upstream scripts expect, real guest data in every disk.

Owns the seed: 2 data centers, 3 clusters, 2 hosts (address localhost), 3
storage domains (`mydata`, `remote-data`: NFS; `bs-scsi-012`: iSCSI, whose new raw
preallocated disks start with stale data like an LV), networks and vNIC
profiles (`ovirtmgmt`, `mynetwork`), tags `mytag` and `production`, the
template `mytemplate`, and VMs in every interesting state: `myvm` (down, two
qcow2 disks with incremental backup, one of them `mydisk`, snapshot `mysnap`),
`web01` (up: raw preallocated + qcow2 without incremental + qcow2 with),
`db01` (paused), `app01` (suspended), `myvm0`, `myagent`, `tmplvm` (made from
`mytemplate`), `remote01` (second data center), plus a floating disk. Every
disk is a GPT + ext4 guest image from `guestdata.make_guest_image` with the
VM name as hostname. Ids are fixed (uuid5 of the names), so two sample
directories describe the same inventory; an engine name (`serve --engine-name`)
gives every object other fixed ids, so two simulators side by side are two
engines with the same names (disaster recovery). Used once, on a fresh state dir.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import tempfile
import time
import uuid
from pathlib import Path

from rhvfs.sim import guestdata
from rhvfs.sim.state import (
    ZERO_ID,
    Attachment,
    Cluster,
    DataCenter,
    Disk,
    Host,
    Network,
    Nic,
    Snapshot,
    State,
    StorageDomain,
    Tag,
    Template,
    Vm,
    VnicProfile,
    Volume,
    now_iso,
)
from rhvfs.sim.storage import Storage

log = logging.getLogger(__name__)

MiB = 1024**2
GiB = 1024**3
_NS = uuid.UUID("6d1f8f50-0c2b-4c56-9a55-1f0b7c8e9a10")


def sid(*parts: str, engine: str = "") -> str:
    """The fixed id of a sample object (`sid("vm", "myvm")`); another `engine` name (the
    `--engine-name` of `serve`) gives every object another id, the same on every run."""
    return str(uuid.uuid5(_NS, "/".join((f"engine={engine}", *parts) if engine else parts)))


@dataclasses.dataclass(frozen=True)
class _DiskSpec:
    vm: str  # owner VM (or template / "" for floating), also the guest hostname
    alias: str
    size: int
    fmt: str
    sparse: bool = True
    backup: str = "none"
    bootable: bool = False
    interface: str = "virtio_scsi"
    sd: str = "mydata"
    files_mib: int = 1


_DISKS = (
    _DiskSpec(
        "myvm", "myvm_Disk1", 1 * GiB, "cow", backup="incremental", bootable=True, files_mib=4
    ),
    _DiskSpec("myvm", "mydisk", 256 * MiB, "cow", backup="incremental"),
    _DiskSpec(
        "web01", "web01_os", 256 * MiB, "raw", sparse=False, bootable=True, interface="virtio"
    ),
    _DiskSpec("web01", "web01_data", 512 * MiB, "cow"),
    _DiskSpec("web01", "web01_logs", 256 * MiB, "cow", backup="incremental"),
    _DiskSpec("db01", "db01_Disk1", 512 * MiB, "cow", backup="incremental", bootable=True),
    _DiskSpec("app01", "app01_Disk1", 256 * MiB, "cow", backup="incremental", bootable=True),
    _DiskSpec("myvm0", "myvm0_Disk1", 256 * MiB, "cow", backup="incremental", bootable=True),
    _DiskSpec("remote01", "remote01_Disk1", 256 * MiB, "cow", bootable=True, sd="remote-data"),
    _DiskSpec("mytemplate", "mytemplate_Disk1", 256 * MiB, "raw", bootable=True),
    _DiskSpec("", "floating", 256 * MiB, "raw"),
)

# name -> (status, cluster, tags)
_VMS = {
    "myvm": ("down", "Default", ["mytag"]),
    "myvm0": ("down", "Default", ["mytag"]),
    "myagent": ("down", "Default", []),
    "web01": ("up", "mycluster", ["production"]),
    "db01": ("paused", "Default", ["production"]),
    "app01": ("suspended", "Default", []),
    "tmplvm": ("down", "Default", []),
    "remote01": ("down", "remote", []),
}


def build_sample(
    state: State,
    storage: Storage,
    *,
    workers: int = 2,
    engine_name: str = "",
    extra_networks: tuple[str, ...] = (),
) -> None:
    """Fill an empty state and storage with the sample inventory. With an `engine_name`
    every id differs (another engine with the same names, for disaster-recovery tests);
    `extra_networks` are more networks of `Default`, each with a vNIC profile of its name."""
    start = time.monotonic()
    st = state

    ids = functools.partial(sid, engine=engine_name)
    dc1 = DataCenter(id=ids("dc", "Default"), name="Default", description="The default Data Center")
    dc2 = DataCenter(id=ids("dc", "remote"), name="remote", description="A second site")
    for dc in (dc1, dc2):
        st.datacenters[dc.id] = dc
    clusters = {
        "Default": Cluster(
            id=ids("cluster", "Default"),
            name="Default",
            dc_id=dc1.id,
            description="The default server cluster",
        ),
        "mycluster": Cluster(id=ids("cluster", "mycluster"), name="mycluster", dc_id=dc1.id),
        "remote": Cluster(id=ids("cluster", "remote"), name="remote", dc_id=dc2.id),
    }
    for c in clusters.values():
        st.clusters[c.id] = c
    for h in (
        Host(
            id=ids("host", "host1"),
            name="host1",
            address="localhost",
            cluster_id=clusters["Default"].id,
        ),
        Host(
            id=ids("host", "host2"),
            name="host2",
            address="localhost",
            cluster_id=clusters["remote"].id,
        ),
    ):
        st.hosts[h.id] = h
    for name in ("ovirtmgmt", "mynetwork", *extra_networks):
        n = Network(id=ids("network", name), name=name, dc_id=dc1.id)
        st.networks[n.id] = n
        p = VnicProfile(id=ids("vnicprofile", name), name=name, network_id=n.id)
        st.vnic_profiles[p.id] = p
    sds = {
        "mydata": StorageDomain(
            id=ids("sd", "mydata"), name="mydata", dc_id=dc1.id, master=True, path="/exports/mydata"
        ),
        "bs-scsi-012": StorageDomain(
            id=ids("sd", "bs-scsi-012"),
            name="bs-scsi-012",
            dc_id=dc1.id,
            storage_type="iscsi",
            path="/dev/bs-scsi-012",
        ),
        "remote-data": StorageDomain(
            id=ids("sd", "remote-data"),
            name="remote-data",
            dc_id=dc2.id,
            master=True,
            path="/exports/remote",
        ),
    }
    for sd in sds.values():
        st.storage_domains[sd.id] = sd
    for name, desc in (("mytag", "My tag"), ("production", "Production VMs")):
        t = Tag(id=ids("tag", name), name=name, description=desc)
        st.tags[t.id] = t

    template = Template(
        id=ids("template", "mytemplate"),
        name="mytemplate",
        description="A small template",
        cluster_id=clusters["Default"].id,
        nics=[
            Nic(
                id=ids("nic", "mytemplate", "nic1"),
                name="nic1",
                mac="",
                vnic_profile_id=ids("vnicprofile", "ovirtmgmt"),
            )
        ],
    )
    st.templates[template.id] = template

    vms: dict[str, Vm] = {}
    for i, (name, (status, cluster, tags)) in enumerate(_VMS.items()):
        active = Snapshot(
            id=ids("snapshot", name, "active"),
            vm_id=ids("vm", name),
            description="Active VM",
            date=now_iso(),
            type="active",
        )
        st.snapshots[active.id] = active
        running = status in ("up", "paused")
        vm = Vm(
            id=ids("vm", name),
            name=name,
            cluster_id=clusters[cluster].id,
            active_snapshot_id=active.id,
            status=status,
            description=f"sample VM {name}",
            template_id=template.id if name == "tmplvm" else ZERO_ID,
            memory_bytes=2 * GiB if name == "web01" else GiB,
            cpu_sockets=2 if name == "web01" else 1,
            os_type="rhel_9x64",
            host_id=ids("host", "host1") if running else None,
            creation_time=now_iso(),
            start_time=now_iso() if running else None,
            tag_ids=[ids("tag", t) for t in tags],
            snapshot_ids=[active.id],
            nics=[
                Nic(
                    id=ids("nic", name, "nic1"),
                    name="nic1",
                    mac=f"56:6f:1a:2b:00:{i + 1:02x}",
                    vnic_profile_id=ids(
                        "vnicprofile", "ovirtmgmt" if name != "web01" else "mynetwork"
                    ),
                )
            ]
            if name != "remote01"
            else [],
        )
        st.vms[vm.id] = vm
        vms[name] = vm

    # Appended (not inserted) so that earlier disks keep their seeds and bytes.
    specs = list(_DISKS) + [
        _DiskSpec("tmplvm", "mytemplate_Disk1", 256 * MiB, "raw", bootable=True),
        _DiskSpec("myagent", "myagent_Disk1", 256 * MiB, "cow", bootable=True),
    ]
    with tempfile.TemporaryDirectory(prefix=".sample-", dir=storage.root) as tmp:

        def make(index: int, spec: _DiskSpec) -> None:
            disk_id = ids("disk", spec.vm, spec.alias)
            vol_id = ids("volume", spec.vm, spec.alias, "base")
            raw = Path(tmp) / f"{index}.raw"
            guestdata.make_guest_image(
                raw,
                size=spec.size,
                hostname=spec.vm or "floating",
                seed=index + 1,
                files_mib=spec.files_mib,
            )
            storage.import_raw(
                sds[spec.sd].id,
                disk_id,
                vol_id,
                raw,
                fmt="cow" if spec.fmt == "cow" else "raw",
                sparse=spec.sparse,
            )
            raw.unlink()

        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for f in [pool.submit(make, i, s) for i, s in enumerate(specs)]:
                f.result()

    for spec in specs:
        disk_id = ids("disk", spec.vm, spec.alias)
        owner = vms.get(spec.vm)
        disk = Disk(
            id=disk_id,
            alias=spec.alias,
            sd_id=sds[spec.sd].id,
            provisioned_size=spec.size,
            sparse=spec.sparse,
            backup=spec.backup,
            description=f"sample disk of {spec.vm}" if spec.vm else "a floating disk",
            volumes=[
                Volume(
                    id=ids("volume", spec.vm, spec.alias, "base"),
                    fmt=spec.fmt,
                    snapshot_id=owner.active_snapshot_id if owner else None,
                )
            ],
        )
        st.disks[disk.id] = disk
        att = Attachment(disk_id=disk.id, interface=spec.interface, bootable=spec.bootable)
        if owner is not None:
            owner.attachments.append(att)
        elif spec.vm == "mytemplate":
            template.attachments.append(att)

    # myvm has one snapshot, `mysnap`, taken after the guest data was written.
    myvm = vms["myvm"]
    mysnap = Snapshot(
        id=ids("snapshot", "myvm", "mysnap"), vm_id=myvm.id, description="mysnap", date=now_iso()
    )
    st.snapshots[mysnap.id] = mysnap
    myvm.snapshot_ids.insert(0, mysnap.id)
    for a in myvm.attachments:
        d = st.disks[a.disk_id]
        base = d.active
        top_id = ids("volume", "myvm", d.alias, "after-mysnap")
        storage.snapshot(d.sd_id, d.id, base.id, top_id)
        base.snapshot_id = mysnap.id
        d.volumes.append(
            Volume(id=top_id, fmt="cow", parent_id=base.id, snapshot_id=myvm.active_snapshot_id)
        )
    state.save()
    log.info("sample inventory ready in %.1f s", time.monotonic() - start)
