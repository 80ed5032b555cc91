"""Apply a service unit's process sandbox the way systemd does, then exec a command.

``python -m tests.support.sandbox SETTINGS_JSON -- ARGV...``: SETTINGS_JSON holds the
unit's [Service] settings (a list of [key, value]). Applied, in the kernel
mechanisms systemd itself uses (systemd.exec(5)):

- ``UMask=``;
- ``CapabilityBoundingSet=`` (every other capability dropped from the bounding
  set, so root's command gets only those);
- ``NoNewPrivileges=`` (``PR_SET_NO_NEW_PRIVS``);
- ``MemoryDenyWriteExecute=`` (``PR_SET_MDWE``, as systemd 254+ does; older
  systemd has a seccomp filter to the same effect);
- ``SystemCallFilter=~GROUPS`` with ``SystemCallErrorNumber=`` (seccomp through
  libseccomp; each group's system calls as ``systemd-analyze syscall-filter``
  lists them);
- ``RestrictAddressFamilies=`` (seccomp: ``socket()`` of any other family fails
  with EAFNOSUPPORT);
- ``RestrictNamespaces=yes`` (seccomp: ``unshare`` and ``setns`` fail; systemd also
  filters ``clone`` flags, left out here).

Not emulated (cgroup or namespace set-up of the service manager):
``DevicePolicy=``/``DeviceAllow=``/``ProtectClock=``'s device rule,
``ProtectHostname=``, ``LockPersonality=``, ``RestrictRealtime=``,
``RestrictSUIDSGID=``, ``SystemCallArchitectures=``.

Must not: run anything but the given command, or loosen what it is asked to apply.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
AF_MAX = 46


def SCMP_ACT_ERRNO(number: int) -> int:  # noqa: N802 (libseccomp's macro name)
    return 0x00050000 | (number & 0xFFFF)


class ArgCmp(ctypes.Structure):
    """libseccomp's ``struct scmp_arg_cmp``."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def capability_names() -> dict[str, int]:
    """``CAP_NAME`` -> number, for the capabilities this kernel knows."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    names = (
        "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
        "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
        "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
        "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
        "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF "
        "CHECKPOINT_RESTORE"
    ).split()
    return {f"CAP_{n}": i for i, n in enumerate(names) if i <= last}


def syscalls_of(groups: Iterable[str]) -> set[str]:
    """The system calls of systemd's ``@groups`` (nested groups followed)."""
    out: set[str] = set()
    todo, seen = list(groups), set()
    while todo:
        group = todo.pop()
        if group in seen:
            continue
        seen.add(group)
        listing = subprocess.run(
            ["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        for line in listing[1:]:
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            if name.startswith("@"):
                todo.append(name)
            else:
                out.add(name)
    return out


def _family_numbers(names: Sequence[str]) -> set[int]:
    return {int(getattr(socket, name)) for name in names}


def apply(settings: Sequence[tuple[str, str]]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    values: dict[str, list[str]] = {}
    for key, value in settings:
        values.setdefault(key, []).append(value)

    def last(key: str) -> str | None:
        return values[key][-1] if values.get(key) else None

    if last("UMask"):
        os.umask(int(last("UMask") or "0", 8))
    if values.get("CapabilityBoundingSet"):
        keep = {n for v in values["CapabilityBoundingSet"] for n in v.split()}
        for name, number in capability_names().items():
            if name not in keep and libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), f"dropping {name}")
    if last("NoNewPrivileges") == "yes" and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if last("MemoryDenyWriteExecute") == "yes":
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_MDWE")

    seccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp)
    ]  # fmt: skip
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    ctx = seccomp.seccomp_init(SCMP_ACT_ALLOW)

    def deny(name: str, number: int, compare: ArgCmp | None = None) -> None:
        nr = seccomp.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # not a system call of this architecture
        array = (ArgCmp * 1)(compare) if compare is not None else None
        rc = seccomp.seccomp_rule_add_array(
            ctx, SCMP_ACT_ERRNO(number), nr, 1 if array else 0, array
        )
        if rc < 0:
            raise OSError(-rc, f"seccomp rule for {name}")

    err_name = last("SystemCallErrorNumber") or "EPERM"
    err_number = int(getattr(errno, err_name))
    for value in values.get("SystemCallFilter", []):
        if not value.startswith("~"):
            raise ValueError(f"only deny lists are emulated: SystemCallFilter={value}")
        names = value[1:].split()
        for call in syscalls_of(g for g in names if g.startswith("@")) | {
            n for n in names if not n.startswith("@")
        }:
            deny(call, err_number)
    if values.get("RestrictAddressFamilies"):
        allowed = _family_numbers([n for v in values["RestrictAddressFamilies"] for n in v.split()])
        for family in range(AF_MAX):
            if family not in allowed:
                deny("socket", errno.EAFNOSUPPORT, ArgCmp(0, SCMP_CMP_EQ, family, 0))
    if last("RestrictNamespaces") == "yes":
        deny("unshare", errno.EPERM)
        deny("setns", errno.EPERM)
    if seccomp.seccomp_load(ctx) != 0:
        raise OSError(ctypes.get_errno(), "seccomp_load")


def main(argv: Sequence[str]) -> None:
    settings = [tuple(pair) for pair in json.loads(argv[0])]
    if argv[1] != "--":
        raise SystemExit("usage: python -m tests.support.sandbox SETTINGS_JSON -- ARGV...")
    apply(settings)  # type: ignore[arg-type]
    os.execvp(argv[2], list(argv[2:]))


if __name__ == "__main__":
    main(sys.argv[1:])
