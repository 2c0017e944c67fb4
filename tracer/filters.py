"""Which refusals the user asked to see: local ports, peer networks, kinds, family, netns.

One `RefusalFilter` applies alike to events and to tally rows, so that the exact counts and
the event stream always describe the same set of refusals.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from tracer.errors import UsageError
from tracer.kinds import KIND_LABELS, Kind
from tracer.model import Event

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network:
    """A `--peer` value: a CIDR or a single address (v4-mapped IPv6 becomes IPv4)."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise UsageError(f"--peer {text!r} is not an address or CIDR",
                         "use e.g. 10.1.2.0/24, 2001:db8::/64 or 192.0.2.7") from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
        mapped = net.network_address.ipv4_mapped
        net = ipaddress.ip_network(f"{mapped}/{max(0, net.prefixlen - 96)}", strict=False)
    return net


def subnet_of(peer: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) a peer belongs to, as text: how the board, the report
    and the metrics group peers."""
    addr = ipaddress.ip_address(peer)
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network((addr, prefix), strict=False))


def parse_kind(text: str) -> Kind:
    try:
        return Kind.from_label(text.strip())
    except ValueError:
        raise UsageError(f"unknown kind {text!r}",
                         f"choose from {', '.join(KIND_LABELS)}") from None


@dataclass(frozen=True)
class RefusalFilter:
    """The filters of one command; empty sets mean "everything"."""

    ports: frozenset[int] = frozenset()
    networks: tuple[Network, ...] = ()
    kinds: frozenset[Kind] = frozenset()
    family: int | None = None
    netns: frozenset[int] = frozenset()
    _cache: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, ports: Iterable[int] = (), peers: Iterable[str] = (),
              kinds: Iterable[str] = (), family: int | None = None,
              netns: Iterable[int] = ()) -> RefusalFilter:
        return cls(ports=frozenset(ports), networks=tuple(parse_network(p) for p in peers),
                   kinds=frozenset(parse_kind(k) for k in kinds), family=family,
                   netns=frozenset(netns))

    @property
    def hides_refusals(self) -> bool:
        """Some refusals in the watched namespaces are filtered out (so counters exceed)."""
        return bool(self.ports or self.networks or self.kinds or self.family)

    @property
    def is_everything(self) -> bool:
        return not (self.ports or self.networks or self.kinds or self.family or self.netns)

    def peer_matches(self, peer: str) -> bool:
        """Peer address inside one of the --peer networks (cached: peers repeat a lot)."""
        if not self.networks:
            return True
        hit = self._cache.get(peer)
        if hit is None:
            addr = ipaddress.ip_address(peer)
            hit = any(addr.version == n.version and addr in n for n in self.networks)
            if len(self._cache) < 100_000:
                self._cache[peer] = hit
        return hit

    def matches(self, *, kind: Kind, peer: str, family: int, netns: int,
                local_port: int) -> bool:
        return ((not self.kinds or kind in self.kinds)
                and (self.family is None or family == self.family)
                and (not self.netns or netns in self.netns)
                and (not self.ports or local_port in self.ports)
                and self.peer_matches(peer))

    def matches_event(self, e: Event) -> bool:
        return self.matches(kind=e.kind, peer=e.peer, family=e.family, netns=e.netns,
                            local_port=e.local_port)

    def describe(self) -> str:
        """Short text of the active filters for status lines ("" when none)."""
        parts = []
        if self.ports:
            parts.append("port " + ",".join(str(p) for p in sorted(self.ports)))
        if self.networks:
            parts.append("peer " + ",".join(str(n) for n in self.networks))
        if self.kinds:
            parts.append("kind " + ",".join(sorted(k.label for k in self.kinds)))
        if self.family:
            parts.append(f"IPv{self.family}")
        if self.netns:
            parts.append("netns " + ",".join(str(n) for n in sorted(self.netns)))
        return "; ".join(parts)
