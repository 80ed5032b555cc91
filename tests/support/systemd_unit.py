"""Run a systemd service unit's command lines the way systemd would, without systemd.

``ServiceUnit.load(path, instance=..., relocate={...})`` reads a unit file (repeated
keys kept in order, backslash continuations joined), expands the specifiers the
rhvfs unit uses (``%i``, ``%I``, ``%d``, ``%%``) and moves absolute paths of the
unit under a test directory (``relocate``: prefix -> replacement). ``start()``
prepares what systemd prepares (``StateDirectory=`` with its mode, the
``LoadCredential=`` files copied into a credentials directory,
``$CREDENTIALS_DIRECTORY``, ``$NOTIFY_SOCKET``), runs every ``ExecStartPre=``
(a ``-`` prefix ignores failure), then ``ExecStart=`` as the main process, and
returns once it sent ``READY=1`` (``Type=notify``). ``stop(env)`` runs
``ExecStop=`` with the environment systemd gives it (``$SERVICE_RESULT``,
``$EXIT_CODE``, ``$EXIT_STATUS``, ``$MAINPID`` only while the main process
lives: systemd.exec(5), systemd.service(5)). Every command runs inside the unit's
sandbox settings as far as ``tests.support.sandbox`` can apply them without systemd
(capabilities, no-new-privileges, W^X memory, system call and socket filters).

Command lines are split like a shell word list (``shlex``), which is what
systemd's quoting amounts to for the lines of these units; ``$VAR`` is not
expanded (the rhvfs unit uses none).

Must not: decide what a test checks; it only runs commands and reports results.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

#: ExecXxx= prefixes systemd knows (systemd.service(5), "Command lines").
_PREFIXES = "-@:+!"


class MainExited(Exception):
    """ExecStart='s process ended before READY=1 (systemd: the start failed)."""

    def __init__(self, returncode: int) -> None:
        super().__init__(f"the main process exited with {returncode} before READY=1")
        self.returncode = returncode


@dataclasses.dataclass(frozen=True)
class Command:
    """One command line: its argv, whether a failure is ignored (``-``) and whether it runs
    outside the sandbox (``+``)."""

    argv: tuple[str, ...]
    ignore_failure: bool
    privileged: bool = False


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file -> their (key, value) pairs in order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ValueError(f"not a unit file line: {raw!r}")
        current.append((key.strip(), value.strip()))
    return sections


def expand(value: str, specifiers: Mapping[str, str]) -> str:
    """Replace ``%x`` specifiers (``%%`` is a literal ``%``); an unknown one is an error."""

    def one(match: re.Match[str]) -> str:
        letter = match.group(1)
        if letter == "%":
            return "%"
        if letter not in specifiers:
            raise ValueError(f"specifier %{letter} is not supported here")
        return specifiers[letter]

    return re.sub(r"%(.)", one, value)


