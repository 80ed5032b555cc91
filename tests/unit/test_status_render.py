"""``rhvfs status``: the screen drawn from a status.json document, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from rhvfs.cli import main
from rhvfs.commands.status import bar, human_bytes, human_eta, render
from rhvfs.sessions.core._progress import progress_document

MiB = 1024 * 1024


def test_units() -> None:
    assert human_bytes(900) == "900 B"
    assert human_bytes(512 * MiB) == "512.0 MiB"
    assert human_bytes(1536 * MiB) == "1.5 GiB"
    assert human_eta(None) == "ETA --:--"
    assert human_eta(3.2) == "ETA 0:04"
    assert human_eta(3723) == "ETA 1:02:03"
    assert bar(50.0, 10) == "[#####-----]"
    assert bar(140.0, 4) == "[####]"


def status_doc() -> dict[str, object]:
    img = progress_document(size=512 * MiB, done=128 * MiB, current=64.0 * MiB, average=60.0 * MiB)
    waiting = progress_document(size=256 * MiB, done=0, current=0.0, average=0.0)
    session = {
        "owner": {"kind": "vm", "id": "v1", "name": "web01"},
        "set_type": "full",
        "state": "ready",
        "phase": "active",
        "read_id": "728f3e25a771",
        "point_in_time": {
            "read_id": "728f3e25a771",
            "method": "backup",
            "configuration_time": "2026-12-02T14:14:40+00:00",
        },
        "bytes_read": 128 * MiB,
        "progress": progress_document(
            size=768 * MiB, done=128 * MiB, current=64.0 * MiB, average=60.0 * MiB
        ),
        "files": [
            {
                "name": "web01_data--ad57.raw",
                "size": 512 * MiB,
                "state": "reading",
                "progress": img,
            },
            {
                "name": "web01_os--d772.raw",
                "size": 256 * MiB,
                "state": "waiting",
                "progress": waiting,
            },
        ],
    }
    return {
        "mountpoint": "/mnt/rhv",
        "engine_url": "https://engine",
        "pid": 42,
        "uptime_s": 75.0,
        "open_files": 1,
        "sessions": {
            "sessions": [],
            "incremental": {"sessions": [session]},
            "totals": {
                "sessions_active": 1,
                "bytes_read": 128 * MiB,
                "progress": session["progress"],
            },
            "queued": [],
            "errors": [],
        },
        "restores": {},
        "errors": [
            {
                "time": "2026-12-02T14:16:10+00:00",
                "level": "warning",
                "what": "fs opendir",
                "message": "opendir: engine unavailable -> EIO",
            }
        ],
        "error_counts": {"warning": 1, "retry": 4},
    }


def test_render_shows_bars_rates_eta_per_file_and_errors() -> None:
    text = "\n".join(render(status_doc(), width=100))
    assert "rhvfs /mnt/rhv  engine https://engine  pid 42  up 1:15  open files 1" in text
    assert "backups: 1 active, 128.0 MiB read since mount" in text
    assert "vm web01: full set via backup, active, read 728f3e25" in text
    assert "web01_data--ad57.raw  reading" in text
    assert (
        "[#####---------------]  25.0%  128.0 MiB / 512.0 MiB   64.0 MiB/s (avg 60.0 MiB/s)  ETA 0:06"
        in text
    )
    assert "web01_os--d772.raw  waiting" in text
    assert (
        "[--------------------]   0.0%        0 B / 256.0 MiB        0 B/s (avg 0 B/s)  ETA --:--"
        in text
    )
    assert "recent errors (4 retry, 1 warning since mount):" in text
    assert "warning fs opendir: engine unavailable -> EIO" in text


def test_render_of_an_idle_mount() -> None:
    lines = render({"mountpoint": "/m", "sessions": {"totals": {}}}, width=80)
    assert lines[1] == "backups: 0 active, 0 B read since mount"
    assert len(lines) == 2


def test_status_of_a_path_that_is_not_an_rhvfs_mount_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path} is not an rhvfs mount" in err
    assert main(["status", "--watch", str(tmp_path / "missing")]) == 1
    assert "is not an rhvfs mount" in capsys.readouterr().err
