"""Names of a backup set (rhvfs.backupset): escaping, file names, their recognition, file keys."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rhvfs import backupset
from rhvfs.backupset import (
    NAME_MAX,
    SET_DIRS,
    ConfigFileName,
    ConfigKey,
    ConfigRole,
    DiskKey,
    DisksDirKey,
    FileKey,
    ImageFileName,
    SetFileKey,
    SetKind,
    config_file_names,
    disk_id_of_key,
    disks_dir_names,
    escape,
    image_file_name,
    is_hashed,
    parse_file_name,
    parse_key,
    unescape,
)
from rhvfs.sessions.core._model import blocks_for
from rhvfs.vfs import names as vfs_names

any_names = st.text(alphabet=st.characters(), max_size=300)


@pytest.mark.parametrize(
    ("name", "file_name"),
    [
        ("myvm", "myvm"),
        ("a/b", "a%2Fb"),
        ("50%", "50%25"),
        ("nul\0byte", "nul%00byte"),
        (".", "%2E"),
        ("..", "%2E."),
        (".hidden", "%2Ehidden"),
        ("line\nbreak", "line%0Abreak"),
        ("", "%"),
        ("ünïcode vm", "ünïcode vm"),
        ("a.b.", "a.b."),
    ],
)
def test_escape_examples(name: str, file_name: str) -> None:
    assert escape(name) == file_name
    assert unescape(file_name) == name


@given(any_names)
def test_escape_is_safe_and_reversible(name: str) -> None:
    file_name = escape(name)
    assert "/" not in file_name and "\0" not in file_name
    assert file_name not in (".", "..", "")
    assert len(file_name.encode("utf-8")) <= NAME_MAX
    if not is_hashed(file_name):
        assert unescape(file_name) == name


@given(any_names, any_names)
def test_escape_is_injective(a: str, b: str) -> None:
    if a != b:
        assert escape(a) != escape(b)


def test_long_names_are_cut_with_a_stable_hash() -> None:
    a, b = "x" * 300, "x" * 299 + "y"
    assert is_hashed(escape(a)) and is_hashed(escape(b))
    assert escape(a) != escape(b)
    assert escape(a) == escape("x" * 300)
    assert len(escape("é" * 200).encode()) <= NAME_MAX
    with pytest.raises(ValueError):
        unescape(escape(a))


@pytest.mark.parametrize("bad", ["%41", "%zz", "a%2", "a/b", ".x", "%u12", "x\0"])
def test_unescape_rejects_non_canonical(bad: str) -> None:
    with pytest.raises(ValueError):
        unescape(bad)


def test_the_vfs_escapes_with_the_same_functions() -> None:
    assert (vfs_names.escape, vfs_names.unescape, vfs_names.is_hashed) == (
        escape,
        unescape,
        is_hashed,
    )


def test_names() -> None:
    assert image_file_name("root disk", "d1") == "root disk--d1.raw"
    assert image_file_name("a/b", "d1") == "a%2Fb--d1.raw"
    assert disks_dir_names([("d1", "x"), ("d2", "x"), ("d3", "y")]) == {
        "d1": "x--d1.raw",
        "d2": "x--d2.raw",
        "d3": "y.raw",
    }
    assert blocks_for(0) == 0 and blocks_for(1) == 1 and blocks_for(513) == 2


SID = "66666666-6666-4666-8666-666666666666"
DID = "22222222-2222-4222-8222-222222222222"


def test_set_directories_and_config_names() -> None:
    assert dict(SET_DIRS) == {
        "full": "@rhv",
        "incremental": "@rhv-incremental",
        "differential": "@rhv-differential",
        "since": "@rhv-since",
    }
    assert [str(k) for k in SetKind] == ["full", "incremental", "differential", "since"]
    assert config_file_names() == {"ovf": "vm.ovf", "xml": "vm.xml", "manifest": "manifest.json"}
    assert config_file_names(SID) == {
        "ovf": f"vm--{SID}.ovf",
        "xml": f"vm--{SID}.xml",
        "manifest": f"manifest--{SID}.json",
    }
    assert image_file_name("a/b", DID, SID, delta=True) == f"a%2Fb--{DID}--{SID}.qcow2"
    assert image_file_name("root", DID, SID) == f"root--{DID}--{SID}.raw"


# -- file keys: their strings are inode identities and must never change ----------------


@pytest.mark.parametrize(
    ("key", "text"),
    [
        (ConfigKey("vm.ovf"), "config:vm.ovf"),
        (DiskKey(DID), f"disk:{DID}"),
        (SetFileKey(SID, ConfigKey(f"vm--{SID}.ovf")), f"{SID}|config:vm--{SID}.ovf"),
        (SetFileKey(SID, DiskKey(DID)), f"{SID}|disk:{DID}"),
        (DisksDirKey(DID), f"disks/disk:{DID}"),
    ],
)
def test_file_key_strings(key: FileKey, text: str) -> None:
    assert key.encode() == text
    assert FileKey.parse(text) == key
    assert disk_id_of_key(text) == (DID if isinstance(key, DiskKey) else None)


@pytest.mark.parametrize("bad", ["", "vm.ovf", "x|y", "|disk:a", "disks/config:a", "a|b|config:c"])
def test_file_key_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        FileKey.parse(bad)
    assert parse_key(bad) is None


_part = st.text(st.characters(blacklist_characters="|"), max_size=20)
_set_id = st.text(st.characters(blacklist_characters="|/"), min_size=1, max_size=20)
_inner = st.builds(ConfigKey, _part) | st.builds(DiskKey, _part)
file_keys = _inner | st.builds(SetFileKey, _set_id, _inner) | st.builds(DisksDirKey, _part)


@given(file_keys)
def test_file_key_round_trip(key: FileKey) -> None:
    assert FileKey.parse(key.encode()) == key
    assert disk_id_of_key(key.encode()) == (key.disk_id if isinstance(key, DiskKey) else None)


@given(st.text(max_size=30) | st.builds(lambda t: "disk:" + t, st.text(max_size=30)))
def test_disk_id_of_key_is_what_parse_says(text: str) -> None:
    parsed = parse_key(text)
    assert disk_id_of_key(text) == (parsed.disk_id if isinstance(parsed, DiskKey) else None)


# -- recognising file names ------------------------------------------------------------

_UUID = re.compile(r"--[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
set_ids = st.text(min_size=1, max_size=40)
set_file_names = st.builds(
    ConfigFileName, st.sampled_from(list(ConfigRole)), st.none() | set_ids
) | st.builds(
    ImageFileName,
    st.text(max_size=40).filter(lambda a: not _UUID.search(a)),
    st.uuids().map(str),
    st.none() | set_ids,
    st.booleans(),
)


@given(
    set_file_names, st.text(st.characters(whitelist_categories=["L", "N"]), min_size=6, max_size=6)
)
def test_file_name_round_trip(file: ConfigFileName | ImageFileName, suffix: str) -> None:
    name = file.encode()
    assume(not is_hashed(name))
    parsed = parse_file_name(name)
    assert (parsed.file, parsed.final, parsed.rsync_temp) == (file, name, False)
    assume(re.fullmatch(r"[A-Za-z0-9_]{6}", suffix))
    temp = parse_file_name(f".{name}.{suffix}")  # rsync's temporary name for it
    assert (temp.file, temp.final, temp.rsync_temp) == (file, name, True)


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("vm.ovf", ConfigFileName(ConfigRole.OVF)),
        ("manifest.json", ConfigFileName(ConfigRole.MANIFEST)),
        (f"vm--{SID}.xml", ConfigFileName(ConfigRole.XML, SID)),
        ("manifest--c2.json", ConfigFileName(ConfigRole.MANIFEST, "c2")),
        ("manifest--a%2Fb.json", ConfigFileName(ConfigRole.MANIFEST, "a/b")),
        ("vm--a%zz.ovf", ConfigFileName(ConfigRole.OVF, "a%zz")),  # not canonical: as written
        (f"root disk--{DID}.raw", ImageFileName("root disk", DID)),
        (f"disk0--{DID}--c1.qcow2", ImageFileName("disk0", DID, "c1", delta=True)),
        (f"a%2Fb--{DID}--{SID}.raw", ImageFileName("a/b", DID, SID)),
        ("rhvfs-restore.conf", None),
        ("root--d1.raw", None),
        (".vm.ovf", None),
        ("vm--.ovf", None),
    ],
)
def test_file_name_examples(name: str, file: ConfigFileName | ImageFileName | None) -> None:
    assert parse_file_name(name).file == file


# What the restore session recognised with its own regexes before they moved here.
_OLD_RSYNC_TEMP = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{6}$")
_OLD_CONFIG_NAMES = frozenset({"manifest.json", "vm.ovf", "vm.xml"})
_OLD_SET_MANIFEST = re.compile(r"^manifest--[^/]+\.json$")
_OLD_SET_CONFIG = re.compile(r"^(manifest--[^/]+\.json|vm--[^/]+\.(ovf|xml))$")


def _old_base(name: str) -> str:
    m = _OLD_RSYNC_TEMP.match(name)
    return m.group(1) if m else name


names_in_a_restore_dir = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda pre, mid, post: pre + mid + post,
        st.sampled_from(["", ".", "vm--", "manifest--", ".vm--", ".manifest--"]),
        st.text(max_size=12),
        st.sampled_from(["", ".ovf", ".xml", ".json", ".json\n", ".ovf.abc123", ".json.a_b_c1"]),
    ),
    st.sampled_from(
        ["vm.ovf", "vm.xml", "manifest.json", ".vm.ovf.abc123", ".manifest.json.XYZ789"]
    ),
)


@given(names_in_a_restore_dir)
def test_recognition_is_what_the_restore_did_before(name: str) -> None:
    parsed = parse_file_name(name)
    base = _old_base(name)
    old_config = base in _OLD_CONFIG_NAMES or bool(_OLD_SET_CONFIG.match(base))
    old_manifest = name == "manifest.json" or bool(_OLD_SET_MANIFEST.match(name))
    assert isinstance(parsed.file, ConfigFileName) == old_config
    assert (not parsed.rsync_temp and parsed.config_role == ConfigRole.MANIFEST) == old_manifest
    assert parsed.final == base
    assert (backupset.rsync_target(name) or name) == base
