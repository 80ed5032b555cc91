"""Which vNIC profile each restored NIC gets, on this engine or another one.

Owns the ``network_map`` option's syntax (``parse_network_map``) and the
choice of a target profile per NIC of the set (``choose_profiles``), from the
options and what the target engine has: its vNIC profiles and the networks
attached to the target cluster (with their usages, to find the cluster's
management network). A set records each NIC's profile id and name and its
network's name (``manifest.json``), so a NIC finds its place on another
engine by name. Per NIC, the first that applies:

1. a ``network_map`` pair whose source is the NIC's network or profile (name,
   or the profile's id): its target profile;
2. ``vnic_profile``: that one profile, for every NIC;
3. automatic (the default, also ``network_map = auto``): the set's profile
   when its id exists on the target cluster's networks (a restore into the
   same engine keeps exactly its profiles); else the target network of the
   same name, and of its profiles the one named like the set's profile, else
   the one named like the network, else the first by name; else (with a warning line) the target
   cluster's management network's profile; else (warning) no network at all,
   as the engine's own import does with a network it does not have.

A target named in the options is a profile id, a profile name (unique on
the cluster's networks, or the one whose network has the same name), a
network name (its profile of the same name, else its first by name), or
``NETWORK/PROFILE``. One that does not exist, is ambiguous, or a
``network_map`` source that matches no NIC of the set is a
``RestoreInputError`` naming what exists, raised before anything is created.

Must not: talk to the engine (callers pass its profiles and networks in);
know the options file format beyond the ``network_map`` value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rhvfs.backupset import ManifestNic
from rhvfs.engine.types import Network, VnicProfile
from rhvfs.errors import RestoreError, RestoreInputError

#: ``network_map`` pairs: (source network or profile, target profile), in the file's order.
NetworkMap = tuple[tuple[str, str], ...]


def parse_network_map(value: str) -> NetworkMap:
    """``auto`` (or empty: the default) -> ``()``; else ``SOURCE:TARGET, ...`` pairs.
    ``RestoreError`` for anything else (no colon, an empty side, a source named twice)."""
    text = value.strip()
    if not text or text.lower() == "auto":
        return ()
    pairs: list[tuple[str, str]] = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        source, sep, target = (s.strip() for s in item.partition(":"))
        if not sep or not source or not target or ":" in target:
            raise RestoreError(
                "option network_map: expected auto or SOURCE:TARGET pairs separated by commas "
                f"(source network or profile, target profile); got {_clip(item)!r}"
            )
        if any(source == s for s, _ in pairs):
            raise RestoreError(f"option network_map maps {_clip(source)!r} twice")
        pairs.append((source, target))
    if not pairs:
        raise RestoreError(f"option network_map: no SOURCE:TARGET pair in {_clip(value)!r}")
    return tuple(pairs)


@dataclasses.dataclass(frozen=True)
class NicProfile:
    """The profile one NIC of the set gets: ``profile_id`` None means no network."""

    nic: str  # the NIC's name in the set
    profile_id: str | None
    #: a line for ``.status`` when the choice is not simply the set's own profile
    note: str | None = None
    #: True when the note is a warning (the NIC lands elsewhere than its network)
    warning: bool = False


def _label(p: VnicProfile) -> str:
    return f"{p.network_name or '?'}/{p.name}"


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _Target:
    """The profiles a NIC can get on the target cluster."""

    def __init__(
        self, profiles: Sequence[VnicProfile], networks: Sequence[Network] | None, cluster: str
    ) -> None:
        self.cluster = cluster
        self.all = list(profiles)
        if networks is None:  # the cluster's networks are unknown: every profile is a candidate
            self.usable = list(profiles)
            self.management: list[str] = []
        else:
            ids = {n.id for n in networks}
            self.usable = [p for p in profiles if p.network_id in ids]
            self.management = [n.name for n in networks if "management" in n.usages]

    def _where(self) -> str:
        names = ", ".join(sorted(_label(p) for p in self.usable)) or "none"
        return f"on cluster {self.cluster} (its profiles, network/profile: {names})"

    def of_network(self, network: str, prefer: str | None = None) -> VnicProfile | None:
        """The profile of ``network`` named ``prefer``, else named like the network, else
        the first by name (None when the network has no profile here)."""
        mine = sorted((p for p in self.usable if p.network_name == network), key=_label)
        for name in (prefer, network):
            found = [p for p in mine if name is not None and p.name == name]
            if found:
                return found[0]
        return mine[0] if mine else None

    def named(self, text: str, what: str) -> VnicProfile:
        """A profile named in the options (see the module docstring)."""
        for p in self.usable:
            if p.id == text:
                return p
        other = next((p for p in self.all if p.id == text), None)
        if other is not None:
            raise RestoreInputError(
                f"{what}: vnic profile {text} ({_label(other)}) is not on a network of "
                f"cluster {self.cluster}; {self._where()}"
            )
        network, slash, name = text.partition("/")
        if slash:
            found = [p for p in self.usable if p.network_name == network and p.name == name]
        else:
            found = [p for p in self.usable if p.name == text]
            if len(found) > 1:
                found = [p for p in found if p.network_name == text] or found
            if not found:
                by_network = self.of_network(text)
                found = [by_network] if by_network is not None else []
        if len(found) == 1:
            return found[0]
        if found:
            raise RestoreInputError(
                f"{what}: {_clip(text)!r} names several vnic profiles "
                f"({', '.join(sorted(_label(p) for p in found))}): write NETWORK/PROFILE"
            )
        raise RestoreInputError(f"{what}: no vnic profile {_clip(text)!r} {self._where()}")

    def automatic(self, nic: ManifestNic) -> NicProfile:
        """Step 3 of the module docstring."""
        if nic.vnic_profile_id is None and nic.vnic_profile_name is None and nic.network is None:
            return NicProfile(nic.name, None)
        same = next((p for p in self.usable if p.id == nic.vnic_profile_id), None)
        if same is not None:
            return NicProfile(nic.name, same.id)
        was = f"{nic.network or '?'}/{nic.vnic_profile_name or nic.vnic_profile_id}"
        found = None
        if nic.network is not None:
            found = self.of_network(nic.network, nic.vnic_profile_name)
        elif nic.vnic_profile_name is not None:
            named = [p for p in self.usable if p.name == nic.vnic_profile_name]
            found = named[0] if len(named) == 1 else None
        if found is not None:
            return NicProfile(
                nic.name, found.id, f"nic {nic.name}: {was} -> {_label(found)} ({found.id}) by name"
            )
        for mgmt in self.management:
            fallback = self.of_network(mgmt)
            if fallback is not None:
                return NicProfile(
                    nic.name,
                    fallback.id,
                    f"warning: nic {nic.name}: network {was} does not exist on cluster "
                    f"{self.cluster}; it gets the management network's profile "
                    f"{_label(fallback)} ({fallback.id}) (set network_map or vnic_profile "
                    "to choose)",
                    warning=True,
                )
        return NicProfile(
            nic.name,
            None,
            f"warning: nic {nic.name}: network {was} does not exist on cluster {self.cluster} "
            "and it has no management network profile: the nic has no network (set "
            "network_map or vnic_profile to choose)",
            warning=True,
        )


def _matches(nic: ManifestNic, source: str) -> bool:
    return source in (nic.network, nic.vnic_profile_name, nic.vnic_profile_id)


def choose_profiles(
    nics: Sequence[ManifestNic],
    *,
    vnic_profile: str | None,
    network_map: NetworkMap,
    profiles: Sequence[VnicProfile],
    networks: Sequence[Network] | None,
    cluster: str,
) -> list[NicProfile]:
    """The profile of each NIC of the set, in the set's order (see the module docstring).
    ``networks`` are the target cluster's (None: unknown, every profile qualifies);
    ``cluster`` names it in messages."""
    target = _Target(profiles, networks, cluster)
    unused = [s for s, _ in network_map if not any(_matches(n, s) for n in nics)]
    if unused:
        have = sorted(
            {f"{n.network or '?'}/{n.vnic_profile_name or n.vnic_profile_id}" for n in nics}
        )
        raise RestoreInputError(
            f"option network_map: no nic of the set is on {', '.join(map(repr, unused))} "
            f"(the set's networks/profiles: {', '.join(have) or 'none'})"
        )
    mapped = {s: target.named(t, f"option network_map {s}:{t}") for s, t in network_map}
    every = target.named(vnic_profile, "option vnic_profile") if vnic_profile else None
    out: list[NicProfile] = []
    for nic in nics:
        source = next((s for s, _ in network_map if _matches(nic, s)), None)
        chosen = mapped[source] if source is not None else every
        if chosen is None:
            out.append(target.automatic(nic))
            continue
        why = f"network_map {source}" if source is not None else "vnic_profile"
        out.append(
            NicProfile(
                nic.name, chosen.id, f"nic {nic.name}: {_label(chosen)} ({chosen.id}) by {why}"
            )
        )
    return out
