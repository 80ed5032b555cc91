"""What a set's listing announces (rhvfs.backupset): config-file padding, stable times."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhvfs.backupset import announced_size, pad_to, set_second, set_times_ns, xml_stop_time
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


def test_set_times_depend_only_on_inputs() -> None:
    t = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    second = set_second(t)
    assert second == int(t.timestamp())
    a = set_times_ns(second, "ab" * 32, "12" * 32)
    assert a == set_times_ns(second, "ab" * 32, "12" * 32)
    assert a[0] != set_times_ns(second, "cd" * 32, "12" * 32)[0]  # data changed: images
    assert a[1] != set_times_ns(second, "ab" * 32, "34" * 32)[1]  # configuration changed
    assert set_second(None) == 978307200


@given(
    st.integers(min_value=0, max_value=2**33),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_configuration_is_newer_than_images_in_the_same_second(
    second: int, data_fp: str, config_fp: str
) -> None:
    """borg 1.2 caches only files older than the newest one a run read: the configuration
    must be that newest one. Bacula compares whole seconds: both keep the set's second."""
    image, config = set_times_ns(second, data_fp, config_fp)
    assert image < config
    assert image // 1_000_000_000 == config // 1_000_000_000 == second


def test_stop_time_from_api_xml() -> None:
    xml = b"<vm id='x'><name>a</name><stop_time>2026-01-02T03:04:05.678+01:00</stop_time></vm>"
    t = xml_stop_time(xml)
    assert t is not None and t.astimezone(UTC) == datetime(2026, 1, 2, 2, 4, 5, 678000, tzinfo=UTC)
    assert xml_stop_time(b"<vm><name>never ran</name></vm>") is None
    assert xml_stop_time(b"<vm><stop_time>garbage</stop_time></vm>") is None
