"""The installation id (one per state directory, 0600) and the mount instances' locks."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rhvfs.sessions.core._installation import (
    ID_FILE,
    ID_PATTERN,
    INSTANCES_DIR,
    Installation,
    load_or_create_id,
)
from rhvfs.sessions.core._journal import Journal


def test_generated_once_stored_0600_and_shared_by_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = Installation(state)
    ident = first.id
    assert ID_PATTERN.fullmatch(ident)
    path = state / ID_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert path.read_text().split()[0] == ident
    # Another mount, another process: the same installation, another instance.
    second = Installation(state)
    assert second.id == ident and second.instance != first.instance
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from rhvfs.sessions.core._installation import Installation as I; print(I({str(state)!r}).id)",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.stdout.strip() == ident
    assert Installation(tmp_path / "elsewhere").id != ident
    # The journal's installation is its directory's.
    journal = Journal(state / "engine_443.json")
    assert journal.installation.id == ident


def test_concurrent_first_uses_agree(tmp_path: Path) -> None:
    ids: list[str] = []
    threads = [
        threading.Thread(target=lambda: ids.append(load_or_create_id(tmp_path))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    assert sorted(os.listdir(tmp_path)) == [ID_FILE]  # no temporary file left


@pytest.mark.allow_log("rhvfs.sessions.core._installation", "WARNING", match="another machine")
def test_a_clone_with_a_new_machine_id_is_a_new_installation(tmp_path: Path) -> None:
    original = load_or_create_id(tmp_path, machine="aaaa")
    assert load_or_create_id(tmp_path, machine="aaaa") == original
    assert load_or_create_id(tmp_path, machine="") == original  # no machine id: no check
    clone = load_or_create_id(tmp_path, machine="bbbb")
    assert clone != original
    assert load_or_create_id(tmp_path, machine="bbbb") == clone


@pytest.mark.allow_log(
    "rhvfs.sessions.core._installation", "WARNING", match="not an installation id"
)
def test_a_malformed_id_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / ID_FILE).write_text("../../etc\n")
    ident = load_or_create_id(tmp_path)
    assert ID_PATTERN.fullmatch(ident) and (tmp_path / ID_FILE).read_text().split()[0] == ident


def test_a_held_instance_is_alive_for_everyone_until_released(tmp_path: Path) -> None:
    mount = Installation(tmp_path)
    gc = Installation(tmp_path)  # e.g. `rhvfs gc`, or another container on the same volume
    assert not gc.instance_alive(mount.instance)
    assert mount.hold() and mount.hold()  # both managers of a mount
    lock = tmp_path / INSTANCES_DIR / f"{mount.instance}.lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert gc.instance_alive(mount.instance) and mount.instance_alive(mount.instance)
    assert gc.forget_dead_instances() == [] and lock.exists()
    mount.release()
    assert gc.instance_alive(mount.instance)  # one manager still runs
    mount.release()
    assert not gc.instance_alive(mount.instance) and not lock.exists()
    mount.release()  # more releases than holds: nothing happens
    assert not gc.instance_alive("not-an-id") and not gc.instance_alive(None)


def test_a_killed_mounts_lock_is_free_and_forgotten(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from rhvfs.sessions.core._installation import Installation\n"
        f"i = Installation({str(tmp_path)!r})\n"
        "i.hold()\n"
        "print(i.instance, flush=True)\n"
        "os._exit(0)  # dies holding it, as after SIGKILL\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    dead = out.stdout.strip()
    assert (tmp_path / INSTANCES_DIR / f"{dead}.lock").exists()
    gc = Installation(tmp_path)
    assert not gc.instance_alive(dead)
    assert gc.forget_dead_instances() == [dead]
    assert os.listdir(tmp_path / INSTANCES_DIR) == []


@pytest.mark.allow_log(
    "rhvfs.sessions.core._installation", "WARNING", match="cannot mark this mount"
)
def test_a_state_dir_that_cannot_take_the_lock_only_costs_the_lock(tmp_path: Path) -> None:
    ident = Installation(tmp_path).id
    (tmp_path / INSTANCES_DIR).write_text("not a directory")  # even root cannot lock there
    mount = Installation(tmp_path)
    assert not mount.hold() and not mount.held
    assert mount.id == ident and not mount.instance_alive(mount.instance)
    mount.release()
