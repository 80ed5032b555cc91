"""Config-file padding, names and stable times of backup sets."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhvfs.backupset._build import announced_size, pad_to, stable_mtime_ns
from rhvfs.errors import DataIntegrityError
from rhvfs.sessions.core._model import blocks_for, disk_file_names, set_image_name


@given(st.integers(min_value=0, max_value=10 * 1024 * 1024))
def test_announced_size_has_headroom_and_is_aligned(n: int) -> None:
    size = announced_size(n)
    assert size % (64 * 1024) == 0
    assert size >= n + 16 * 1024
    assert size < n + 16 * 1024 + 64 * 1024


def test_padding_keeps_json_and_xml_valid() -> None:
    doc = json.dumps({"a": [1, 2]}).encode()
    padded = pad_to(doc, 100, what="manifest.json")
    assert len(padded) == 100 and padded.endswith(b"\n")
    assert json.loads(padded) == {"a": [1, 2]}
    assert pad_to(doc, len(doc), what="x") == doc
    with pytest.raises(DataIntegrityError, match="refusing to truncate"):
        pad_to(doc, len(doc) - 1, what="manifest.json")


def test_names() -> None:
    assert set_image_name("root disk", "d1") == "root disk--d1.raw"
    assert set_image_name("a/b", "d1") == "a%2Fb--d1.raw"
    assert disk_file_names([("d1", "x"), ("d2", "x"), ("d3", "y")]) == {
        "d1": "x--d1.raw",
        "d2": "x--d2.raw",
        "d3": "y.raw",
    }
    assert blocks_for(0) == 0 and blocks_for(1) == 1 and blocks_for(513) == 2


def test_stable_mtime_depends_only_on_inputs() -> None:
    t = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    a = stable_mtime_ns(t, "ab" * 32)
    assert a == stable_mtime_ns(t, "ab" * 32)
    assert a != stable_mtime_ns(t, "cd" * 32)
    assert a // 1_000_000_000 == int(t.timestamp())
    assert stable_mtime_ns(None, "ab" * 32) // 1_000_000_000 == 978307200


def test_stop_time_from_api_xml() -> None:
    from rhvfs.backupset._build import xml_stop_time

    xml = b"<vm id='x'><name>a</name><stop_time>2026-01-02T03:04:05.678+01:00</stop_time></vm>"
    t = xml_stop_time(xml)
    assert t is not None and t.astimezone(UTC) == datetime(2026, 1, 2, 2, 4, 5, 678000, tzinfo=UTC)
    assert xml_stop_time(b"<vm><name>never ran</name></vm>") is None
    assert xml_stop_time(b"<vm><stop_time>garbage</stop_time></vm>") is None
