"""Engine fault injection: 5xx answers or delays on calls matching `METHOD path-glob`,
and delays of the engine's long storage operations.

Owns the list of active engine faults and their remaining counts. The HTTP
layer asks `match()` before dispatching each request; the background steps
that copy disks or merge snapshots ask `storage_delay()` before their storage
work (tests use it to make that work slow, deterministically). Data-plane
faults (dropped imageio connections, paused transfers, expired tickets) are
applied directly by the admin endpoint (`api_admin`), not stored here.
"""

from __future__ import annotations

import builtins
import dataclasses
import fnmatch
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EngineFault:
    """`method` "*" or a verb; `path_glob` matched against the request path
    (e.g. `/ovirt-engine/api/imagetransfers/*`); `status` 0 means only delay;
    `times` < 0 means forever."""

    method: str
    path_glob: str
    status: int = 500
    delay_s: float = 0.0
    times: int = 1

    def matches(self, method: str, path: str) -> bool:
        method_ok = self.method == "*" or self.method.upper() == method.upper()
        return method_ok and fnmatch.fnmatchcase(path, self.path_glob)


@dataclasses.dataclass
class StorageDelay:
    """The next `times` storage operations of kind `op` ("copy": a disk copied for a
    new VM or template; "merge": a snapshot merged away) first sleep `delay_s`
    seconds, without holding the state lock; `times` < 0 means forever."""

    op: str
    delay_s: float
    times: int = 1


STORAGE_OPS = ("copy", "merge")


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[EngineFault] = []
        self._storage: list[StorageDelay] = []

    def add(self, fault: EngineFault) -> None:
        with self._lock:
            self._faults.append(fault)
        log.info("engine fault added: %s", fault)

    def add_storage_delay(self, delay: StorageDelay) -> None:
        if delay.op not in STORAGE_OPS:
            raise ValueError(f"unknown storage operation {delay.op!r}")
        with self._lock:
            self._storage.append(delay)
        log.info("storage delay added: %s", delay)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._storage.clear()

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dataclasses.asdict(f) for f in self._faults]

    def list_storage(self) -> builtins.list[dict[str, Any]]:
        with self._lock:
            return [dataclasses.asdict(d) for d in self._storage]

    def storage_delay(self, op: str) -> float:
        """Seconds the next `op` must wait (0.0 without a matching delay); counts down."""
        with self._lock:
            for delay in self._storage:
                if delay.op == op:
                    if delay.times > 0:
                        delay.times -= 1
                        if delay.times == 0:
                            self._storage.remove(delay)
                    log.info("delaying storage %s by %.1f s", op, delay.delay_s)
                    return delay.delay_s
        return 0.0

    def match(self, method: str, path: str) -> EngineFault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.times > 0:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    log.info("injecting fault on %s %s: %s", method, path, fault)
                    return fault
        return None
