"""Compile bpf/ with bcc, attach it, and read its maps: the only module that touches bcc.

Every kernel-specific number reaches the C as a define: struct offsets from BTF, drop-reason
numbers from tracefs, function ranges from kallsyms. Nothing is text-substituted into C.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tracer import kinds
from tracer.errors import EnvironmentProblem
from tracer.probe import abi
from tracer.probe.btf import Btf, BtfError
from tracer.probe.features import SYMBOLS, TRACEPOINTS, BuildPlan, KernelFeatures

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"

# define -> (struct, member path): every kernel field the BPF code reads.
OFFSETS: dict[str, tuple[str, str]] = {
    "OFF_SKB_SK": ("sk_buff", "sk"),
    "OFF_SKB_DEV": ("sk_buff", "dev"),
    "OFF_SKB_DESTRUCTOR": ("sk_buff", "destructor"),
    "OFF_SKB_HEAD": ("sk_buff", "head"),
    "OFF_SKB_PROTOCOL": ("sk_buff", "protocol"),
    "OFF_SKB_NETWORK_HEADER": ("sk_buff", "network_header"),
    "OFF_SKB_TRANSPORT_HEADER": ("sk_buff", "transport_header"),
    "OFF_SKB_REFDST": ("sk_buff", "_skb_refdst"),
    "OFF_DST_DEV": ("dst_entry", "dev"),
    "OFF_DEV_NET": ("net_device", "nd_net"),
    "OFF_NET_INUM": ("net", "ns.inum"),
    "OFF_NET_TCP_SYNCOOKIES": ("net", "ipv4.sysctl_tcp_syncookies"),
    "OFF_SKC_NET": ("sock_common", "skc_net"),
    "OFF_SKC_FAMILY": ("sock_common", "skc_family"),
    "OFF_SKC_NUM": ("sock_common", "skc_num"),
    "OFF_SKC_STATE": ("sock_common", "skc_state"),
    "OFF_SKC_RCV_SADDR": ("sock_common", "skc_rcv_saddr"),
    "OFF_SKC_V6_RCV_SADDR": ("sock_common", "skc_v6_rcv_saddr"),
    "OFF_SKC_DADDR": ("sock_common", "skc_daddr"),
    "OFF_SKC_DPORT": ("sock_common", "skc_dport"),
    "OFF_SKC_V6_DADDR": ("sock_common", "skc_v6_daddr"),
    "OFF_SKC_TW_SND_NXT": ("sock_common", "skc_tw_snd_nxt"),
    "OFF_TW_TIMER": ("inet_timewait_sock", "tw_timer"),
    "OFF_TIMER_FUNCTION": ("timer_list", "function"),
    "OFF_SK_ACK_BACKLOG": ("sock", "sk_ack_backlog"),
    "OFF_SK_MAX_ACK_BACKLOG": ("sock", "sk_max_ack_backlog"),
    "OFF_SK_REUSEPORT_CB": ("sock", "sk_reuseport_cb"),
    "OFF_ICSK_SYNQ_QLEN": ("inet_connection_sock", "icsk_accept_queue.qlen"),
    "OFF_REUSE_SYNQ_OVERFLOW_TS": ("sock_reuseport", "synq_overflow_ts"),
    "OFF_TP_TS_RECENT_STAMP": ("tcp_sock", "rx_opt.ts_recent_stamp"),
}

# The bpf/ families (syn.c, timewait.c, paws.c) that kind methods name as their handlers.
FAMILIES = tuple(dict.fromkeys(h for k in kinds.Kind for m in k.spec.methods for h in m.handlers))

# Drop reasons the handlers test, by name; a reason this kernel lacks becomes -1 (no match).
REASONS = ("TCP_LISTEN_OVERFLOW", "NO_SOCKET", "TCP_FLAGS", "TCP_RFC7323_PAWS",
           "TCP_RFC7323_PAWS_ACK", "TCP_RFC7323_TSECR", "TCP_RFC7323_TW_PAWS")


@dataclass(frozen=True)
class Tuning:
    """Sizes and time windows of the kernel side."""

    max_events_per_second: int = 20000
    max_peers: int = 131072
    ringbuf_pages: int = 4096          # 16 MiB: ~260k events, 1 s of a 250k/s storm
    grace_ns: int = 200_000_000        # late SYN-ACK window (ARP/ND), well below the 1 s RTO


def kernel_hz() -> int:
    """CONFIG_HZ of the running kernel (jiffies per second), for the 2-minute cookie window."""
    for path in ("/proc/config.gz", f"/boot/config-{os.uname().release}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                for line in f:
                    if line.startswith("CONFIG_HZ="):
                        return int(line.split("=", 1)[1])
        except OSError:
            continue
    return _measure_hz()


def _measure_hz() -> int:
    """Estimate HZ from /proc/timer_list's jiffies over 0.2 s, rounded to a real value."""
    def jiffies() -> int:
        with open("/proc/timer_list") as f:
            m = re.search(r"^jiffies: (\d+)", f.read(), re.M)
        if not m:
            raise OSError("no jiffies in /proc/timer_list")
        return int(m.group(1))

    try:
        j0, t0 = jiffies(), time.monotonic()
        time.sleep(0.2)
        rate = (jiffies() - j0) / (time.monotonic() - t0)
    except OSError:
        return 250
    return min((100, 250, 300, 1000), key=lambda hz: abs(hz - rate))


