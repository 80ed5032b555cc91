"""``rhvfs`` as a script sees it, without an engine: exit codes, stdout and stderr.

Every failure exits non-zero with one line on stderr and nothing on stdout: a
state dir that is a file or can't be created, a log file in a missing
directory, INI syntax errors (which never echo the file's lines: one may hold a
password), unknown ``-o`` options, ``umount`` of what is not mounted, and
``rhvfs sim`` without the simulator's extra. ``--debug`` shows the traceback.
``--version`` prints the package version. ``-o`` may be repeated (merged, a
later value wins) and takes ``ro``. The report lines of ``rhvfs gc`` are sorted
by their beginning: every line ``collect_garbage`` can produce has a known one.

The commands run as subprocesses (``python -m rhvfs.cli``) with their own
``XDG_STATE_HOME`` and ``XDG_CONFIG_HOME``; the engine URL points at a closed
port and is never reached.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import rhvfs
from rhvfs.commands.gc import ACTION_PREFIXES, ERROR_PREFIXES, LEFT_ALONE_PREFIXES, classify
from rhvfs.commands.mount import FuseOptions, parse_o
from rhvfs.errors import ConfigError
from rhvfs.mount import MountOptions, fuse_options

ROOT = Path(__file__).resolve().parents[2]
SECRET = "pw-never-shown-4711"


def run(tmp_path: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m rhvfs.cli ARGS`` (or ``python -c CODE``) in ``tmp_path``."""
    env = {
        **os.environ,
        "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
    }
    env.pop("RHVFS_PASSWORD", None)
    argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "rhvfs.cli"]
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def one_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The one stderr line of a failed command (nothing on stdout, no traceback)."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A valid section whose engine is never reached (every test fails before)."""
    path = tmp_path / "ovirt-img.conf"
    path.write_text(
        f"[e]\nengine_url = https://localhost:1\nusername = admin@internal\npassword = {SECRET}\n"
    )
    return path


def conn(conf: Path) -> list[str]:
    return ["-c", "e", "--config-file", str(conf)]


def test_version_is_the_package_version(tmp_path: Path) -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert declared == rhvfs.__version__
    for args in (["--version"], ["--debug", "--version"]):
        result = run(tmp_path, *args)
        assert (result.returncode, result.stdout, result.stderr) == (
            0,
            f"rhvfs {declared}\n",
            "",
        )


