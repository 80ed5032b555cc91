"""Restore to another engine, without one: the vNIC profile each NIC gets, the
``network_map`` / ``vnic_profile`` options (bad input is refused before anything is
created), clusters and storage domains by name, VMs on a template the engine lacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from rhvfs.backupset import BLANK_TEMPLATE_ID, ManifestNic, on_blank_template, parse_ovf
from rhvfs.engine.types import Network, VnicProfile
from rhvfs.errors import RestoreError, RestoreInputError
from rhvfs.fs import errno_for
from rhvfs.sessions.restore._networks import choose_profiles, parse_network_map
from rhvfs.sessions.restore._options import build_options, parse_lines
from tests.support.backup_sets import SetFiles, make_set
from tests.support.configs import restore_config
from tests.support.fake_engine import CLUSTER_ID, FakeEngine
from tests.support.restore_rig import Harness, start

# -- the target engine of the pure tests: two networks on the cluster, one elsewhere -----

MGMT = Network(id="n-mgmt", name="ovirtmgmt", usages=("management", "vm"))
PROD = Network(id="n-prod", name="prod", usages=("vm",))
OTHER_DC = Network(id="n-far", name="far", usages=("vm",))
PROFILES = [
    VnicProfile(id="p-mgmt", name="ovirtmgmt", network_id=MGMT.id, network_name="ovirtmgmt"),
    VnicProfile(id="p-prod", name="prod", network_id=PROD.id, network_name="prod"),
    VnicProfile(id="p-prod-qos", name="qos", network_id=PROD.id, network_name="prod"),
    VnicProfile(id="p-far", name="far", network_id=OTHER_DC.id, network_name="far"),
    # a profile name on two networks
    VnicProfile(id="p-mgmt-qos", name="qos", network_id=MGMT.id, network_name="ovirtmgmt"),
]


def nic(name: str, network: str | None, profile: str | None, pid: str | None) -> ManifestNic:
    return ManifestNic(
        id=None, name=name, network=network, vnic_profile_name=profile, vnic_profile_id=pid
    )


def choose(nics: list[ManifestNic], **options: str) -> list[tuple[str, str | None, bool]]:
    opts = build_options(defaults={}, file_values=options)
    chosen = choose_profiles(
        nics,
        vnic_profile=opts.vnic_profile,
        network_map=opts.network_map,
        profiles=PROFILES,
        networks=[MGMT, PROD],
        cluster="Default",
    )
    assert [c.nic for c in chosen] == [n.name for n in nics]
    return [(c.nic, c.profile_id, c.warning) for c in chosen]


# -- network_map syntax ------------------------------------------------------------------


def test_network_map_pairs_and_auto() -> None:
    assert parse_network_map("auto") == parse_network_map("") == parse_network_map(" AUTO ") == ()
    assert parse_network_map(" ovirtmgmt : prod ,lab:ovirtmgmt/qos") == (
        ("ovirtmgmt", "prod"),
        ("lab", "ovirtmgmt/qos"),
    )
    opts = build_options(defaults={"network_map": "a:b"}, file_values={"vnic_profile": "prod"})
    assert (opts.network_map, opts.vnic_profile) == ((("a", "b"),), "prod")
    assert parse_network_map("a:b,, c:d,") == (("a", "b"), ("c", "d"))  # as other lists
    assert build_options(defaults={}).network_map == ()
    assert build_options(defaults={}).vnic_profile is None


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("ovirtmgmt", "expected auto or SOURCE:TARGET pairs.*got 'ovirtmgmt'"),
        ("ovirtmgmt:", "got 'ovirtmgmt:'"),
        (":prod", "got ':prod'"),
        ("a:b:c", "got 'a:b:c'"),
        (" , ,", "no SOURCE:TARGET pair"),
        ("auto, a:b", "got 'auto'"),
        ("a:b, a:c", "maps 'a' twice"),
    ],
)
def test_network_map_bad_input_is_a_clear_error(value: str, match: str) -> None:
    with pytest.raises(RestoreError, match=match):
        build_options(defaults={}, file_values=parse_lines(f"network_map = {value}\n", source="f"))


# -- the profile of each NIC -------------------------------------------------------------


def test_same_engine_keeps_the_exact_profile() -> None:
    # even a profile whose name differs from its network's, and one sharing a name
    got = choose(
        [nic("a", "prod", "qos", "p-prod-qos"), nic("b", "ovirtmgmt", "qos", "p-mgmt-qos")]
    )
    assert got == [("a", "p-prod-qos", False), ("b", "p-mgmt-qos", False)]


def test_another_engine_maps_by_network_name_preferring_the_profile_name() -> None:
    got = choose(
        [
            nic("same-name", "prod", "qos", "src-1"),  # prod's profile named qos
            nic("default", "prod", "gone", "src-2"),  # prod's profile named prod
            nic("mgmt", "ovirtmgmt", "ovirtmgmt", "src-3"),
            nic("no-network", None, None, None),  # stays without a network
        ]
    )
    assert got == [
        ("same-name", "p-prod-qos", False),
        ("default", "p-prod", False),
        ("mgmt", "p-mgmt", False),
        ("no-network", None, False),
    ]


def test_a_network_the_cluster_lacks_gets_the_management_profile_with_a_warning() -> None:
    nics = [nic("a", "dmz", "dmz", "src-1"), nic("b", "far", "far", "src-2")]  # far: not here
    chosen = choose_profiles(
        nics, vnic_profile=None, network_map=(), profiles=PROFILES, networks=[MGMT, PROD],
        cluster="Default",
    )  # fmt: skip
    assert [(c.profile_id, c.warning) for c in chosen] == [("p-mgmt", True), ("p-mgmt", True)]
    assert chosen[0].note is not None and chosen[0].note.startswith("warning: nic a: network dmz")
    # a cluster without a management network: the NIC gets no network, and says so
    bare = choose_profiles(
        nics[:1], vnic_profile=None, network_map=(), profiles=PROFILES, networks=[PROD],
        cluster="Default",
    )  # fmt: skip
    assert (bare[0].profile_id, bare[0].warning) == (None, True)
    assert bare[0].note is not None and "has no network" in bare[0].note


def test_network_map_and_vnic_profile() -> None:
    nics = [nic("a", "ovirtmgmt", "ovirtmgmt", "src-1"), nic("b", "lab", "lab-prof", "src-2")]
    # by network name, to a network name (its profile of the same name)
    # (the unmapped lab NIC: automatic, the management profile with a warning)
    assert choose(nics, network_map="ovirtmgmt:prod") == [
        ("a", "p-prod", False),
        ("b", "p-mgmt", True),
    ]
    # by source profile name, to NETWORK/PROFILE; the unmapped NIC: automatic
    assert choose(nics, network_map="lab-prof:prod/qos") == [
        ("a", "p-mgmt", False),
        ("b", "p-prod-qos", False),
    ]
    # by source profile id, to a target profile id
    assert choose(nics, network_map="src-1:p-prod-qos")[0] == ("a", "p-prod-qos", False)
    # vnic_profile: every NIC; network_map still wins for the NICs it names
    assert choose(nics, vnic_profile="prod") == [("a", "p-prod", False), ("b", "p-prod", False)]
    assert choose(nics, vnic_profile="prod", network_map="lab:ovirtmgmt") == [
        ("a", "p-prod", False),
        ("b", "p-mgmt", False),
    ]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"network_map": "dmz:prod"}, r"no nic of the set is on 'dmz' \(the set's networks/profiles: ovirtmgmt/ovirtmgmt\)"),
        ({"network_map": "ovirtmgmt:nothere"}, r"no vnic profile 'nothere' on cluster Default \(its profiles, network/profile: ovirtmgmt/ovirtmgmt, ovirtmgmt/qos, prod/prod, prod/qos\)"),
        ({"vnic_profile": "qos"}, r"'qos' names several vnic profiles \(ovirtmgmt/qos, prod/qos\): write NETWORK/PROFILE"),
        ({"vnic_profile": "p-far"}, r"vnic profile p-far \(far/far\) is not on a network of cluster Default"),
        ({"vnic_profile": "far"}, r"no vnic profile 'far' on cluster Default"),
    ],
)  # fmt: skip
def test_targets_that_do_not_exist_or_are_ambiguous(options: dict[str, str], match: str) -> None:
    with pytest.raises(RestoreInputError, match=match):
        choose([nic("a", "ovirtmgmt", "ovirtmgmt", "src-1")], **options)


def test_unknown_cluster_networks_make_every_profile_a_candidate() -> None:
    chosen = choose_profiles(
        [nic("a", "far", "far", "src")], vnic_profile=None, network_map=(), profiles=PROFILES,
        networks=None, cluster="Default",
    )  # fmt: skip
    assert [(c.profile_id, c.warning) for c in chosen] == [("p-far", False)]


# -- the OVF of a VM on a template ---------------------------------------------------------


def test_on_blank_template_rewrites_the_template_reference() -> None:
    ovf = with_template(make_set().files["vm.ovf"], "7e7e7e7e-0000-0000-0000-000000000001")
    info = parse_ovf(ovf)
    assert (info.template_id, info.template_name) == (
        "7e7e7e7e-0000-0000-0000-000000000001",
        "gone-template",
    )
    blank = parse_ovf(on_blank_template(ovf))
    assert (blank.template_id, blank.template_name) == (BLANK_TEMPLATE_ID, "Blank")
    assert (blank.vm_id, blank.name, blank.disk_ids) == (info.vm_id, info.name, info.disk_ids)


# -- restores on the fake engine -----------------------------------------------------------


def with_template(ovf: bytes, template_id: str) -> bytes:
    return ovf.replace(
        b"<Name>",
        f"<TemplateId>{template_id}</TemplateId><TemplateName>gone-template</TemplateName>"
        "<Name>".encode(),
        1,
    )


def from_another_engine(s: SetFiles) -> None:
    """The set as another engine wrote it: other cluster, storage domain, profile ids."""
    m = s.manifest
    m["vm"]["cluster"]["id"] = "c0ffee00-0000-0000-0000-000000000001"
    for d in m["disks"]:
        d["storage_domain"]["id"] = "c0ffee00-0000-0000-0000-000000000002"
    m["nics"] = [
        {"id": "n1", "name": "nic1", "interface": "virtio", "mac": "56:6f:00:00:00:01",
         "vnic_profile": {"id": "c0ffee00-0000-0000-0000-000000000003", "name": "ovirtmgmt"},
         "network": "ovirtmgmt"},
        {"id": "n2", "name": "nic2", "interface": "virtio", "mac": "56:6f:00:00:00:02",
         "vnic_profile": {"id": "c0ffee00-0000-0000-0000-000000000004", "name": "dmz"},
         "network": "dmz"},
    ]  # fmt: skip
    s.files["manifest.json"] = json.dumps(m).encode()


@pytest.fixture
async def h(nursery: trio.Nursery, tmp_path: Path) -> Harness:
    return await start(nursery, FakeEngine(), tmp_path, restore_config())


async def test_a_set_from_another_engine_restores_by_names(
    autojump_clock: MockClock, h: Harness
) -> None:
    s = make_set()
    from_another_engine(s)
    s.files["vm.ovf"] = with_template(s.files["vm.ovf"], "7e7e7e7e-0000-0000-0000-000000000001")
    session = h.manager.create("dr")
    await h.copy(session, s)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    vm = h.engine.vms[status["vm_id"]]
    assert vm.cluster_id == CLUSTER_ID  # "Default" by name
    assert {a.disk.storage_domain_id for a in h.engine.attachments[vm.id]} == {
        "5d5d5d5d-0000-0000-0000-000000000001"
    }
    # nic1 by its network's name, nic2 (dmz: not here) on the management network, warned
    assert [(n.name, n.vnic_profile_id) for n in h.engine.nics[vm.id]] == [
        ("nic1", "vp1"),
        ("nic2", "vp1"),
    ]
    warnings = [line for line in status["log"] if " warning: " in line]
    assert (
        len(warnings) == 1
        and "nic nic2: network dmz/dmz does not exist on cluster Default" in warnings[0]
    )
    # the template is not on this engine: the VM is imported on Blank
    assert parse_ovf(h.engine.ovfs[0][0].encode()).template_id == BLANK_TEMPLATE_ID
    assert any("template gone-template" in line and "independent" in line for line in status["log"])
    assert status["options"]["network_map"] == []


async def test_a_template_on_the_engine_is_kept(autojump_clock: MockClock, h: Harness) -> None:
    tpl = h.engine.add_template("kept")
    s = make_set()
    s.files["vm.ovf"] = with_template(s.files["vm.ovf"], tpl.id)
    session = h.manager.create("on-template")
    await h.copy(session, s)
    status = await h.settle(session)
    assert status["phase"] == "done", status["error"]
    assert parse_ovf(h.engine.ovfs[0][0].encode()).template_id == tpl.id


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ("network_map = ovirtmgmt\n", "option network_map: expected auto or SOURCE:TARGET"),
        ("network_map = ovirtmgmt:nothere\n", "no vnic profile 'nothere' on cluster Default"),
        ("network_map = lab:ovirtmgmt\n", "no nic of the set is on 'lab'"),
        ("vnic_profile = nothere\n", "option vnic_profile: no vnic profile 'nothere'"),
        ("cluster = nothere\n", "cluster 'nothere' does not exist on the engine (it has: Default, mycluster"),
        ("storage_domain = nothere\n", "storage domain 'nothere' of disk disk0 does not exist on the engine (it has: mydata, other"),
    ],
)  # fmt: skip
async def test_bad_network_options_fail_before_anything_is_created(
    autojump_clock: MockClock, h: Harness, options: str, match: str
) -> None:
    s = make_set()
    session = h.manager.create("bad-net")
    await h.write_file(session, "rhvfs-restore.conf", options.encode())
    with pytest.raises(RestoreError) as e:
        await h.copy(session, s, ["vm.ovf", "manifest.json", *s.image_names()])
    assert errno_for(e.value) == 22  # EINVAL
    status = await h.settle(session)
    assert status["phase"] == "failed" and match in status["error"], status["error"]
    assert h.engine.disks == {} and h.engine.vms == {}
    assert not any(c in h.engine.calls for c in ("create_disk", "create_vm_from_ovf", "add_nic"))


async def test_cluster_and_storage_domain_missing_by_id_and_name_list_what_exists(
    autojump_clock: MockClock, h: Harness
) -> None:
    s = make_set()
    s.manifest["vm"]["cluster"] = {"id": "c0ffee00-0000-0000-0000-000000000001", "name": "dr-site"}
    s.files["manifest.json"] = json.dumps(s.manifest).encode()
    session = h.manager.create("no-cluster")
    with pytest.raises(RestoreError):
        await h.copy(session, s, ["vm.ovf", "manifest.json"])
    status = await h.settle(session)
    assert (
        "cluster 'c0ffee00-0000-0000-0000-000000000001' or 'dr-site' does not exist on the "
        "engine (it has: Default, mycluster; set cluster in the options)"
    ) in status["error"]
    assert h.engine.disks == {} and h.engine.vms == {}


def test_a_network_with_only_custom_profiles_gives_its_first_by_name() -> None:
    lab = Network(id="n-lab", name="lab", usages=("vm",))
    profiles = [
        VnicProfile(id="p-z", name="z-jumbo", network_id=lab.id, network_name="lab"),
        VnicProfile(id="p-a", name="a-plain", network_id=lab.id, network_name="lab"),
    ]
    chosen = choose_profiles(
        [nic("a", "lab", "gone", "src")], vnic_profile=None, network_map=(), profiles=profiles,
        networks=[lab], cluster="Default",
    )  # fmt: skip
    assert [(c.profile_id, c.warning) for c in chosen] == [("p-a", False)]
    assert chosen[0].note == "nic a: lab/gone -> lab/a-plain (p-a) by name"
