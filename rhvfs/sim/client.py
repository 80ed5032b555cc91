"""`SimAdmin`: the Python API for a running `rhvfs sim serve` (tests, scripts, the CLI).

Owns the client side of the admin endpoints (`/rhvfs-sim/...`), found through
`<state-dir>/serve.json` (port, admin token) and verified with the sim's CA.
Blocking, stdlib only (`http.client`).

    admin = SimAdmin(state_dir)
    admin.guest_write(vm="myvm", disk="mydisk", offset=1 << 20, size=65536, pattern=0xAB)
    admin.disk_sha256(disk_id)                       # active volume
    admin.disk_sha256(disk_id, image_id=vol_id)      # a snapshot's volume
    admin.add_fault("engine-error", method="POST", path="/ovirt-engine/api/imagetransfers", times=1)
    admin.add_fault("engine-delay", path="/ovirt-engine/api/vms*", delay=2.0)
    admin.add_fault("drop-imageio", after_bytes=1 << 20, times=1)
    admin.add_fault("pause-transfer", transfer=transfer_id)
    admin.add_fault("expire-ticket", transfer=transfer_id)
    admin.add_fault("storage-domain", name="mydata", status="maintenance", capacity_bytes=2**30)
    admin.clear_faults()
    admin.credentials()                              # every ticket id and SSO token issued
    admin.auth_stats()                               # SSO tokens issued / expired
    admin.engine_calls()                             # {("GET", "/vms/{vm}"): 3, ...}
    admin.reset_engine_calls()                       # zero them (returns the old counts)
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlencode


class SimAdminError(Exception):
    """The admin endpoint refused a request; `status` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class SimAdmin:
    def __init__(self, state_dir: Path | str, *, timeout_s: float = 120.0) -> None:
        self.state_dir = Path(state_dir)
        info = json.loads((self.state_dir / "serve.json").read_text())
        self.port = int(info["engine_port"])
        self.imageio_port = int(info["imageio_port"])
        self._token = str(info["admin_token"])
        self._ctx = ssl.create_default_context(cafile=str(info["cafile"]))
        self._timeout_s = timeout_s

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        conn = http.client.HTTPSConnection(
            "localhost", self.port, context=self._ctx, timeout=self._timeout_s
        )
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
            conn.request(method, "/rhvfs-sim" + path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            if resp.status >= 300:
                raise SimAdminError(resp.status, payload.decode(errors="replace"))
            return json.loads(payload) if payload else None
        finally:
            conn.close()

    def guest_write(
        self,
        *,
        disk: str,
        offset: int,
        vm: str | None = None,
        data: bytes | None = None,
        size: int | None = None,
        pattern: int | None = None,
    ) -> str:
        """Write into the disk's active volume as its guest would; returns that volume id.

        `disk` is an alias (unique within `vm`) or a disk id; give `data`, or
        `size` + `pattern` (a byte value; 0 writes zeroes)."""
        body: dict[str, Any] = {"disk": disk, "offset": offset}
        if vm is not None:
            body["vm"] = vm
        if data is not None:
            body["data"] = base64.b64encode(data).decode()
        else:
            body["size"] = size
            body["pattern"] = pattern
        return str(self._call("POST", "/guest-write", body)["image_id"])

    def disk_sha256(self, disk_id: str, image_id: str | None = None) -> str:
        """sha256 of the guest-visible bytes of the disk's active volume (or of `image_id`)."""
        query = {"disk": disk_id}
        if image_id is not None:
            query["image"] = image_id
        return str(self._call("GET", "/volume-sha256?" + urlencode(query))["sha256"])

    def add_fault(self, kind: str, **params: Any) -> None:
        """kinds: engine-error (method, path, status, times), engine-delay (method, path,
        delay, times), drop-imageio (after_bytes, times), pause-transfer (transfer),
        expire-ticket (transfer), revoke-tokens, storage-domain (name, status
        e.g. "maintenance"/"active", capacity_bytes), invalidate-checkpoint
        (checkpoint: state becomes invalid), break-checkpoint (checkpoint: its
        bitmaps vanish, the record stays; a backup from it fails), storage-delay
        (op "copy" or "merge", delay, times: the next disk copies for new VMs or
        templates, or snapshot merges, first sleep `delay` seconds, without the
        engine's state lock)."""
        self._call("POST", "/faults", {"kind": kind, **params})

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def auth_stats(self) -> dict[str, Any]:
        """SSO counters: `issued` tokens, requests refused because their token had
        `expired`, `live` tokens, and the `token_ttl_s` / `token_lifetime_s` in force."""
        result: dict[str, Any] = self._call("GET", "/auth")
        return result

    def engine_calls(self) -> dict[tuple[str, str], int]:
        """Engine requests so far by (method, path template): API routes relative to
        the API root (``("GET", "/vms/{vm}/nics")``), SSO/CA endpoints by path,
        unrouted API paths as ``"(no route)"``. Admin calls are not counted."""
        return _calls(self._call("GET", "/calls"))

    def reset_engine_calls(self) -> dict[tuple[str, str], int]:
        """Zero the engine-call counter; returns the counts it had."""
        return _calls(self._call("DELETE", "/calls"))

    def transfers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/transfers")
        return result

    def credentials(self) -> dict[str, list[str]]:
        """``{"tickets": [...], "tokens": [...]}``: every imageio ticket id and SSO token
        the simulator issued so far (finished transfers and revoked tokens included)."""
        result: dict[str, list[str]] = self._call("GET", "/credentials")
        return result


def _calls(doc: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(str(c["method"]), str(c["path"])): int(c["count"]) for c in doc["calls"]}
