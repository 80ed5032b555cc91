"""``rhvfs --help`` and every command's ``--help``, and ``python -m rhvfs``.

The top-level usage lists exactly the commands ``rhvfs`` dispatches; each of them,
and each action of a command with actions (``ca fetch``, ``sim serve``...), answers
``--help`` with its usage on stdout and exit 0; every option the top-level usage
shows for a command is one that command's ``--help`` lists. ``python -m rhvfs`` is
the same command as ``python -m rhvfs.cli`` (and the ``rhvfs`` script).
Actions are described: ``sim fault --help`` lists each fault with what it does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rhvfs
from rhvfs.cli import COMMANDS, USAGE, main

ROOT = Path(__file__).resolve().parents[2]
# "  ls        print the tree without mounting (rhvfs ls -c SECTION [-R] ...)"
_COMMAND_LINE = re.compile(r"^  (\w+) {2,}(.*)$")


def usage_commands() -> dict[str, str]:
    """Each command of the top-level usage and the synopsis after its name."""
    body = USAGE.split("commands:\n", 1)[1]
    found: dict[str, str] = {}
    for line in body.splitlines():
        match = _COMMAND_LINE.match(line)
        if match:
            synopsis = re.search(rf"\(rhvfs {match.group(1)}\b(.*)\)$", match.group(2))
            found[match.group(1)] = synopsis.group(1) if synopsis else ""
    return found


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``rhvfs ARGV --help`` run in this process: its stdout, once it exited 0."""
    try:
        code = main([*argv, "--help"])
    except SystemExit as e:  # argparse's way of finishing --help
        code = e.code
    out, err = capsys.readouterr()
    assert code in (0, None), (argv, code, err)
    assert err == ""
    assert out.startswith(f"usage: rhvfs {' '.join(argv)}"), out
    return out


def actions(help_text: str) -> list[str]:
    """The actions a command's help lists: ``{serve,fault}`` or an indented ACTION list."""
    braces = re.search(r"^  \{([\w,-]+)\}$", help_text, re.M)
    if braces:
        return braces.group(1).split(",")
    listed = re.search(r"^  ACTION\n((?:    \S.*\n(?: {6,}.*\n)*)+)", help_text, re.M)
    if listed:
        return re.findall(r"^    (\S+)", listed.group(1), re.M)
    return []


def check_actions(argv: list[str], text: str, capsys: pytest.CaptureFixture[str]) -> int:
    """Check ``--help`` of every action (and their actions) under ``argv``; how many."""
    checked = 0
    for action in actions(text):
        checked += 1 + check_actions([*argv, action], help_of([*argv, action], capsys), capsys)
    return checked


def test_the_usage_lists_every_command_and_nothing_else() -> None:
    assert list(usage_commands()) == list(COMMANDS)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_and_action_has_a_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of([command], capsys)
    checked = check_actions([command], text, capsys)
    if command in ("ca", "sim"):
        assert checked, text  # the actions were found, so they were checked


def test_every_fault_of_the_simulator_says_what_it_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = help_of(["sim", "fault"], capsys)
    faults = actions(text)
    assert "engine-error" in faults and "clear" in faults
    for fault in faults:
        assert re.search(rf"^    {re.escape(fault)}(?: +|\n {{8,}})\S", text, re.M), (fault, text)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_the_usage_shows_only_options_the_command_has(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    synopsis = usage_commands()[command]
    words = synopsis.split()
    if words and re.fullmatch(r"[a-z][a-z|-]*", words[0]):
        action = words[0].split("|")[0]  # "fetch -c SECTION", "serve|guest-write|fault ..."
        text = help_of([command, action], capsys)
    else:
        text = help_of([command], capsys)
    options = re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", synopsis)
    assert all(re.search(rf"(?<![\w-]){re.escape(o)}\b", text) for o in options), (
        synopsis,
        text,
    )


def test_help_goes_to_stdout_and_no_command_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (USAGE, "")
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", USAGE)


def python_m(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_python_m_rhvfs_is_the_rhvfs_command() -> None:
    version = python_m("rhvfs", "--version")
    assert (version.returncode, version.stdout, version.stderr) == (
        0,
        f"rhvfs {rhvfs.__version__}\n",
        "",
    )
    for module in ("rhvfs", "rhvfs.cli"):
        listed = python_m(module, "--help")
        assert (listed.returncode, listed.stdout, listed.stderr) == (0, USAGE, "")
        unknown = python_m(module, "no-such-command")
        assert unknown.returncode == 2 and unknown.stdout == ""
        assert unknown.stderr.startswith("rhvfs: unknown command 'no-such-command'")
    ls_help = python_m("rhvfs", "ls", "--help")
    assert ls_help.returncode == 0 and ls_help.stdout.startswith("usage: rhvfs ls")
