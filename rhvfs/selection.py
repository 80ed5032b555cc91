"""Which VMs a mount shows: name patterns, tags, clusters, data centers and a shard.

``VmSelection`` is the mount's selection (config keys ``vms``, ``exclude_vms``,
``tag``, ``cluster``, ``datacenter``, ``shard``; ``rhvfs mount --vms REGEX
--exclude-vms REGEX --tag T --cluster C --datacenter D --shard I/N``). A VM is
selected when all the given criteria hold:

- ``vms``: its name matches the regular expression as a whole (``re.fullmatch``;
  ``web.*`` selects web01, not myweb);
- ``exclude_vms``: its name does not match this one (as a whole);
- ``tag`` (repeatable): it carries at least one of these tags (by name, the
  tag itself, not a child tag);
- ``cluster`` / ``datacenter`` (repeatable): it is in one of these clusters /
  in a cluster of one of these data centers (by name);
- ``shard I/N``: ``int(sha256(vm id)) mod N == I``. Stable across mounts,
  engines' orders and renames, so the N mounts ``0/N`` ... ``N-1/N`` with
  otherwise equal selections partition the VMs exactly.

The selection is applied where the VFS lists VMs (``rhvfs.vfs.inventory``), so
it holds everywhere a VM appears: ``vms/``, ``tags/<t>/``,
``clusters/<c>/vms/``, ``datacenters/.../vms/``, ``hosts/<h>/``. Templates are
not VMs and are always shown (back them up from one mount only); ``restore/``
is not limited (a restore may create or overwrite any VM the account may).

Must not: call the engine (the inventory hands it the VMs, clusters, data
centers and tag members it needs) or import anything of rhvfs but errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

from rhvfs.errors import ConfigError


class VmLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def cluster_id(self) -> str | None: ...


class ClusterLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def datacenter_id(self) -> str | None: ...


class Named(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...


V = TypeVar("V", bound=VmLike)


def shard_of(vm_id: str, shards: int) -> int:
    """The shard (0 .. shards-1) of the VM with id ``vm_id``: sha256 of the id, mod ``shards``."""
    return int.from_bytes(hashlib.sha256(vm_id.encode("utf-8")).digest(), "big") % shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)`` with 0 <= I < N; ``ConfigError`` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None:
        raise ConfigError(f"shard must be I/N (e.g. 0/2), not {text!r}")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or index >= count:
        raise ConfigError(f"shard {text!r}: need N >= 1 and 0 <= I < N")
    return index, count


def _pattern(key: str, text: str | None) -> re.Pattern[str] | None:
    if text is None or text == "":
        return None
    try:
        return re.compile(text)
    except re.error as e:
        raise ConfigError(f"{key}: not a regular expression ({e}): {text!r}") from None


@dataclasses.dataclass(frozen=True)
class VmSelection:
    """The mount's selection of VMs (see the module docstring); empty selects every VM."""

    include: re.Pattern[str] | None = None
    exclude: re.Pattern[str] | None = None
    tags: frozenset[str] = frozenset()
    clusters: frozenset[str] = frozenset()
    datacenters: frozenset[str] = frozenset()
    shard: tuple[int, int] | None = None

    @classmethod
    def build(
        cls,
        *,
        vms: str | None = None,
        exclude_vms: str | None = None,
        tag: Iterable[str] = (),
        cluster: Iterable[str] = (),
        datacenter: Iterable[str] = (),
        shard: str | None = None,
    ) -> VmSelection:
        """From the config keys' values; ``ConfigError`` for a bad pattern or shard."""
        return cls(
            include=_pattern("vms", vms),
            exclude=_pattern("exclude_vms", exclude_vms),
            tags=frozenset(tag),
            clusters=frozenset(cluster),
            datacenters=frozenset(datacenter),
            shard=parse_shard(shard) if shard else None,
        )

    @property
    def everything(self) -> bool:
        return self == VmSelection()

    @property
    def needs_clusters(self) -> bool:
        """Whether ``select`` needs the clusters (and data centers)."""
        return bool(self.clusters or self.datacenters)

    def select(
        self,
        vms: Sequence[V],
        *,
        clusters: Sequence[ClusterLike] = (),
        datacenters: Sequence[Named] = (),
        tagged: Iterable[str] = (),
    ) -> list[V]:
        """The selected ones of ``vms``, in their order.

        ``clusters`` and ``datacenters``: the engine's (needed with ``cluster`` /
        ``datacenter``); ``tagged``: the ids of the VMs carrying one of ``tags``.
        """
        if self.everything:
            return list(vms)
        in_clusters: set[str] | None = None
        if self.needs_clusters:
            dc_ids = {d.id for d in datacenters if d.name in self.datacenters}
            in_clusters = {
                c.id
                for c in clusters
                if (not self.clusters or c.name in self.clusters)
                and (not self.datacenters or c.datacenter_id in dc_ids)
            }
        tagged_ids = set(tagged) if self.tags else None
        return [
            vm
            for vm in vms
            if (self.include is None or self.include.fullmatch(vm.name))
            and not (self.exclude is not None and self.exclude.fullmatch(vm.name))
            and (in_clusters is None or vm.cluster_id in in_clusters)
            and (tagged_ids is None or vm.id in tagged_ids)
            and (self.shard is None or shard_of(vm.id, self.shard[1]) == self.shard[0])
        ]

    def describe(self) -> dict[str, Any]:
        """For ``status.json``: the criteria in force (empty: every VM)."""
        doc: dict[str, Any] = {}
        if self.include is not None:
            doc["vms"] = self.include.pattern
        if self.exclude is not None:
            doc["exclude_vms"] = self.exclude.pattern
        for key, names in (
            ("tag", self.tags),
            ("cluster", self.clusters),
            ("datacenter", self.datacenters),
        ):
            if names:
                doc[key] = sorted(names)
        if self.shard is not None:
            doc["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        return doc
