"""Raw TCP segments built and parsed by hand, sent and sniffed as Ethernet frames.

`tracer demo` and the kernel tests need refusals that ordinary sockets cannot cause (stale
timestamps, forged cookies, spoofed sources). They build whole frames here and send them
with an AF_PACKET socket on a veth of their own namespaces; no third-party library needed.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
PACKET_OUTGOING = 4
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_options(mss: int | None = None, sack_perm: bool = False,
                ts: tuple[int, int] | None = None, wscale: int | None = None) -> bytes:
    """Encoded TCP options, padded with NOPs to a multiple of 4."""
    out = b""
    if mss is not None:
        out += struct.pack("!BBH", 2, 4, mss)
    if sack_perm:
        out += b"\x04\x02"
    if ts is not None:
        out += b"\x01\x01" + struct.pack("!BBII", 8, 10, ts[0] & 0xFFFFFFFF, ts[1] & 0xFFFFFFFF)
    if wscale is not None:
        out += struct.pack("!BBB", 3, 3, wscale)
    while len(out) % 4:
        out += b"\x01"
    return out


@dataclass(frozen=True)
class Segment:
    """A TCP segment with its IP addresses (IPv4 or IPv6, from the address text)."""

    src: str
    dst: str
    sport: int
    dport: int
    flags: int
    seq: int = 0
    ack: int = 0
    window: int = 65535
    options: bytes = b""
    payload: bytes = b""
    ts: tuple[int, int] | None = field(default=None, compare=False)

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.src).version

    def tcp_bytes(self) -> bytes:
        offset = (20 + len(self.options)) // 4
        header = struct.pack("!HHIIBBHHH", self.sport, self.dport, self.seq & 0xFFFFFFFF,
                             self.ack & 0xFFFFFFFF, offset << 4, self.flags, self.window, 0, 0)
        body = header + self.options + self.payload
        src = ipaddress.ip_address(self.src).packed
        dst = ipaddress.ip_address(self.dst).packed
        if self.family == 4:
            pseudo = src + dst + struct.pack("!BBH", 0, 6, len(body))
        else:
            pseudo = src + dst + struct.pack("!IxxxB", len(body), 6)
        csum = _checksum(pseudo + body)
        return body[:16] + struct.pack("!H", csum) + body[18:]

    def ip_bytes(self) -> bytes:
        tcp = self.tcp_bytes()
        src = ipaddress.ip_address(self.src).packed
        dst = ipaddress.ip_address(self.dst).packed
        if self.family == 4:
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                                 src, dst)
            header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
            return header + tcp
        return struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst) + tcp

    def frame(self, src_mac: str, dst_mac: str) -> bytes:
        ethertype = ETH_P_IP if self.family == 4 else ETH_P_IPV6
        return (bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
                + struct.pack("!H", ethertype) + self.ip_bytes())


def parse_frame(frame: bytes) -> Segment | None:
    """The TCP segment in an Ethernet frame, or None if it carries none."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[14:]
    if ethertype == ETH_P_IP and len(ip) >= 20 and ip[9] == 6:
        ihl = (ip[0] & 0xF) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        tcp = ip[ihl:total]
    elif ethertype == ETH_P_IPV6 and len(ip) >= 40 and ip[6] == 6:
        length = struct.unpack_from("!H", ip, 4)[0]
        src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
        tcp = ip[40:40 + length]
    else:
        return None
    if len(tcp) < 20:
        return None
    sport, dport, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", tcp)
    hlen = (off >> 4) * 4
    options = tcp[20:hlen]
    return Segment(src, dst, sport, dport, flags, seq, ack, window, options, tcp[hlen:],
                   ts=_timestamps(options))


def _timestamps(options: bytes) -> tuple[int, int] | None:
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break
        if kind == 8 and options[i + 1] == 10:
            return struct.unpack_from("!II", options, i + 2)
        i += options[i + 1]
    return None


class Wire:
    """Send frames on, and sniff frames from, one interface (an AF_PACKET socket).

    The socket must be created inside the interface's namespace (see Lab.socket_in).
    """

    def __init__(self, sock: socket.socket, iface: str, src_mac: str, dst_mac: str) -> None:
        self.sock = sock
        self.sock.bind((iface, 0))
        self.sock.setblocking(False)
        self.src_mac, self.dst_mac = src_mac, dst_mac
        self.seen: list[tuple[int, Segment]] = []

    def send(self, seg: Segment) -> None:
        self.sock.send(seg.frame(self.src_mac, self.dst_mac))

    def _pump(self, timeout: float) -> None:
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return
        for _ in range(10000):
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            seg = parse_frame(data)
            if seg is not None:
                self.seen.append((addr[2], seg))

    def expect(self, match: Callable[[Segment], bool], timeout: float = 1.0,
               outgoing: bool = False) -> Segment | None:
        """First sniffed segment (incoming unless `outgoing`) that matches, within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (ptype, seg) in enumerate(self.seen):
                if (ptype == PACKET_OUTGOING) == outgoing and match(seg):
                    del self.seen[i]
                    return seg
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pump(min(left, 0.05))

    def flush(self) -> None:
        self._pump(0)
        self.seen.clear()

    def close(self) -> None:
        self.sock.close()
