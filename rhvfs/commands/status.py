"""``rhvfs status MOUNTPOINT [--watch] [--interval S] [--json]``: a mount's progress.

For people: one screen per look at ``/.rhvfs/status.json`` -- the mount, the
total, then each backup session (a VM's or template's read, full or through
an engine backup) with a progress bar per image, each restore with one per
disk, the sessions waiting for a place, and the newest errors, warnings and
retries. ``--watch`` redraws it every ``--interval`` seconds (on a terminal
in place, with plain ANSI: cursor home and clear; otherwise one frame after
the other) until interrupted or the mount goes away. ``--json`` prints the
status.json document for scripts (with ``--watch``: one document per line).

A path that is not an rhvfs mount (or whose status.json does not answer) is
one line on stderr and a non-zero exit.

Must not: change anything on the mount, or read anything but status.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from rhvfs.commands._mounts import RHVFS_FSTYPE, canonical_mountpoint, mount_at
from rhvfs.commands.mount import _read_status
from rhvfs.errors import ConfigError

#: Newest entries of the mount's errors shown on the screen.
ERRORS_SHOWN = 5
#: ANSI: cursor home, clear to the end of the screen.
CLEAR = "\x1b[H\x1b[J"
BAR_WIDTH = 20


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rhvfs status", description="Show a mount's sessions and their progress."
    )
    p.add_argument("mountpoint")
    p.add_argument("--json", action="store_true", help="print status.json (for scripts)")
    p.add_argument("--watch", action="store_true", help="redraw until interrupted (Ctrl-C)")
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between looks with --watch (default 1)"
    )
    return p


def check_rhvfs_mount(path: str) -> str:
    """``path`` as the canonical mountpoint; ``ConfigError`` unless an rhvfs mount is there."""
    mnt = canonical_mountpoint(path)
    entry = mount_at(mnt)
    if entry is None:
        raise ConfigError(f"{path} is not an rhvfs mount (nothing is mounted there)")
    if entry.fstype != RHVFS_FSTYPE:
        raise ConfigError(f"{path} is not an rhvfs mount ({entry.fstype})")
    return mnt


def read_status(mnt: str) -> dict[str, Any]:
    """The mount's status.json; ``ConfigError`` when it does not answer."""
    try:
        return _read_status(mnt)
    except TimeoutError as e:
        raise ConfigError(f"{mnt}: the mount does not answer ({e})") from None
    except OSError as e:
        raise ConfigError(f"{mnt} is not a live rhvfs mount: {e.strerror or e}") from None
    except ValueError as e:
        raise ConfigError(f"{mnt}: status.json is not valid JSON: {e}") from None


