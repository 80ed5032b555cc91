"""What a set's listing announces (rhvfs.backupset): config-file padding, stable times."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhvfs.backupset import announced_size, pad_to, stable_mtime_ns, xml_stop_time
from rhvfs.errors import DataIntegrityError


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


def test_stable_mtime_depends_only_on_inputs() -> None:
    t = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    a = stable_mtime_ns(t, "ab" * 32)
    assert a == stable_mtime_ns(t, "ab" * 32)
    assert a != stable_mtime_ns(t, "cd" * 32)
    assert a // 1_000_000_000 == int(t.timestamp())
    assert stable_mtime_ns(None, "ab" * 32) // 1_000_000_000 == 978307200


def test_stop_time_from_api_xml() -> None:
    xml = b"<vm id='x'><name>a</name><stop_time>2026-01-02T03:04:05.678+01:00</stop_time></vm>"
    t = xml_stop_time(xml)
    assert t is not None and t.astimezone(UTC) == datetime(2026, 1, 2, 2, 4, 5, 678000, tzinfo=UTC)
    assert xml_stop_time(b"<vm><name>never ran</name></vm>") is None
    assert xml_stop_time(b"<vm><stop_time>garbage</stop_time></vm>") is None