def btf_defines(btf: Btf) -> dict[str, int]:
    """OFF_* defines for every field in OFFSETS, plus the skc_reuseport bit."""
    out: dict[str, int] = {}
    try:
        for define, (struct, path) in OFFSETS.items():
            out[define] = btf.offset(struct, path).byte
        bit = btf.offset("sock_common", "skc_reuseport")
    except BtfError as e:
        raise EnvironmentProblem(
            f"this kernel's BTF lacks a field the tracer reads ({e})",
            "this kernel is not supported yet; please report its version") from e
    out["OFF_SKC_REUSEPORT_BYTE"] = bit.bit // 8
    out["SKC_REUSEPORT_MASK"] = 1 << (bit.bit % 8)
    out.update(skb_header_span(out))
    return out


def skb_header_span(offsets: dict[str, int]) -> dict[str, int]:
    """SKB_SPAN_START/SKB_SPAN when the sk_buff fields read_skb() needs lie within 128
    bytes, so it reads them at once; SKB_SPAN 0 (a read each) on other layouts."""
    fields = {"OFF_SKB_PROTOCOL": 2, "OFF_SKB_NETWORK_HEADER": 2,
              "OFF_SKB_TRANSPORT_HEADER": 2, "OFF_SKB_HEAD": 8, "OFF_SKB_REFDST": 8,
              "OFF_SKB_DESTRUCTOR": 8}
    start = min(offsets[f] for f in fields)
    end = max(offsets[f] + size for f, size in fields.items())
    if end - start > 128:
        return {"SKB_SPAN_START": 0, "SKB_SPAN": 0}
    return {"SKB_SPAN_START": start, "SKB_SPAN": end - start}


def tracepoint_define(tracepoint: str) -> str:
    """USE_TP_<GROUP>_<NAME>: whether bpf/tracer.c compiles (and bcc attaches) its probe."""
    return "USE_TP_" + tracepoint.replace("/", "_").upper()


