"""``rhvfs.selection``: each criterion, their combination, shards, and the config keys."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from pathlib import Path

import pytest

from rhvfs.config import load_config
from rhvfs.errors import ConfigError
from rhvfs.selection import VmSelection, parse_shard, shard_of


@dataclasses.dataclass(frozen=True)
class V:
    id: str
    name: str
    cluster_id: str | None = None


@dataclasses.dataclass(frozen=True)
class C:
    id: str
    name: str
    datacenter_id: str | None = None


@dataclasses.dataclass(frozen=True)
class D:
    id: str
    name: str


VMS = [
    V("1", "web01", "c1"),
    V("2", "web02", "c2"),
    V("3", "db01", "c1"),
    V("4", "myweb", "c3"),
    V("5", "test-web03", "c3"),
]
CLUSTERS = [C("c1", "prod", "d1"), C("c2", "prod2", "d1"), C("c3", "lab", "d2")]
DCS = [D("d1", "east"), D("d2", "west")]


def names(sel: VmSelection, tagged: frozenset[str] | set[str] = frozenset()) -> list[str]:
    return [v.name for v in sel.select(VMS, clusters=CLUSTERS, datacenters=DCS, tagged=tagged)]


def test_an_empty_selection_selects_everything() -> None:
    assert VmSelection.build().everything
    assert names(VmSelection.build()) == ["web01", "web02", "db01", "myweb", "test-web03"]
    assert VmSelection.build().describe() == {}


def test_name_patterns_match_whole_names() -> None:
    assert names(VmSelection.build(vms="web.*")) == ["web01", "web02"]
    assert names(VmSelection.build(vms=".*web.*", exclude_vms="test-.*")) == [
        "web01",
        "web02",
        "myweb",
    ]
    assert names(VmSelection.build(exclude_vms="web0[12]")) == ["db01", "myweb", "test-web03"]


def test_tags_clusters_and_datacenters() -> None:
    assert names(VmSelection.build(tag=["bkup"]), tagged={"3", "5"}) == ["db01", "test-web03"]
    assert names(VmSelection.build(cluster=["prod"])) == ["web01", "db01"]
    assert names(VmSelection.build(cluster=["prod", "lab"])) == [
        "web01",
        "db01",
        "myweb",
        "test-web03",
    ]
    assert names(VmSelection.build(datacenter=["east"])) == ["web01", "web02", "db01"]
    assert names(VmSelection.build(datacenter=["west"], vms=".*web.*")) == ["myweb", "test-web03"]
    # all criteria must hold
    assert names(VmSelection.build(datacenter=["east"], cluster=["lab"])) == []
    assert names(VmSelection.build(tag=["x"], cluster=["prod"]), tagged={"2", "3"}) == ["db01"]


def test_shard_is_sha256_of_the_id_mod_n() -> None:
    vm_id = "5f0c6e5e-0000-4000-8000-000000000001"
    want = int(hashlib.sha256(vm_id.encode()).hexdigest(), 16) % 7
    assert shard_of(vm_id, 7) == want
    assert shard_of(vm_id, 1) == 0


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_partition_the_vms_exactly(n: int) -> None:
    vms = [V(str(uuid.UUID(int=i * 7919 + 13)), f"vm{i:04}") for i in range(1000)]
    parts = [VmSelection.build(shard=f"{i}/{n}").select(vms) for i in range(n)]
    ids = [v.id for part in parts for v in part]
    assert sorted(ids) == sorted(v.id for v in vms)  # none missing, none twice
    assert len(set(ids)) == len(ids)
    if n > 1:  # a hash, not a cut: every shard gets a fair part
        assert all(len(p) > 1000 / n * 0.8 for p in parts)


def test_shard_syntax() -> None:
    assert parse_shard("1/2") == (1, 2)
    assert parse_shard(" 0 / 3 ") == (0, 3)
    for bad in ("2/2", "1", "0/0", "-1/2", "a/b"):
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)


def base(**over: object) -> dict[str, object]:
    return {"engine_url": "https://e.example", "username": "u", "password": "p", **over}


def test_config_keys_and_their_errors() -> None:
    cfg = load_config(
        overrides=base(vms="web.*", exclude_vms="web02", tag="a, b", cluster=["prod"], shard="1/3")
    )
    assert (cfg.vms, cfg.exclude_vms, cfg.tag, cfg.cluster, cfg.datacenter, cfg.shard) == (
        "web.*",
        "web02",
        ("a", "b"),
        ("prod",),
        (),
        "1/3",
    )
    assert cfg.selection.describe() == {
        "vms": "web.*",
        "exclude_vms": "web02",
        "tag": ["a", "b"],
        "cluster": ["prod"],
        "shard": "1/3",
    }
    with pytest.raises(ConfigError, match="vms: not a regular expression"):
        load_config(overrides=base(vms="web("))
    with pytest.raises(ConfigError, match="shard"):
        load_config(overrides=base(shard="3/3"))


def test_config_file_section(tmp_path: Path) -> None:
    path = tmp_path / "c.conf"
    path.write_text(
        "[e]\nengine_url = https://e.example\nusername = u\npassword = p\n"
        "datacenter = east,west\nshard = 0/2\nmax_sessions = 2\n"
    )
    cfg = load_config(section="e", config_file=path)
    assert cfg.datacenter == ("east", "west") and cfg.shard == "0/2"
    # every cluster is in east or west: the shard alone decides
    assert names(cfg.selection) == [v.name for v in VMS if shard_of(v.id, 2) == 0]