def cmd_status(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    if not args.interval > 0:
        raise ConfigError("--interval must be a positive number of seconds")
    mnt = check_rhvfs_mount(args.mountpoint)
    out = sys.stdout
    if not args.watch:
        status = read_status(mnt)
        if args.json:
            print(json.dumps(status, indent=2, sort_keys=True), file=out)
        else:
            out.write("\n".join(render(status, width=_width())) + "\n")
        return 0
    return watch(mnt, interval_s=args.interval, as_json=args.json, out=out)


def watch(mnt: str, *, interval_s: float, as_json: bool, out: TextIO) -> int:
    """Look at the mount every ``interval_s`` seconds until interrupted; 1 when it went away."""
    tty = out.isatty()
    try:
        while True:
            try:
                status = read_status(mnt)
            except ConfigError as e:
                print(f"rhvfs: {e}", file=sys.stderr)
                return 1
            if as_json:
                out.write(json.dumps(status, sort_keys=True) + "\n")
            else:
                frame = "\n".join(render(status, width=_width(), now=time.time()))
                out.write((CLEAR if tty else "") + frame + "\n" + ("" if tty else "\n"))
            out.flush()
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return 0


def _width() -> int:
    return max(60, shutil.get_terminal_size((100, 24)).columns)


# -- rendering (pure: a status.json document in, lines out) ----------------------------------


def human_bytes(n: float) -> str:
    """``1.5 GiB``, ``512.0 MiB``, ``900 B``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    value = float(n)
    for unit in units:
        if abs(value) < 1024 or unit == units[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_eta(seconds: float | None) -> str:
    """``ETA 1:02:03`` / ``ETA 4:05``; ``ETA --:--`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "ETA --:--"
    s = int(math.ceil(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"ETA {h}:{m:02d}:{sec:02d}" if h else f"ETA {m}:{sec:02d}"


def bar(percent: float, width: int = BAR_WIDTH) -> str:
    """``[########------]`` filled to ``percent`` (0..100)."""
    filled = int(round(width * max(0.0, min(percent, 100.0)) / 100.0))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress_line(progress: Mapping[str, Any], *, indent: str = "  ") -> str:
    """``[####----]  47.6%  160.0 MiB / 1.0 GiB  69.1 MiB/s (avg 67.7 MiB/s)  ETA 0:13``."""
    pct = float(progress.get("percent", 0.0))
    rate = human_bytes(progress.get("rate_bytes_per_s", 0)) + "/s"
    avg = human_bytes(progress.get("average_rate_bytes_per_s", 0)) + "/s"
    return (
        f"{indent}{bar(pct)} {pct:5.1f}%  {human_bytes(progress.get('bytes_done', 0)):>9} / "
        f"{human_bytes(progress.get('size', 0)):<9}  {rate:>11} (avg {avg})  "
        f"{human_eta(progress.get('eta_s'))}"
    )


def progress_lines(
    label: str, progress: Mapping[str, Any], *, width: int, indent: str = "  ", state: str = ""
) -> list[str]:
    """Two lines: ``label  state`` (cut to ``width``), then the bar line below it."""
    head = f"{indent}{label}" + (f"  {state}" if state else "")
    if len(head) > width:
        head = head[: width - 1] + "~"
    return [head, progress_line(progress, indent=indent + "  ")]


def _clock(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return iso


def _session_lines(s: Mapping[str, Any], *, width: int) -> list[str]:
    owner = s.get("owner") or {}
    pit = s.get("point_in_time") or {}
    kind = s.get("set_type") or "full"
    method = pit.get("method") or ("backup" if "set_id" in s else "snapshot")
    head = (
        f"{owner.get('kind', '?')} {owner.get('name', '?')}: {kind} set via {method}, "
        f"{s.get('phase', s.get('state', '?'))}"
    )
    if s.get("queue_position"):
        head += f" (queue position {s['queue_position']})"
    read_id = pit.get("read_id") or s.get("read_id")
    if read_id:
        head += f", read {str(read_id)[:8]}"
    if pit.get("configuration_time") or pit.get("taken"):
        head += f", point in time {_clock(pit.get('configuration_time') or pit.get('taken'))}"
    lines = [head]
    if "progress" in s:
        lines.append(progress_line(s["progress"], indent="  "))
    for f in s.get("files", []):
        lines += progress_lines(
            f["name"], f["progress"], width=width, indent="  ", state=f.get("state", "")
        )
    if s.get("last_error"):
        lines.append(f"  last error: {s['last_error']}")
    return lines


def render(status: Mapping[str, Any], *, width: int = 100, now: float | None = None) -> list[str]:
    """The screen for one status.json document."""
    sessions = status.get("sessions") or {}
    incremental = sessions.get("incremental") or {}
    totals = sessions.get("totals") or {}
    uptime = status.get("uptime_s")
    lines = [
        f"rhvfs {status.get('mountpoint', '?')}  engine {status.get('engine_url', '?')}  "
        f"pid {status.get('pid', '?')}  up {human_eta(uptime).removeprefix('ETA ')}  "
        f"open files {status.get('open_files', 0)}"
        + ("  STOPPING" if status.get("stopping") else ""),
    ]
    if now is not None:
        lines[0] += f"  at {time.strftime('%H:%M:%S', time.localtime(now))}"
    lines.append(
        f"backups: {totals.get('sessions_active', 0)} active, "
        f"{human_bytes(totals.get('bytes_read', 0))} read since mount"
    )
    if totals.get("progress") and totals.get("sessions_active"):
        lines += progress_lines("total", totals["progress"], width=width, indent="")
    live = list(sessions.get("sessions", [])) + list(incremental.get("sessions", []))
    for s in live:
        lines.append("")
        lines += _session_lines(s, width=width)
    for q in sessions.get("queued", []):
        owner = q.get("owner") or {}
        lines.append(f"queued: {owner.get('kind', '')} {owner.get('name', q)}")
    restores = status.get("restores") or {}
    for name, r in restores.items():
        lines.append("")
        lines.append(
            f"restore {name}: {r.get('phase', '?')}"
            + (f", vm {r['vm_id']}" if r.get("vm_id") else "")
        )
        if r.get("error"):
            lines.append(f"  error: {r['error']}")
        if "progress" in r:
            lines.append(progress_line(r["progress"], indent="  "))
        for d in r.get("disks", []):
            lines += progress_lines(
                str(d.get("alias") or d.get("file")),
                d["progress"],
                width=width,
                indent="  ",
                state=d.get("state", ""),
            )
    cleanups = sessions.get("pending_cleanups") or []
    if cleanups:
        lines.append("")
        lines.append(f"cleanups retried in the background: {len(cleanups)}")
    errors = list(status.get("errors") or []) or list(sessions.get("errors") or [])
    if errors:
        lines.append("")
        counts = status.get("error_counts") or {}
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        lines.append("recent errors" + (f" ({summary} since mount)" if summary else "") + ":")
        for e in errors[-ERRORS_SHOWN:]:
            what = str(e.get("what") or e.get("owner") or "")
            message = str(e.get("message", ""))
            for prefix in (what, what.rpartition(" ")[2]):  # "fs lookup": "lookup: ..."
                if prefix and message.startswith(f"{prefix}: "):
                    message = message.removeprefix(f"{prefix}: ")  # said once is enough
                    break
            text = f"  {_clock(e.get('time'))} {e.get('level', 'error')} {what}: {message}"
            lines.append(text if len(text) <= width else text[: width - 1] + "~")
    return lines
