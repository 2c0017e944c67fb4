"""The per-peer map as the kernel hands it over (flat key and per-CPU value bytes) turned
into tally rows: sums over local ports, retractions, filters, order, and the ports."""

from __future__ import annotations

import ipaddress
import struct

from tracer.filters import RefusalFilter
from tracer.kinds import Kind
from tracer.model import TallyRow
from tracer.probe.peer_table import summarize

NCPU = 2
M64 = 1 << 64


def entry(peer: str, count: int | tuple[int, int], kind: Kind = Kind.SYN_DROP,
          port: int = 80, netns: int = 7, family: int | None = None) -> tuple[bytes, bytes]:
    addr = ipaddress.ip_address(peer)
    fam = family if family is not None else addr.version
    key = struct.pack("<IHBB", netns, port, kind.id, fam) + addr.packed.ljust(16, b"\0")
    per_cpu = count if isinstance(count, tuple) else (count, 0)
    return key, struct.pack(f"<{NCPU}Q", *(c % M64 for c in per_cpu))


def table(*entries: tuple[bytes, bytes], selection: RefusalFilter | None = None):
    keys = b"".join(k for k, _ in entries)
    values = b"".join(v for _, v in entries)
    return summarize(keys, values, NCPU, selection or RefusalFilter())


def test_sums_over_ports_keeps_namespaces_apart_and_orders_rows():
    rows, ports = table(
        entry("10.0.0.9", 3, port=80), entry("10.0.0.9", 4, port=443),
        entry("10.0.0.9", 2, port=80, netns=8),
        entry("10.0.0.10", 7, kind=Kind.ACK_DROP),
        entry("2001:db8::1", 1, kind=Kind.PAWS, port=22))
    # ties (7) by netns, then by the address as text: "10.0.0.10" < "10.0.0.9"
    assert rows == [TallyRow(7, "10.0.0.10", Kind.ACK_DROP, 7),
                    TallyRow(7, "10.0.0.9", Kind.SYN_DROP, 7),
                    TallyRow(8, "10.0.0.9", Kind.SYN_DROP, 2),
                    TallyRow(7, "2001:db8::1", Kind.PAWS, 1)]
    assert ports["10.0.0.9"] == {80: 5, 443: 4}            # both namespaces
    assert ports["2001:db8::1"] == {22: 1}
    assert len(ports) == 3 and set(ports) == {"10.0.0.9", "10.0.0.10", "2001:db8::1"}


def test_per_cpu_retractions_zero_rows_and_unknown_kinds():
    unknown = entry("10.0.0.3", 5)
    unknown = (unknown[0][:6] + bytes([11]) + unknown[0][7:], unknown[1])
    rows, _ = table(entry("10.0.0.1", (3, -1)),            # +3 here, one retracted there
                    entry("10.0.0.2", (1, -1)),             # retracted to zero: no row
                    unknown)                                # kind id 11: a newer tracer's
    assert rows == [TallyRow(7, "10.0.0.1", Kind.SYN_DROP, 2)]


def test_v4_mapped_peers_are_the_ipv4_peer():
    rows, ports = table(entry("10.0.0.5", 2),
                        entry("::ffff:10.0.0.5", 3, family=6, port=81))
    assert rows == [TallyRow(7, "10.0.0.5", Kind.SYN_DROP, 5)]
    assert ports["10.0.0.5"] == {80: 2, 81: 3}


def test_every_filter():
    data = [entry("10.0.0.1", 1, port=80), entry("10.0.1.1", 2, port=81),
            entry("2001:db8::1", 4, port=80),
            entry("10.0.0.2", 8, kind=Kind.PAWS, netns=9, port=82)]

    def peers(**sel) -> list[str]:
        rows, _ = table(*data, selection=RefusalFilter.build(**sel))
        return sorted(r.peer for r in rows)

    assert peers(ports=[80]) == ["10.0.0.1", "2001:db8::1"]
    assert peers(peers=["10.0.0.0/24"]) == ["10.0.0.1", "10.0.0.2"]
    assert peers(kinds=["paws"]) == ["10.0.0.2"]
    assert peers(netns=[7]) == ["10.0.0.1", "10.0.1.1", "2001:db8::1"]
    assert peers(family=6) == ["2001:db8::1"]
    assert peers(family=4, ports=[81]) == ["10.0.1.1"]


def test_empty_and_a_full_table():
    rows, ports = table()
    assert rows == [] and len(ports) == 0
    many = [entry(str(ipaddress.IPv4Address(0x0A000000 + i)), 1 + i % 5, port=1000 + i % 3)
            for i in range(131_072)]
    rows, ports = table(*many)
    assert len(rows) == 131_072 and sum(r.count for r in rows) == sum(
        1 + i % 5 for i in range(131_072))
    assert rows[0].count == 5 and rows[-1].count == 1
    assert ports["10.0.0.7"] == {1001: 3}
