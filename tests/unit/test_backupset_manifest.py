"""manifest.json (rhvfs.backupset): the JSON every release wrote, reading it back, refusals."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rhvfs.backupset import (
    MANIFEST_MAX_BYTES,
    ConfigFiles,
    Manifest,
    ManifestDisk,
    ManifestNic,
    ManifestOwner,
    OwnerData,
    ParentSet,
    SetLineage,
    SetType,
    build_manifest,
    parse_manifest,
)
from rhvfs.engine.types import Disk, DiskAttachment, Nic, Template, Vm
from rhvfs.errors import RestoreError, SetFormatError
from tests.support.backup_sets import DISK_IDS, VM_ID, make_set

GOLDEN = Path(__file__).parent / "golden"


def manifest_doc() -> dict:
    return json.loads(make_set().files["manifest.json"])


def test_manifest_fields() -> None:
    m = parse_manifest(make_set().files["manifest.json"])
    assert (m.kind, m.owner_id, m.owner_name, m.cluster_name) == ("vm", VM_ID, "myvm", "Default")
    d0, d1 = m.disks
    assert (d0.id, d0.size, d0.format, d0.interface, d0.bootable) == (
        DISK_IDS[0],
        2 * 1024 * 1024,
        "cow",
        "virtio_scsi",
        True,
    )
    assert (d1.format, d1.storage_domain_name) == ("raw", "mydata")
    assert m.disk_by_file(d1.file) is d1
    assert [n.mac for n in m.nics] == ["56:6f:00:00:00:01"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(format="x"), "not an rhvfs backup set"),
        (lambda d: d.update(format_version=99), "format_version 99"),
        (lambda d: d.update(kind="pool"), "kind must be vm or template"),
        (lambda d: d.update(set_type="incremental"), "cannot be restored alone"),
        (lambda d: d["disks"][0].update(size=-1), "size must be positive"),
        (lambda d: d["disks"][0].update(format="vmdk"), "raw or cow"),
        (lambda d: d["disks"][0].update(id="nope"), "not a UUID"),
        (lambda d: d["disks"][0].update(file="../x"), "not a file name"),
        (lambda d: d["disks"][1].update(id=d["disks"][0]["id"]), "listed twice"),
        (lambda d: d["disks"][0].pop("size"), "has no 'size'"),
    ],
)
def test_manifest_refusals(change, match: str) -> None:  # type: ignore[no-untyped-def]
    doc = manifest_doc()
    change(doc)
    with pytest.raises(RestoreError, match=match):
        parse_manifest(json.dumps(doc).encode())


# -- what the writers wrote before the manifest had a type of its own ------------------

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
VM = Vm(
    id="11111111-1111-4111-8111-111111111111",
    name="web01",
    status="up",
    cluster_id="c1",
    template_id="00000000-0000-0000-0000-000000000000",
    description="the web",
    memory=1 << 30,
    cpu_sockets=2,
    cpu_cores=1,
    cpu_threads=1,
    os_type="rhel_9x64",
    type="server",
    creation_time=T0,
)
D1 = Disk(
    id="22222222-2222-4222-8222-222222222222",
    alias="root",
    provisioned_size=4 << 20,
    actual_size=1 << 20,
    format="cow",
    sparse=True,
    backup="incremental",
    image_id="33333333-3333-4333-8333-333333333333",
    storage_domain_id="sd1",
    description="root disk",
    content_type="data",
)
D2 = Disk(
    id="44444444-4444-4444-8444-444444444444",
    alias="da/ta é",
    provisioned_size=2 << 20,
    actual_size=None,
    format="raw",
    sparse=False,
    backup="none",
    image_id=None,
    storage_domain_id="sd-unknown",
    wipe_after_delete=True,
)
ATTS = (
    DiskAttachment(disk=D1, interface="virtio_scsi", bootable=True),
    DiskAttachment(disk=D2, interface="virtio", active=False, read_only=True),
)
NICS = (
    Nic(
        id="n1",
        name="nic1",
        interface="virtio",
        mac="56:6f:00:00:00:01",
        vnic_profile_id="vp1",
        vnic_profile_name="ovirtmgmt",
        network_name="ovirtmgmt",
    ),
    Nic(id="n2", name="nic2", linked=False, plugged=False),
)
DATA = OwnerData(
    kind="vm",
    entity=VM,
    attachments=ATTS,
    nics=NICS,
    ovf=b"<ovf/>",
    xml=b"<vm/>",
    cluster_names={"c1": "Default"},
    storage_domain_names={"sd1": "mydata"},
)
SET = "66666666-6666-4666-8666-666666666666"
BASE = "77777777-7777-4777-8777-777777777777"


def golden(name: str) -> bytes:
    return (GOLDEN / f"manifest_{name}.json").read_bytes()


def written(m: Manifest) -> bytes:
    return dataclasses.replace(m, rhvfs_version="0.1.0").to_json()  # the golden files' release


def test_full_sets_are_written_byte_for_byte_as_before() -> None:
    names = {D1.id: f"root--{D1.id}.raw", D2.id: f"da%2Fta é--{D2.id}.raw"}
    vm = build_manifest(
        DATA,
        disks=[D1, D2],
        file_names=names,
        snapshot_id="snap-1",
        backup_time=T0,
        session_id="abcdef012345",
    )
    assert written(vm) == golden("full_vm")
    tpl = Template(
        id="55555555-5555-4555-8555-555555555555", name="tpl", status="ok", cluster_id="c9"
    )
    tdata = OwnerData(
        kind="template",
        entity=tpl,
        attachments=ATTS[:1],
        nics=(),
        ovf=b"",
        xml=b"<template/>",
        cluster_names={},
        storage_domain_names={},
        ovf_available=False,
    )
    m = build_manifest(
        tdata, disks=[D1], file_names=names, snapshot_id=None, backup_time=T0, session_id=None
    )
    assert written(m) == golden("full_tpl")
    for name in ("full_vm", "full_tpl"):
        assert written(Manifest.from_json(golden(name))) == golden(name)


def test_engine_backup_sets_are_written_byte_for_byte_as_before() -> None:
    names = {D1.id: f"root--{D1.id}--{SET}.qcow2", D2.id: f"da%2Fta é--{D2.id}--{SET}.raw"}
    m = build_manifest(
        DATA,
        disks=[D1, D2],
        file_names=names,
        snapshot_id="snap-2",
        backup_time=T0,
        session_id="0123456789ab",
    )
    d1, d2 = m.disks
    inc = dataclasses.replace(
        m,
        set_type=SetType.INCREMENTAL,
        checkpoint_id=SET,
        disks=(
            dataclasses.replace(
                d1,
                backup_mode="incremental",
                file_format="qcow2",
                backing_file=f"root--{D1.id}--{BASE}.raw",
                dirty_bytes=65536,
            ),
            dataclasses.replace(d2, file_format="raw", full_reason="raw disk", dirty_bytes=2 << 20),
        ),
        config_files=ConfigFiles(
            ovf=f"vm--{SET}.ovf", api_xml=f"vm--{SET}.xml", manifest=f"manifest--{SET}.json"
        ),
        lineage=SetLineage(
            set_id=SET,
            backup_id="88888888-8888-4888-8888-888888888888",
            from_checkpoint_id=BASE,
            to_checkpoint_id=SET,
            parent=ParentSet(set_id=BASE, set_type="full", manifest=f"manifest--{BASE}.json"),
            full_set_id=BASE,
            warnings=("w1",),
        ),
    )
    assert written(inc) == golden("inc_vm")
    for name in ("inc_vm", "full_via_backup"):
        back = Manifest.from_json(golden(name))
        assert back.lineage is not None and back.lineage.set_id == SET
        assert written(back) == golden(name)
    assert Manifest.from_json(golden("inc_vm")) == dataclasses.replace(inc, rhvfs_version="0.1.0")


def test_sets_written_by_hand_read_with_the_defaults_restores_always_assumed() -> None:
    doc = {
        "format": "rhvfs-backup-set",
        "format_version": 1,
        "kind": "vm",
        "vm": {"id": VM_ID, "name": "hand"},
        "disks": [
            {"id": DISK_IDS[0], "file": "a.raw", "size": 1, "format": "raw", "alias": ""},
            {
                "id": DISK_IDS[1],
                "file": "b.raw",
                "size": 2,
                "format": "cow",
                "sparse": None,
                "active": None,
                "interface": "",
                "storage_domain": None,
            },
        ],
        "nics": [{"name": "nic1"}],
    }
    m = parse_manifest(json.dumps(doc).encode())
    a, b = m.disks
    assert (a.alias, a.sparse, a.active, a.bootable, a.description) == (
        DISK_IDS[0],
        True,
        True,
        False,
        "",
    )
    assert (b.sparse, b.active, b.interface, b.storage_domain_id) == (False, False, None, None)
    assert (m.ovf_file, m.xml_file, m.lineage, m.set_type) == ("vm.ovf", None, None, "full")
    assert m.nics == (ManifestNic(id=None, name="nic1"),)
    assert (a.image_format, dataclasses.replace(a, file="a.qcow2").image_format) == ("raw", "qcow2")


def test_newer_versions_and_garbage_are_clear_errors() -> None:
    doc = manifest_doc()
    doc["format_version"] = 2
    with pytest.raises(
        SetFormatError, match=r"manifest--x\.json has format_version 2; this rhvfs reads 1"
    ):
        Manifest.from_json(json.dumps(doc).encode(), name="manifest--x.json")
    for data, match in [
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 200_000 + b"]" * 200_000, "not valid JSON"),
        (b'{"a": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (b"[]", "not an rhvfs backup set"),
        (b" " * (MANIFEST_MAX_BYTES + 1), "more than a manifest's"),
    ]:
        with pytest.raises(SetFormatError, match=match):
            Manifest.from_json(data)
    for change, match in [
        (lambda d: d.update(set_type="since"), "set_type must be full, incremental, differential"),
        (
            lambda d: d["disks"][0].update(bootable="yes"),
            r"disks\[0\]\.bootable has the wrong type",
        ),
        (lambda d: d["disks"][0].update(file_format="vmdk"), "raw or qcow2"),
        (
            lambda d: d["nics"][0].update(vnic_profile=[]),
            r"nics\[0\]\.vnic_profile has the wrong type",
        ),
        (lambda d: d.update(config_files="vm.ovf"), "config_files has the wrong type"),
        (lambda d: d.update(parent_set={"set_type": "full"}), "parent_set has no 'set_id'"),
        (lambda d: d["disks"][1].update(file=d["disks"][0]["file"]), "share one file name"),
    ]:
        doc = manifest_doc()
        change(doc)
        with pytest.raises(SetFormatError, match=match):
            Manifest.from_json(json.dumps(doc).encode())


# -- round trips ---------------------------------------------------------------------

_text = st.text(max_size=12)
_opt_text = st.none() | _text
_opt_int = st.none() | st.integers(-(2**40), 2**62)
_file = st.text(st.characters(blacklist_characters="/\0"), min_size=1, max_size=20).filter(
    lambda s: s not in (".", "..")
)


@st.composite
def _disks(draw: st.DrawFn) -> tuple[ManifestDisk, ...]:
    ids = draw(st.lists(st.uuids().map(str), max_size=4, unique=True))
    files = draw(st.lists(_file, min_size=len(ids), max_size=len(ids), unique=True))
    out = []
    for disk_id, file in zip(ids, files, strict=True):
        engine_backup = draw(st.booleans())
        out.append(
            ManifestDisk(
                id=disk_id,
                alias=draw(st.text(min_size=1, max_size=12)),
                file=file,
                size=draw(st.integers(1, 2**50)),
                format=draw(st.sampled_from(("raw", "cow"))),
                actual_size=draw(_opt_int),
                sparse=draw(st.booleans()),
                interface=draw(st.none() | st.text(min_size=1, max_size=8)),
                bootable=draw(st.booleans()),
                active=draw(st.booleans()),
                read_only=draw(st.booleans()),
                storage_domain_id=draw(_opt_text),
                storage_domain_name=draw(_opt_text),
                image_id=draw(_opt_text),
                content_type=draw(_opt_text),
                shareable=draw(st.booleans()),
                wipe_after_delete=draw(st.booleans()),
                backup=draw(_opt_text),
                backup_mode=draw(st.sampled_from(("full", "incremental"))),
                description=draw(_text),
                file_format=draw(st.sampled_from(("raw", "qcow2"))) if engine_backup else None,
                backing_file=draw(_opt_text) if engine_backup else None,
                full_reason=draw(_opt_text) if engine_backup else None,
                dirty_bytes=draw(_opt_int) if engine_backup else None,
                chain_deltas=draw(st.none() | st.lists(_text, max_size=3).map(tuple)),
            )
        )
    return tuple(out)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    kind = draw(st.sampled_from(("vm", "template")))
    vm_only = kind == "vm"
    owner = ManifestOwner(
        id=draw(st.uuids().map(str)),
        name=draw(_text),
        status=draw(_opt_text),
        cluster_id=draw(_opt_text),
        cluster_name=draw(_opt_text),
        description=draw(_opt_text),
        memory=draw(_opt_int),
        creation_time=draw(_opt_text),
        template_id=draw(_opt_text) if vm_only else None,
        os_type=draw(_opt_text) if vm_only else None,
        type=draw(_opt_text) if vm_only else None,
        cpu_sockets=draw(_opt_int) if vm_only else None,
        cpu_cores=draw(_opt_int) if vm_only else None,
        cpu_threads=draw(_opt_int) if vm_only else None,
    )
    nics = draw(
        st.lists(
            st.builds(
                ManifestNic,
                id=_opt_text,
                name=_text,
                interface=_opt_text,
                mac=_opt_text,
                vnic_profile_id=_opt_text,
                vnic_profile_name=_opt_text,
                network=_opt_text,
                linked=st.booleans(),
                plugged=st.booleans(),
            ),
            max_size=3,
        )
    )
    lineage = draw(
        st.none()
        | st.builds(
            SetLineage,
            set_id=_opt_text,
            backup_id=_opt_text,
            from_checkpoint_id=_opt_text,
            to_checkpoint_id=_opt_text,
            parent=st.none()
            | st.builds(ParentSet, set_id=_text, set_type=_opt_text, manifest=_opt_text),
            full_set_id=_opt_text,
            warnings=st.lists(_text, max_size=3).map(tuple),
        )
    )
    return Manifest(
        kind=kind,
        owner=owner,
        disks=draw(_disks()),
        nics=tuple(nics),
        set_type=draw(st.sampled_from(list(SetType))),
        format_version=draw(st.integers(0, 1)),
        rhvfs_version=draw(_opt_text),
        backup_time=draw(_opt_text),
        session_id=draw(_opt_text),
        snapshot_id=draw(_opt_text),
        checkpoint_id=draw(_opt_text),
        config_files=draw(
            st.builds(ConfigFiles, ovf=_opt_text, api_xml=_opt_text, manifest=_opt_text)
        ),
        lineage=lineage,
        chain=draw(st.none() | st.lists(_text, max_size=3).map(tuple)),
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_manifest_json_round_trip(m: Manifest) -> None:
    data = m.to_json()
    back = Manifest.from_json(data, name="m.json")
    assert back == m
    assert back.to_json() == data


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_damage_is_a_set_format_error_or_a_manifest(data: st.DataObject) -> None:
    doc = json.loads(golden(data.draw(st.sampled_from(["full_vm", "inc_vm", "full_tpl"]))))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_json)
    try:
        m = Manifest.from_json(json.dumps(doc).encode())
    except SetFormatError:
        return
    assert Manifest.from_json(m.to_json()) == m
