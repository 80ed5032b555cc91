"""`--extra-vms N`: many small VMs added to the sample inventory, for scale tests and benches.

Owns the shape of the extra VMs and their quick creation: records straight
into the state and empty volumes through `Storage.create_empty_volumes`
(no HTTP, no qemu-img per disk), so a thousand VMs take about a second.
VM `i` (0-based) of N is called `vm-NNNN` (zero-padded to at least 4 digits)
and has:

- cluster `Default`, `mycluster` or `remote` (i % 3); its disks live on the
  cluster's data center's master domain (`mydata` or `remote-data`);
- tag `group{(i // 3) % 3}` (independent of the cluster) unless i % 4 == 3
  (no tag then), plus `even` for even i;
- status `up` (on a host) when i % 10 == 0, else `down`;
- disk `vm-NNNN_Disk1`: qcow2, thin, 64 MiB, incremental backup, bootable;
  for odd i also `vm-NNNN_Disk2`: raw sparse, 32 MiB, no incremental backup;
  all empty (guest reads give zeroes);
- NIC `nic1` on `ovirtmgmt`, and for i % 3 == 0 also `nic2` on `mynetwork`.

Ids are fixed (the sample's uuid5 scheme), so two state dirs built with the
same N describe the same inventory. It must run on a fresh sample state, once.
"""

from __future__ import annotations

import functools
import logging
import time

from rhvfs.sim.sample import MiB, sid
from rhvfs.sim.state import (
    ZERO_ID,
    Attachment,
    Disk,
    Nic,
    Snapshot,
    State,
    Tag,
    Vm,
    Volume,
    now_iso,
)
from rhvfs.sim.storage import EmptyVolume, Storage

log = logging.getLogger(__name__)

CLUSTERS = ("Default", "mycluster", "remote")
GROUP_TAGS = ("group0", "group1", "group2")
EVEN_TAG = "even"
DISK1_SIZE = 64 * MiB
DISK2_SIZE = 32 * MiB


def extra_vm_name(i: int, count: int) -> str:
    return f"vm-{i:0{max(4, len(str(count - 1)))}d}"


def extra_vm_tags(i: int) -> list[str]:
    """Tag names of extra VM `i`."""
    tags = [] if i % 4 == 3 else [GROUP_TAGS[(i // 3) % 3]]
    if i % 2 == 0:
        tags.append(EVEN_TAG)
    return tags


def add_extra_vms(state: State, storage: Storage, count: int, *, engine_name: str = "") -> None:
    """Add `count` extra VMs to a state that holds the sample inventory (built with the
    same `engine_name`: ids as `sample.sid`)."""
    if count <= 0:
        return
    start = time.monotonic()
    ids = functools.partial(sid, engine=engine_name)
    st = state
    by_name = {c.name: c for c in st.clusters.values()}
    missing = [name for name in CLUSTERS if name not in by_name]
    if missing:
        raise ValueError(f"extra VMs need the sample inventory (no cluster {missing[0]})")
    masters = {sd.dc_id: sd for sd in st.storage_domains.values() if sd.master}
    # A running VM runs on a host of its data center.
    dc_hosts: dict[str, str] = {}
    for h in st.hosts.values():
        dc_hosts.setdefault(st.clusters[h.cluster_id].dc_id, h.id)
    tag_ids: dict[str, str] = {}
    for name in (*GROUP_TAGS, EVEN_TAG):
        tag = Tag(id=ids("tag", name), name=name, description=f"extra VMs: {name}")
        st.tags.setdefault(tag.id, tag)
        tag_ids[name] = tag.id
    mgmt, net = ids("vnicprofile", "ovirtmgmt"), ids("vnicprofile", "mynetwork")
    taken = {v.name for v in st.vms.values()}
    volumes: list[EmptyVolume] = []
    for i in range(count):
        name = extra_vm_name(i, count)
        if name in taken:
            raise ValueError(f"a VM called {name} already exists")
        cluster = by_name[CLUSTERS[i % 3]]
        sd = masters[cluster.dc_id]
        vm_id = ids("vm", name)
        active = Snapshot(
            id=ids("snapshot", name, "active"),
            vm_id=vm_id,
            description="Active VM",
            date=now_iso(),
            type="active",
        )
        st.snapshots[active.id] = active
        up = i % 10 == 0
        nics = [Nic(id=ids("nic", name, "nic1"), name="nic1", mac=_mac(i, 1), vnic_profile_id=mgmt)]
        if i % 3 == 0:
            nics.append(
                Nic(id=ids("nic", name, "nic2"), name="nic2", mac=_mac(i, 2), vnic_profile_id=net)
            )
        vm = Vm(
            id=vm_id,
            name=name,
            cluster_id=cluster.id,
            active_snapshot_id=active.id,
            status="up" if up else "down",
            description=f"extra VM {i}",
            template_id=ZERO_ID,
            os_type="rhel_9x64",
            host_id=dc_hosts.get(cluster.dc_id) if up else None,
            creation_time=now_iso(),
            start_time=now_iso() if up else None,
            tag_ids=[tag_ids[t] for t in extra_vm_tags(i)],
            snapshot_ids=[active.id],
            nics=nics,
        )
        disks = [(f"{name}_Disk1", DISK1_SIZE, "cow", "incremental", True)]
        if i % 2 == 1:
            disks.append((f"{name}_Disk2", DISK2_SIZE, "raw", "none", False))
        for alias, size, fmt, backup, bootable in disks:
            disk_id = ids("disk", name, alias)
            vol_id = ids("volume", name, alias, "base")
            st.disks[disk_id] = Disk(
                id=disk_id,
                alias=alias,
                sd_id=sd.id,
                provisioned_size=size,
                backup=backup,
                description=f"disk of extra VM {name}",
                volumes=[Volume(id=vol_id, fmt=fmt, snapshot_id=active.id)],
            )
            vm.attachments.append(Attachment(disk_id=disk_id, bootable=bootable))
            volumes.append(
                EmptyVolume(
                    sd_id=sd.id,
                    disk_id=disk_id,
                    vol_id=vol_id,
                    fmt="cow" if fmt == "cow" else "raw",
                    size=size,
                )
            )
        st.vms[vm.id] = vm
    storage.create_empty_volumes(volumes)
    log.info(
        "%d extra VMs (%d disks) ready in %.1f s", count, len(volumes), time.monotonic() - start
    )


def _mac(i: int, nic: int) -> str:
    """Unique per (VM, NIC) for up to 2**24 VMs, outside the sample's 56:6f:1a:..."""
    return f"56:6f:e{nic}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"