def build_defines(features: KernelFeatures, btf: Btf, tuning: Tuning, ncpus: int,
                  hz: int, plan: BuildPlan) -> dict[str, int]:
    """All -D values for bpf/tracer.c on this kernel.

    Only the plan's families (bpf/*.c) are built and only its tracepoints get a program,
    so a hot tracepoint is attached only when a selected kind's method needs it, and a
    tracepoint this kernel lacks is never compiled against.
    """
    d = btf_defines(btf)
    d.update(kinds.c_defines())
    d.update(abi.c_defines())
    for tracepoint in TRACEPOINTS:
        d[tracepoint_define(tracepoint)] = int(tracepoint in plan.tracepoints)
    for name in REASONS:
        number = features.reason(name)
        d[f"R_{name}"] = number if number is not None else 0xFFFFFFFF
    for sym in SYMBOLS:
        start, end = features.symbols.get(sym, (0, 0))
        d[f"SYM_{sym.strip('_').upper()}_START"] = start
        d[f"SYM_{sym.strip('_').upper()}_END"] = end
    v = features.version
    d["SYNQ_FULL_AT_MAX"] = int(v[:2] == (5, 4) or v == (6, 8, 0))
    d["SYNCOOKIE_VALID_JIFFIES"] = 120 * hz
    d["NS_PER_JIFFY"] = 1_000_000_000 // hz
    d["MAX_SYNACK_LEN"] = 160
    d["GRACE_NS"] = tuning.grace_ns
    d["MAX_PEERS"] = tuning.max_peers
    d["RINGBUF_PAGES"] = tuning.ringbuf_pages
    if tuning.max_events_per_second > 0:
        per_cpu = max(1, tuning.max_events_per_second // max(1, ncpus))
        d["RATE_INTERVAL_NS"] = max(1, 1_000_000_000 // per_cpu)
        d["RATE_BURST_NS"] = 100_000_000
    else:
        d["RATE_INTERVAL_NS"] = 0
        d["RATE_BURST_NS"] = 0
    for family in FAMILIES:
        d[f"FAMILY_{family.upper()}"] = int(family in plan.families)
    if features.has_rx_sk:
        d["HAVE_RX_SK"] = 1
    return d


def cflags(defines: dict[str, int]) -> list[str]:
    flags = [f"-D{k}={v}{'ULL' if v > 0x7FFFFFFF else ''}" for k, v in sorted(defines.items())]
    return flags + QUIET_WARNINGS


# Warnings the distributions' own headers raise under bcc's clang (Debian 13's 6.12 headers:
# nocf_check in asm/ibt.h, a doubled address space in asm/current.h): every start would
# print them to the user, and none says anything about the tracer's code.
QUIET_WARNINGS = ["-Wno-macro-redefined", "-Wno-ignored-attributes",
                  "-Wno-duplicate-decl-specifier"]


_LOCAL_INCLUDE = re.compile(r'^#include "([\w.]+)"[ \t]*$', re.M)


def bundle_source(main: Path = BPF_DIR / "tracer.c") -> str:
    """bpf/tracer.c with its local `#include "x"` files inlined (each once).

    bcc rewrites map calls (`table.lookup(...)`) and generates tracepoint argument structs
    only in the main source buffer, so the files of bpf/ must reach it as one text. #line
    directives keep compiler messages pointing at the real file and line.
    """
    seen: set[str] = set()

    def expand(path: Path) -> str:
        text = path.read_text()

        def include(m: re.Match[str]) -> str:
            name = m.group(1)
            if name in seen:
                return ""
            seen.add(name)
            return (f'#line 1 "bpf/{name}"\n' + expand(path.parent / name)
                    + f'\n#line {text.count(chr(10), 0, m.end()) + 2} "bpf/{path.name}"')

        return _LOCAL_INCLUDE.sub(include, text)

    return expand(main)


def release_heap() -> None:
    """Hand freed heap back to the system (glibc malloc_trim): after the compile, and after
    each tally of 100,000+ peers; the tracer runs for hours on a host short of memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _lookup_batch(table) -> tuple[ctypes.Array, ctypes.Array, int]:
    """Every entry of a bcc hash table by BPF_MAP_LOOKUP_BATCH: (keys, values, count).

    An LRU map being refilled under a flood can show a walk more entries than max_entries
    (evicted from a bucket already read, inserted into one not yet read), hence the
    headroom; a bucket that no longer fits (ENOSPC) ends the walk with what was read.
    """
    from bcc.libbcc import lib

    capacity = table.max_entries + table.max_entries // 4 + 64
    key_size, leaf_size = ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
    keys = ctypes.create_string_buffer(capacity * key_size)
    values = ctypes.create_string_buffer(capacity * leaf_size)
    token, count = ctypes.c_uint32(0), ctypes.c_uint32(0)
    total = 0
    while total < capacity:
        count.value = capacity - total
        res = lib.bpf_lookup_batch(table.map_fd, ctypes.byref(token) if total else None,
                                   ctypes.byref(token),
                                   ctypes.byref(keys, key_size * total),
                                   ctypes.byref(values, leaf_size * total),
                                   ctypes.byref(count))
        err = ctypes.get_errno()
        total += count.value
        if res != 0:
            if err == errno.ENOENT or (err == errno.ENOSPC and total):   # done
                break
            raise OSError(err, os.strerror(err))
        if count.value == 0:
            break
    return keys, values, total


class LoadedProbe:
    """The compiled, attached BPF programs and their maps."""

    def __init__(self, defines: dict[str, int]) -> None:
        try:
            from bcc import BPF
        except ImportError as e:
            raise EnvironmentProblem(
                "bcc is not installed (Debian package python3-bpfcc)",
                "run ./scripts/setup, or `apt-get install bpfcc-tools python3-bpfcc` and "
                "use /usr/bin/python3 or a venv made with --system-site-packages") from e
        self.defines = defines
        try:
            self.bpf = BPF(text=bundle_source(), cflags=cflags(defines))
        except Exception as e:  # bcc raises bare Exception for compile and attach failures
            raise EnvironmentProblem(
                f"loading the BPF programs failed ({e})",
                "see the compiler output above; the kernel headers may be missing or broken "
                "(./scripts/setup installs them)") from e
        release_heap()

    def open_events(self, callback: Callable[[bytes], None]) -> None:
        """Deliver each ring-buffer record to callback as bytes."""
        def on_record(_ctx: object, data: int, size: int) -> int:
            callback(ctypes.string_at(data, size))
            return 0

        self.bpf["events"].open_ring_buffer(on_record)

    def poll(self, timeout_ms: int) -> None:
        """Wait up to timeout_ms for a forced wake-up, then drain what is there."""
        self.bpf.ring_buffer_poll(timeout_ms)
        self.bpf.ring_buffer_consume()

    def peer_counts(self) -> tuple[bytes, bytes, int]:
        """Every live peer_counts entry: (keys, per-CPU u64 values, number of CPUs), each
        a flat byte string in map order.

        One BPF_MAP_LOOKUP_BATCH into flat buffers: the map may hold 100,000+ peers and is
        read every second, so no per-entry syscall or ctypes object. Kernels without batch
        lookups (< 5.6) fall back to iterating.
        """
        table = self.bpf["peer_counts"]
        key_size, leaf_size = ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
        ncpu = leaf_size // 8
        try:
            keys, values, count = _lookup_batch(table)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            items = list(table.items())          # no batch lookups on this kernel
            return (b"".join(bytes(k) for k, _ in items),
                    b"".join(struct.pack(f"<{ncpu}Q", *v) for _, v in items), ncpu)
        # string_at copies only the entries read, not the whole (headroom) buffer
        return (ctypes.string_at(keys, count * key_size),
                ctypes.string_at(values, count * leaf_size), ncpu)

    def kind_totals(self) -> dict[int, list[int]]:
        table = self.bpf["kind_totals"]
        return {k.value: list(v) for k, v in table.items()}

    def stats(self) -> list[list[int]]:
        table = self.bpf["stats"]
        return [list(v) for _, v in sorted(table.items(), key=lambda kv: kv[0].value)]

    def close(self) -> None:
        self.bpf.cleanup()
