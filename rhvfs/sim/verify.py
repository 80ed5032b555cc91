"""Check a backup set against the simulator: ``python -m rhvfs.sim.verify``.

For every disk in the set's ``manifest.json`` it compares the sha256 of the
image file with the simulator's own reading of that disk (through the running
``serve`` process's admin endpoint, qemu-img on the volume chain). Used by the
README demo; it only reads. The disk must not have changed since the backup
(the demo's VM gets no guest writes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from rhvfs.sim.client import SimAdmin

CHUNK = 4 * 1024 * 1024


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify_set(state_dir: Path, set_dir: Path) -> list[str]:
    """Return one line per mismatch (empty when every image matches)."""
    manifest = json.loads((set_dir / "manifest.json").read_text())
    admin = SimAdmin(state_dir)
    problems = []
    for disk in manifest["disks"]:
        path = set_dir / disk["file"]
        if not path.exists():
            problems.append(f"{disk['alias']}: {path.name} is missing")
            continue
        got = file_sha256(path)
        want = admin.disk_sha256(disk["id"])
        status = "ok" if got == want else "MISMATCH"
        print(f"{status:8} {disk['alias']:20} {disk['size']:>12} bytes  sha256 {got[:16]}…")
        if got != want:
            problems.append(f"{disk['alias']}: sha256 {got} != simulator {want}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rhvfs.sim.verify", description=__doc__)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--set", required=True, type=Path, dest="set_dir")
    args = parser.parse_args(argv)
    problems = verify_set(args.state_dir, args.set_dir)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
