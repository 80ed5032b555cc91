"""Untrusted restore input for property tests: tiny valid sets, and ways to damage them.

``tiny_set`` is a full set of one small disk; ``tiny_chain`` a full set and
one incremental set of the same VM whose disk is a qcow2 delta (named as
``tests.support.backup_sets.ChainMaker`` names them). The hypothesis
strategies damage one file of a kind: ``ovf_inputs``, ``manifest_inputs``,
``options_inputs``, ``qcow2_inputs`` (random bytes, byte flips, truncation,
hostile snippets: DTDs, entities, unknown encodings, deep nesting; for
qcow2: header fields and table entries set to edge values, garbage backing
names). ``put`` writes a file through ``rhvfs.fs.Operations`` the way a tool
does and always closes it, whatever the calls answered.
Must not: assert anything about a restore (the tests do).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import struct
from typing import Any

import pyfuse3
from hypothesis import strategies as st

from rhvfs.backupset._qcow2 import Change, Qcow2Delta
from rhvfs.fs import Operations
from rhvfs.sessions.restore._options import KEYS as OPTION_KEYS
from tests.support.backup_sets import make_set
from tests.support.fs_ops import CTX, fields

KiB = 1024
DISK_SIZE = 256 * KiB
CLUSTER = 64 * KiB


@functools.cache
def tiny_set() -> dict[str, bytes]:
    """A full set of one 256 KiB disk (manifest, OVF, API XML, image)."""
    return dict(make_set(sizes=(DISK_SIZE,), seed=7).files)


def _delta(image: bytes, changes: list[Change], backing: str) -> bytes:
    q = Qcow2Delta(
        virtual_size=len(image), changes=changes, backing_file=backing, backing_format="raw"
    )
    out = bytearray()
    for off in range(0, q.size, CLUSTER):  # metadata from memory, data from the image
        if off < q.metadata_size:
            out += q.metadata_cluster(off // CLUSTER)
        else:
            for _, guest, n in q.data_ranges(off, CLUSTER):
                want = max(0, min(n, len(image) - guest))
                out += image[guest : guest + want] + bytes(n - want)
    return bytes(out)


@functools.cache
def tiny_chain() -> tuple[dict[str, bytes], dict[str, bytes], bytes]:
    """(files of full set c0, files of incremental set c1, the disk's content at c1)."""
    base = make_set(sizes=(DISK_SIZE,), seed=7)
    doc = base.manifest
    disk_id = doc["disks"][0]["id"]
    image0 = base.files[doc["disks"][0]["file"]]
    image1 = bytearray(image0)
    image1[CLUSTER : 2 * CLUSTER] = bytes(range(256)) * (CLUSTER // 256)
    image1[3 * CLUSTER : 4 * CLUSTER] = bytes(CLUSTER)
    changes = [Change(CLUSTER, CLUSTER), Change(3 * CLUSTER, CLUSTER, zero=True)]

    def config(set_id: str, parent: str | None, delta_of: str | None) -> dict[str, bytes]:
        m = copy.deepcopy(doc)
        m.update(
            set_type="full" if parent is None else "incremental",
            set_id=set_id,
            checkpoint_id=set_id,
            parent_set=None if parent is None else {"set_id": parent},
            full_set_id="c0",
            config_files={
                "ovf": f"vm--{set_id}.ovf",
                "api_xml": f"vm--{set_id}.xml",
                "manifest": f"manifest--{set_id}.json",
            },
        )
        d = m["disks"][0]
        d["file"] = f"disk0--{disk_id}--{set_id}." + ("qcow2" if delta_of else "raw")
        d["file_format"] = "qcow2" if delta_of else "raw"
        d["backing_file"] = delta_of
        return {
            f"manifest--{set_id}.json": json.dumps(m, indent=2).encode(),
            f"vm--{set_id}.ovf": base.files["vm.ovf"],
            f"vm--{set_id}.xml": b"<vm/>\n",
        }

    c0 = config("c0", None, None)
    c0[f"disk0--{disk_id}--c0.raw"] = image0
    c1 = config("c1", "c0", f"disk0--{disk_id}--c0.raw")
    c1[f"disk0--{disk_id}--c1.qcow2"] = _delta(bytes(image1), changes, f"disk0--{disk_id}--c0.raw")
    return c0, c1, bytes(image1)


# -- damage ---------------------------------------------------------------------------


@st.composite
def _mutated(draw: st.DrawFn, valid: bytes, snippets: list[bytes]) -> bytes:
    """``valid`` with a few flips, cuts, insertions of hostile snippets, or duplications."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "replace", "repeat"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(snippets) | st.binary(max_size=64))
        elif op == "replace":
            end = draw(st.integers(pos, min(len(data), pos + 64)))
            data[pos:end] = draw(st.sampled_from(snippets) | st.binary(max_size=64))
        elif op == "repeat" and data:
            end = draw(st.integers(pos, min(len(data), pos + 256)))
            data[pos:pos] = bytes(data[pos:end]) * draw(st.integers(1, 50))
    return bytes(data)


_ENCODING = st.text(
    st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="-_"),
    max_size=16,
)

_XML_SNIPPETS = [
    b'<?xml version="1.0" encoding="x-unknown"?>',
    b'<?xml version="1.0" encoding="utf-16"?>',
    b'<?xml version="1.0" encoding="rot13"?>',
    b'<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>',
    b'<!DOCTYPE r SYSTEM "http://localhost:1/evil.dtd">',
    b'<!ENTITY x SYSTEM "file:///etc/passwd">',
    b"&x;",
    b"<a>" * 200,
    b"</a>" * 200,
    b"<![CDATA[",
    b"\xef\xbb\xbf",
    b"\x00",
    b"\xff\xfe",
    b'<Item xmlns:rasd="urn:x"><rasd:ResourceType>17</rasd:ResourceType></Item>',
]


@st.composite
def ovf_inputs(draw: st.DrawFn) -> bytes:
    """A damaged ``vm.ovf``: random bytes, a mutated valid one, or an unknown encoding."""
    valid = tiny_set()["vm.ovf"]
    kind = draw(st.sampled_from(["random", "mutated", "encoding", "tiny"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "encoding":
        enc = draw(_ENCODING).encode()
        return valid.replace(b'encoding="UTF-8"', b'encoding="' + enc + b'"', 1)
    if kind == "tiny":  # the 44-byte file of the bug report, and its kin
        return b'<?xml version="1.0" encoding="' + draw(_ENCODING).encode() + b'"?><a/>'
    return draw(_mutated(valid, _XML_SNIPPETS))


_JSON_SNIPPETS = [
    b"[" * 1000,
    b"{" * 1000,
    b'"size": 99999999999999999999999999999999999',
    b'"size": -1',
    b'"size": 1e308',
    b"NaN",
    b"Infinity",
    b'"file": "../../etc/passwd"',
    b'"file": "\\u0000"',
    b'"id": "' + b"x" * 300 + b'"',
    b"\xff",
    b"1" * 5000,
]

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
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


@st.composite
def manifest_inputs(draw: st.DrawFn) -> bytes:
    """A damaged ``manifest.json``: random bytes, mutated bytes, or fields replaced."""
    valid = tiny_set()["manifest.json"]
    kind = draw(st.sampled_from(["random", "mutated", "fields"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "mutated":
        return draw(_mutated(valid, _JSON_SNIPPETS))
    doc = json.loads(valid)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(_json_values)
    return json.dumps(doc, allow_nan=True).encode()


_OPTION_KEYS = sorted(OPTION_KEYS)  # the parser's own list: a new key is fuzzed too


@st.composite
def options_inputs(draw: st.DrawFn) -> bytes:
    """A random ``rhvfs-restore.conf``: known and unknown keys with arbitrary values, or bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(_OPTION_KEYS) | st.text(max_size=10))
        value = draw(
            st.sampled_from(["yes", "no", "all", "none", "auto", "new", "original", "x:y,z"])
            | st.text(max_size=40)
        )
        sep = draw(st.sampled_from(["=", ":", " = ", ""]))
        lines.append(f"{key}{sep}{value}")
    return "\n".join(lines).encode("utf-8", "surrogatepass")


#: qcow2 header fields: (offset, struct format) of each one a delta's parser reads.
_HEADER_FIELDS = [
    (4, ">I"),  # version
    (8, ">Q"),  # backing_file_offset
    (16, ">I"),  # backing_file_size
    (20, ">I"),  # cluster_bits
    (24, ">Q"),  # size
    (32, ">I"),  # crypt_method
    (36, ">I"),  # l1_size
    (40, ">Q"),  # l1_table_offset
    (48, ">Q"),  # refcount_table_offset
    (56, ">I"),  # refcount_table_clusters
    (72, ">Q"),  # incompatible_features
    (96, ">I"),  # refcount_order
    (100, ">I"),  # header_length
    (104, ">I"),  # first extension: type
    (108, ">I"),  # first extension: length
]


def _edge(fmt: str) -> st.SearchStrategy[int]:
    top = (1 << (8 * struct.calcsize(fmt))) - 1
    return st.sampled_from([0, 1, 8, 9, 16, 21, 22, 64, 104, 512, 4096, CLUSTER, top, top >> 1]) | (
        st.integers(0, top)
    )


@st.composite
def qcow2_inputs(draw: st.DrawFn) -> bytes:
    """A damaged delta of ``tiny_chain``'s incremental set: header fields, L1/L2 entries or
    the backing file name set to edge values, flips, cuts, or random bytes."""
    _, c1, _ = tiny_chain()
    valid = next(v for k, v in c1.items() if k.endswith(".qcow2"))
    data = bytearray(valid)
    kind = draw(st.sampled_from(["header", "header", "tables", "backing", "mutated", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=1024))
    if kind == "header":
        for _ in range(draw(st.integers(1, 3))):
            offset, fmt = draw(st.sampled_from(_HEADER_FIELDS))
            struct.pack_into(fmt, data, offset, draw(_edge(fmt)))
    elif kind == "tables":
        (l1_offset,) = struct.unpack_from(">Q", data, 40)
        l1 = struct.unpack_from(">Q", data, l1_offset)[0] & 0x00FF_FFFF_FFFF_FE00
        for _ in range(draw(st.integers(1, 4))):
            table = draw(st.sampled_from([l1_offset, l1]))
            index = draw(st.integers(0, CLUSTER // 8 - 1) | st.integers(0, 8))
            struct.pack_into(">Q", data, table + index * 8, draw(_edge(">Q")))
    elif kind == "backing":
        (bf_off,) = struct.unpack_from(">Q", data, 8)
        name = draw(st.binary(min_size=1, max_size=1100))
        struct.pack_into(">I", data, 16, len(name))
        data[bf_off : bf_off + len(name)] = name
    else:
        return draw(_mutated(valid[: 2 * CLUSTER], [b"\xff" * 8, b"\0" * 8])) + valid[2 * CLUSTER :]
    return bytes(data)


# -- writing ---------------------------------------------------------------------------


async def put(ops: Operations, dir_ino: int, name: str, data: bytes) -> list[int]:
    """Create, write, set times on, flush and release one file as a copy tool does; the
    errnos the calls answered (the file is closed whatever they were)."""
    errnos: list[int] = []
    try:
        info, attr = await ops.create(
            dir_ino, name.encode(), 0o600, os.O_WRONLY | os.O_CREAT | os.O_EXCL, CTX
        )
    except pyfuse3.FUSEError as e:
        return [e.errno]
    try:
        for off in range(0, len(data), 128 * KiB):
            await ops.write(info.fh, off, data[off : off + 128 * KiB])
        ea = pyfuse3.EntryAttributes()
        ea.st_mtime_ns = 1_600_000_000 * 10**9
        await ops.setattr(attr.st_ino, ea, fields(update_mtime=True), info.fh, CTX)
        await ops.flush(info.fh)
    except pyfuse3.FUSEError as e:
        errnos.append(e.errno)
    finally:
        await ops.release(info.fh)
    return errnos