@dataclasses.dataclass
class ServiceUnit:
    """A service unit's [Service] settings, expanded for one instance and relocated."""

    settings: list[tuple[str, str]]
    credentials_dir: Path
    state_root: Path
    notify_path: Path
    main: subprocess.Popen[bytes] | None = None
    #: Run the commands under the unit's sandbox settings (``tests.support.sandbox``).
    sandboxed: bool = True
    log: list[str] = dataclasses.field(default_factory=list)

    @property
    def journal(self) -> Path:
        """What the main processes wrote on stdout/stderr (journald's part under systemd)."""
        return self.notify_path.with_name("journal.log")

    @classmethod
    def load(
        cls, path: Path, *, instance: str, relocate: Mapping[str, str], work: Path
    ) -> ServiceUnit:
        """``relocate`` maps absolute path prefixes of the unit to test paths; ``work`` holds
        the credentials directory, the state root and the notify socket."""
        credentials = work / "credentials"
        specifiers = {"i": instance, "I": instance, "d": str(credentials)}
        settings = []
        for key, value in parse_unit(path.read_text()).get("Service", []):
            text = expand(value, specifiers)
            for old, new in relocate.items():
                text = text.replace(old, new)
            settings.append((key, text))
        return cls(settings, credentials, work / "state-root", work / "notify")

    def values(self, key: str) -> list[str]:
        return [v for k, v in self.settings if k == key]

    def commands(self, key: str) -> list[Command]:
        out = []
        for value in self.values(key):
            if not value:
                out = []  # an empty assignment resets the list
                continue
            i = 0
            while i < len(value) and value[i] in _PREFIXES:
                i += 1
            flags, rest = value[:i], value[i:]
            out.append(Command(tuple(shlex.split(rest)), "-" in flags, "+" in flags))
        return out

    def _prepare(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for name in self.values("StateDirectory"):
            mode = int((self.values("StateDirectoryMode") or ["0755"])[-1], 8)
            target = self.state_root / name
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(mode)
        credentials = self.values("LoadCredential")
        if credentials:
            self.credentials_dir.mkdir(mode=0o700, exist_ok=True)
            for entry in credentials:
                name, _, source = entry.partition(":")
                target = self.credentials_dir / name
                shutil.copyfile(source, target)
                target.chmod(0o400)  # systemd: read-only, for the service's user only
            env["CREDENTIALS_DIRECTORY"] = str(self.credentials_dir)
        return env

    def argv(self, command: Command) -> list[str]:
        """What is executed for ``command``: inside the sandbox unless ``+`` or unsandboxed."""
        if command.privileged or not self.sandboxed:
            return list(command.argv)
        settings = json.dumps(self.settings)
        return [sys.executable, "-m", "tests.support.sandbox", settings, "--", *command.argv]

    def run(self, command: Command, env: Mapping[str, str], timeout_s: float) -> int:
        result = subprocess.run(
            self.argv(command),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        self.log.append(f"$ {shlex.join(command.argv)} -> {result.returncode}\n{result.stderr}")
        if result.returncode != 0 and not command.ignore_failure:
            raise AssertionError(f"{shlex.join(command.argv)} failed:\n{result.stderr}")
        return result.returncode

    def start(self, base_env: Mapping[str, str], *, timeout_s: float = 120.0) -> int:
        """ExecStartPre=, then ExecStart= until READY=1; the main process's pid."""
        self.start_pre(base_env, timeout_s=timeout_s)
        return self.start_main(base_env, timeout_s=timeout_s)

    def start_pre(self, base_env: Mapping[str, str], *, timeout_s: float = 120.0) -> None:
        """Every ExecStartPre= (with what systemd prepares first)."""
        env = {**base_env, **self._prepare()}
        for command in self.commands("ExecStartPre"):
            self.run(command, env, timeout_s)

    def start_main(self, base_env: Mapping[str, str], *, timeout_s: float = 120.0) -> int:
        """ExecStart= until it sends READY=1; the main process's pid."""
        env = {**base_env, **self._prepare()}
        (main,) = self.commands("ExecStart")
        self.notify_path.unlink(missing_ok=True)
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
            open(self.journal, "ab") as journal,
        ):
            notify.bind(str(self.notify_path))
            notify.settimeout(0.5)
            self.main = subprocess.Popen(
                self.argv(main),
                env={**env, "NOTIFY_SOCKET": str(self.notify_path)},
                stdin=subprocess.DEVNULL,
                stdout=journal,
                stderr=journal,
            )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    message = notify.recv(4096).decode()
                except TimeoutError:
                    if self.main.poll() is not None:
                        raise MainExited(self.main.returncode) from None
                    continue
                if "READY=1" in message.splitlines():
                    return self.main.pid
            self.main.kill()
            raise AssertionError(f"no READY=1 within {timeout_s} s")

    def stop(self, base_env: Mapping[str, str], *, timeout_s: float = 300.0) -> list[int]:
        """ExecStop= with ``base_env`` (systemd's variables added by the caller); exit codes."""
        env = {**base_env, **self._prepare()}
        return [self.run(c, env, timeout_s) for c in self.commands("ExecStop")]