def test_no_command_is_a_usage_error_on_stderr(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("usage: rhvfs")
    unknown = run(tmp_path, "frobnicate")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.startswith("rhvfs: unknown command 'frobnicate'")


@pytest.mark.parametrize("command", ["ls", "gc", "mount"])
def test_a_state_dir_that_is_a_file_is_one_line(command: str, tmp_path: Path, conf: Path) -> None:
    state = tmp_path / "state-file"
    state.write_text("not a directory")
    (tmp_path / "mnt").mkdir()
    extra = ["mnt"] if command == "mount" else []
    line = one_error(run(tmp_path, command, *conn(conf), "--state-dir", str(state), *extra))
    assert line == f"rhvfs: configuration error: the state dir {state} is not a directory"


@pytest.mark.parametrize("command", ["ls", "gc", "mount"])
def test_a_state_dir_that_cannot_be_created_is_one_line(
    command: str, tmp_path: Path, conf: Path
) -> None:
    state = tmp_path / "state-file" / "sub"
    (tmp_path / "state-file").write_text("a file where a directory should be")
    (tmp_path / "mnt").mkdir()
    extra = ["mnt"] if command == "mount" else []
    line = one_error(run(tmp_path, command, *conn(conf), "--state-dir", str(state), *extra))
    assert line == (
        f"rhvfs: configuration error: cannot create the state dir {state}: Not a directory"
    )


@pytest.mark.parametrize("foreground", [False, True])
def test_a_log_file_in_a_missing_directory_is_one_line(
    foreground: bool, tmp_path: Path, conf: Path
) -> None:
    log = tmp_path / "missing" / "mount.log"
    (tmp_path / "mnt").mkdir()
    args = ["mount", *conn(conf), "--state-dir", "state", "--log", str(log), "mnt"]
    line = one_error(run(tmp_path, *args, *(["--foreground"] if foreground else [])))
    assert line == (
        f"rhvfs: configuration error: cannot open the log file {log}: No such file or directory"
    )
    assert not (tmp_path / "missing").exists()


def test_debug_shows_the_traceback(tmp_path: Path, conf: Path) -> None:
    state = tmp_path / "state-file"
    state.write_text("x")
    result = run(tmp_path, "--debug", "ls", *conn(conf), "--state-dir", str(state))
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "is not a directory" in result.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"password = {SECRET}\n[e]\n", "line 1: expected a [section] header first"),
        (
            f"[e]\nengine_url = https://localhost:1\npassword {SECRET}\nusername\n",
            'not INI syntax ("key = value" expected) at line(s) 3, 4',
        ),
        ("[e]\nusername = a\nusername = b\n", "option 'username' in section 'e' already exists"),
    ],
)
@pytest.mark.parametrize("command", ["ls", "gc", "mount"])
def test_ini_syntax_errors_are_one_line_without_the_file_contents(
    command: str, body: str, message: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text(body)
    (tmp_path / "mnt").mkdir()
    extra = ["mnt"] if command == "mount" else []
    args = [command, "-c", "e", "--config-file", str(bad), "--state-dir", "state", *extra]
    line = one_error(run(tmp_path, *args))
    assert line.startswith(f"rhvfs: configuration error: cannot read config file {bad}")
    assert message in line
    assert SECRET not in line


def test_unknown_mount_options_are_one_line_that_names_the_known_ones(
    tmp_path: Path, conf: Path
) -> None:
    (tmp_path / "mnt").mkdir()
    args = ["mount", *conn(conf), "--state-dir", "state", "-o", "ro", "-o", "bogus,umask=027"]
    line = one_error(run(tmp_path, *args, "-o", "xx=1", "mnt"))
    assert line == (
        "rhvfs: configuration error: unknown mount option(s): bogus, xx=1 "
        "(known: allow_other, debug, ro, gid=, restore_umask=, uid=, umask=)"
    )
    assert os.listdir(tmp_path / "mnt") == []


def test_repeated_o_options_are_merged_and_a_later_value_wins() -> None:
    assert parse_o(["ro", "uid=5,umask=027", "uid=7"]) == FuseOptions(
        read_only=True, uid=7, umask=0o027
    )
    assert parse_o(["ro"]) == parse_o("ro") == FuseOptions(read_only=True)
    assert parse_o([]) == FuseOptions()
    # allow_other needs a umask, which may come from another -o
    assert parse_o(["allow_other", "umask=0027"]).allow_other
    with pytest.raises(ConfigError, match="allow_other needs explicit ownership"):
        parse_o(["allow_other", "gid=0"])


def test_a_read_only_mount_asks_the_kernel_for_ro() -> None:
    assert "ro" in fuse_options(MountOptions("/m", read_only=True))
    assert "ro" not in fuse_options(MountOptions("/m"))


def test_umount_of_what_is_not_mounted_fails_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    line = one_error(run(tmp_path, "umount", "mnt"))
    assert line == f"rhvfs: configuration error: {tmp_path / 'mnt'} is not mounted"
    line = one_error(run(tmp_path, "umount", str(tmp_path / "nowhere")))
    assert line == f"rhvfs: configuration error: {tmp_path / 'nowhere'} is not mounted"


BLOCK_SIM_ONLY = """
import sys
from rhvfs.sim import SIM_ONLY_MODULES
for name in SIM_ONLY_MODULES:
    sys.modules[name] = None  # import fails as if not installed
from rhvfs.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["sim", "serve", "--state-dir", "sim"],
        ["sim", "--help"],
        ["sim", "fault", "--state-dir", "sim", "clear"],
    ],
)
def test_rhvfs_sim_without_its_extra_says_how_to_get_it(tmp_path: Path, args: list[str]) -> None:
    line = one_error(run(tmp_path, *args, code=BLOCK_SIM_ONLY))
    assert line == (
        "rhvfs sim: the simulator needs cryptography, ovirt_imageio (not installed): "
        "pip install 'rhvfs[sim]'"
    )
    assert not (tmp_path / "sim").exists()


# -- rhvfs gc's report lines ---------------------------------------------------------------


def test_gc_lines_are_classified_by_their_beginning() -> None:
    assert classify("removed snapshot s of VM v (x)") == "action"
    assert classify("would remove snapshot s of VM v (x)") == "action"
    assert classify("cancelled transfer t of session s") == "action"
    assert classify("would cancel transfer t of session s") == "action"
    assert classify("left alone: snapshot s of VM v (made on host h)") == "left_alone"
    assert classify("cannot list snapshots: authentication failed") == "error"
    assert classify("failed to remove snapshot s of VM v: engine error") == "error"
    assert classify("something new") == "error"  # unknown: never reported as done


def _leading_texts(node: ast.expr, verbs: dict[str, list[str]]) -> list[str] | None:
    """The possible beginnings of a string expression (None: not a string literal)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if not isinstance(node, ast.JoinedStr) or not node.values:
        return None
    first = node.values[0]
    rest = "".join(v.value for v in node.values[1:2] if isinstance(v, ast.Constant))
    if isinstance(first, ast.Constant):
        return [str(first.value)]
    if isinstance(first, ast.FormattedValue) and isinstance(first.value, ast.Name):
        return [verb + rest for verb in verbs[first.value.id]]
    raise AssertionError(f"line {node.lineno}: a report line that starts with an expression")


def test_every_report_line_of_collect_garbage_has_a_known_beginning() -> None:
    """Each string ``_gc.py`` appends to its report (or assigns to ``line`` first) starts
    with one of the prefixes ``rhvfs gc`` sorts by, so a failure is never shown as done."""
    source = ROOT / "rhvfs" / "sessions" / "core" / "_gc.py"
    tree = ast.parse(source.read_text())
    verbs = {"verb": ["would remove", "removed"]}  # verb = "would remove" if dry_run else ...
    found: list[str] = []
    for node in ast.walk(tree):
        value: ast.expr | None = None
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "append"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "lines"
        ):
            value = node.args[0]
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "line" for t in node.targets
        ):
            value = node.value
        if value is None or (isinstance(value, ast.Name) and value.id == "line"):
            continue
        texts = _leading_texts(value, verbs)
        assert texts is not None, f"line {node.lineno}: a report line that is not a string"
        found += texts
    assert len(found) >= 10
    known = ACTION_PREFIXES + LEFT_ALONE_PREFIXES + ERROR_PREFIXES
    assert [t for t in found if not t.startswith(known)] == []
    assert {classify(t) for t in found} == {"action", "left_alone", "error"}
