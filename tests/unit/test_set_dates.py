"""``SetDates`` (rhvfs.sessions.full._dates): dates kept for the next mount, in a private file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from rhvfs.sessions.full._dates import SetDate, SetDates


def test_dates_survive_a_new_instance_and_the_file_is_private(tmp_path: Path) -> None:
    dates = SetDates.beside(tmp_path / "engine_443.json")
    assert dates.path == tmp_path / "engine_443.dates.json"
    dates.put("vm1", SetDate("ab" * 32, 1767261601, 1767261600))
    assert not dates.path.exists()  # batched: written at most once a minute, and at flush
    dates.flush()
    assert stat.S_IMODE(dates.path.stat().st_mode) == 0o600
    assert SetDates(dates.path).get("vm1") == SetDate("ab" * 32, 1767261601, 1767261600)
    assert SetDates(dates.path).get("vm2") is None


@pytest.mark.allow_log("rhvfs.sessions.full._dates", "WARNING", match="ignoring set dates")
@pytest.mark.parametrize(
    "text", ["not json", json.dumps({"format": "other", "sets": {}}), json.dumps({"sets": 3})]
)
def test_a_broken_file_is_ignored(tmp_path: Path, text: str) -> None:
    path = tmp_path / "e.dates.json"
    path.write_text(text)
    dates = SetDates(path)
    assert dates.get("vm1") is None
    dates.put("vm1", SetDate("cd" * 32, 5, 4))
    dates.flush()
    assert SetDates(path).get("vm1") == SetDate("cd" * 32, 5, 4)
