"""The session journal: records survive processes, updates are atomic, corruption is survivable."""

from __future__ import annotations

from pathlib import Path

import pytest

from rhvfs.sessions.core import _procid as procid
from rhvfs.sessions.core._journal import Journal, JournalEntry, default_journal_path


def entry(sid: str, **kw: object) -> JournalEntry:
    return JournalEntry(
        session_id=sid,
        process=procid.current(),
        owner_kind="vm",
        owner_id="vm-1",
        owner_name="web01",
        started="2026-01-01T00:00:00+00:00",
        **kw,  # type: ignore[arg-type]
    )


def test_roundtrip_and_updates(tmp_path: Path) -> None:
    j = Journal(tmp_path / "sub" / "e.json")
    assert j.entries() == []
    j.put(entry("a", snapshot_description="rhvfs-session a host=h pid=1 t"))
    j.put(entry("b"))
    j.put(entry("a", snapshot_description="rhvfs-session a host=h pid=1 t", snapshot_id="s1"))
    j.add_transfer("a", "t1")
    j.add_transfer("a", "t2")
    j.add_transfer("a", "t1")
    j.add_transfer("missing", "t3")
    j2 = Journal(tmp_path / "sub" / "e.json")  # another process reading the same file
    got = {e.session_id: e for e in j2.entries()}
    assert set(got) == {"a", "b"}
    assert got["a"].snapshot_id == "s1" and got["a"].transfer_ids == ("t1", "t2")
    assert got["a"].process == procid.current()
    j2.remove_transfer("a", "t1")
    j.remove("b")
    assert [(e.session_id, e.transfer_ids) for e in j.entries()] == [("a", ("t2",))]
    j.remove("a")
    j.remove("a")
    assert j.entries() == []


@pytest.mark.allow_log("rhvfs.sessions.core._journal", "WARNING", match="unreadable")
def test_corrupt_journal_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "e.json"
    path.write_text("{not json")
    j = Journal(path)
    assert j.entries() == []
    assert (tmp_path / "e.json.corrupt").read_text() == "{not json"
    j.put(entry("a"))
    assert [e.session_id for e in j.entries()] == ["a"]


def test_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert (
        default_journal_path("https://engine.example.com/")
        == tmp_path / "rhvfs" / "engine.example.com_443.json"
    )
    assert default_journal_path("http://10.0.0.1:8080", state_dir="/s") == Path(
        "/s/10.0.0.1_8080.json"
    )
