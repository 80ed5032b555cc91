"""Rates, ETA and percent of ``rhvfs.sessions.core._progress`` on a fake clock (times passed in)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhvfs.sessions.core._progress import (
    FileProgress,
    RateMeter,
    SetProgress,
    eta_s,
    progress_document,
    sum_progress,
)

MiB = 1024 * 1024


def test_meter_before_any_byte_has_no_rate() -> None:
    meter = RateMeter(window_s=5.0)
    assert meter.current(100.0) == 0.0
    assert meter.average(100.0) == 0.0
    assert meter.total == 0


def test_steady_rate_is_seen_by_current_and_average() -> None:
    meter = RateMeter(window_s=5.0, bucket_s=0.25)
    t = 10.0
    for _ in range(100):  # 1 MiB every 0.5 s for 50 s: 2 MiB/s
        t += 0.5
        meter.add(t, MiB)
    assert meter.current(t) == pytest.approx(2 * MiB)
    assert meter.average(t) == pytest.approx(100 * MiB / 49.5)
    assert meter.total == 100 * MiB


def test_current_rate_follows_a_change_within_the_window_and_average_lags() -> None:
    meter = RateMeter(window_s=5.0, bucket_s=0.25)
    t = 0.0
    for _ in range(60):  # 60 s at 4 MiB/s
        t += 1.0
        meter.add(t, 4 * MiB)
    for _ in range(10):  # then 10 s at 1 MiB/s
        t += 1.0
        meter.add(t, MiB)
    assert meter.current(t) == pytest.approx(MiB)  # the last 5 s only
    assert meter.average(t) == pytest.approx((240 + 10) * MiB / 69.0)


def test_current_rate_drops_to_zero_after_a_pause_of_one_window() -> None:
    meter = RateMeter(window_s=5.0)
    meter.add(1.0, MiB)
    meter.add(2.0, MiB)
    assert meter.current(2.0) == pytest.approx(2 * MiB / 1.0)  # younger than the window
    assert meter.current(6.5) == pytest.approx(MiB / 5.0)  # the byte at 1.0 left the window
    assert meter.current(7.0) == 0.0
    assert meter.average(7.0) == pytest.approx(2 * MiB / 6.0)


def test_records_in_one_bucket_are_kept_as_one() -> None:
    meter = RateMeter(window_s=5.0, bucket_s=0.25)
    for i in range(1000):
        meter.add(1.0 + i * 0.001, 1)
    assert len(meter._buckets) == 4
    assert meter.total == 1000


def test_a_clock_going_back_counts_as_now() -> None:
    meter = RateMeter(window_s=5.0)
    meter.add(10.0, 100)
    meter.add(9.0, 100)
    assert meter.last == 10.0
    assert meter.total == 200


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError):
        RateMeter(window_s=0.0)
    with pytest.raises(ValueError):
        RateMeter(window_s=1.0, bucket_s=2.0)


def test_eta() -> None:
    assert eta_s(100, 10.0) == 10.0
    assert eta_s(0, 0.0) == 0.0
    assert eta_s(100, 0.0) is None


def test_file_progress_counts_a_range_once_and_every_byte_toward_the_rate() -> None:
    fp = FileProgress(10 * MiB, window_s=5.0)
    assert fp.state == "waiting"
    fp.add(1.0, 0, MiB)
    fp.add(2.0, 0, MiB)  # read again: done stays, the rate sees both
    fp.add(2.0, MiB, MiB)
    assert fp.state == "reading"
    doc = fp.document(3.0)
    assert doc["bytes_done"] == 2 * MiB
    assert doc["percent"] == 20.0
    assert doc["rate_bytes_per_s"] == (3 * MiB) // 2
    assert doc["eta_s"] == pytest.approx(8 * MiB / (1.5 * MiB), abs=0.1)
    fp.add(4.0, 2 * MiB, 8 * MiB)
    assert fp.state == "done"
    done = fp.document(100.0)
    assert done["percent"] == 100.0 and done["eta_s"] == 0.0
    assert done["rate_bytes_per_s"] == 0
    assert done["average_rate_bytes_per_s"] == (11 * MiB) // 3  # frozen at its last byte


def test_progress_document_of_a_stalled_transfer_has_no_eta() -> None:
    doc = progress_document(size=100, done=40, current=0.0, average=5.0)
    assert doc == {
        "size": 100,
        "bytes_done": 40,
        "percent": 40.0,
        "rate_bytes_per_s": 0,
        "average_rate_bytes_per_s": 5,
        "eta_s": None,
    }
    assert progress_document(size=0, done=0, current=0.0, average=0.0)["percent"] == 100.0


def test_set_progress_lists_waiting_files_and_sums_them() -> None:
    sp = SetProgress(window_s=5.0)
    sp.expect("a", "a.raw", 4 * MiB)
    sp.expect("b", "b.raw", 4 * MiB)
    sp.add(1.0, "a", 0, 2 * MiB, name="a.raw", size=4 * MiB)
    sp.add(2.0, "a", 2 * MiB, 2 * MiB, name="a.raw", size=4 * MiB)
    doc = sp.document(2.0)
    assert [(f["name"], f["state"]) for f in doc["files"]] == [
        ("a.raw", "done"),
        ("b.raw", "waiting"),
    ]
    assert doc["progress"]["size"] == 8 * MiB
    assert doc["progress"]["bytes_done"] == 4 * MiB
    assert doc["progress"]["percent"] == 50.0
    assert doc["progress"]["rate_bytes_per_s"] == 4 * MiB  # 4 MiB over the 1 s since the first byte
    assert doc["progress"]["eta_s"] == 1.0


def test_sum_progress_adds_sizes_bytes_and_rates() -> None:
    a = progress_document(size=100, done=50, current=10.0, average=8.0)
    b = progress_document(size=300, done=50, current=30.0, average=2.0)
    total = sum_progress([a, b])
    assert total["size"] == 400 and total["bytes_done"] == 100
    assert total["rate_bytes_per_s"] == 40 and total["average_rate_bytes_per_s"] == 10
    assert total["eta_s"] == 7.5
    assert total["percent"] == 25.0
    assert sum_progress([])["size"] == 0


@given(
    st.lists(
        st.tuples(st.floats(0.0, 2.0), st.integers(0, 10 * MiB)),
        min_size=1,
        max_size=60,
    )
)
def test_current_rate_never_exceeds_what_moved_in_the_window(
    steps: list[tuple[float, int]],
) -> None:
    meter = RateMeter(window_s=5.0, bucket_s=0.25)
    t = 0.0
    for dt, n in steps:
        t += dt
        meter.add(t, n)
        rate = meter.current(t)
        assert rate >= 0.0
        assert rate * min(5.0, max(t - (meter.first or t), 0.25)) <= meter.total + 1e-6
    assert meter.average(t) <= meter.total / 0.25 + 1e-6
