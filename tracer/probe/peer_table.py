"""The per-peer count map, as read in one batch, turned into tally rows with numpy.

Under a flood of distinct sources the map holds MAX_PEERS (131,072) entries and is read
every second; a Python object per entry made that take seconds, stalling the board. Here
each step is one array operation, and Python only touches each distinct peer once (its
address text) and each output row once. Pure: bytes in, rows out (layout: bpf/refusal.h
struct peer_key).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from tracer.filters import RefusalFilter
from tracer.kinds import Kind
from tracer.model import TallyRow
from tracer.probe.decode import address

PEER_KEY = np.dtype([("netns", "<u4"), ("port", "<u2"), ("kind", "u1"), ("family", "u1"),
                     ("peer", "V16")])
KINDS = {k.id: k for k in Kind}
_KIND_IDS = np.array(sorted(KINDS), dtype=np.uint8)


class PortCounts(Mapping[str, dict[int, int]]):
    """peer text -> {local port: count}, computed only for the peers asked for (the board
    shows a few dozen of 100,000+)."""

    def __init__(self, texts: list[str], peer_ids: np.ndarray, ports: np.ndarray,
                 counts: np.ndarray) -> None:
        self._ids = {t: i for i, t in enumerate(texts)}
        self._peer_ids, self._ports, self._counts = peer_ids, ports, counts
        self._order: np.ndarray | None = None

    def __getitem__(self, peer: str) -> dict[int, int]:
        pid = self._ids[peer]
        if self._order is None:                   # sorted by peer once, then sliced
            self._order = np.argsort(self._peer_ids, kind="stable")
            self._sorted_ids = self._peer_ids[self._order]
        lo, hi = np.searchsorted(self._sorted_ids, [pid, pid + 1])
        take = self._order[lo:hi]
        out: dict[int, int] = {}
        for port, n in zip(self._ports[take].tolist(), self._counts[take].tolist(),
                           strict=True):
            out[port] = out.get(port, 0) + n
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def summarize(keys: bytes, values: bytes, ncpu: int,
              selection: RefusalFilter) -> tuple[list[TallyRow], PortCounts]:
    """Rows per (netns, peer, kind) summed over local ports, largest first, and the ports.

    Per-CPU values are summed modulo 2**64 and read as signed: a late-answered syn_drop is
    retracted (-1) on whichever CPU saw its SYN-ACK.
    """
    n = len(keys) // PEER_KEY.itemsize
    k = np.frombuffer(keys, PEER_KEY, n)
    counts = np.frombuffer(values, "<u8", n * ncpu).reshape(n, ncpu) \
        .sum(axis=1, dtype=np.uint64).view(np.int64)
    keep = (counts > 0) & np.isin(k["kind"], _KIND_IDS)
    if selection.kinds:
        keep &= np.isin(k["kind"], [kind.id for kind in selection.kinds])
    if selection.netns:
        keep &= np.isin(k["netns"], list(selection.netns))
    if selection.ports:
        keep &= np.isin(k["port"], list(selection.ports))
    k, counts = k[keep], counts[keep]

    # Each distinct (family, address) once: its text (v4-mapped shown as IPv4) and family.
    raw = np.empty(len(k), dtype=[("family", "u1"), ("peer", "V16")])
    raw["family"], raw["peer"] = k["family"], k["peer"]
    uniq, inverse = np.unique(raw, return_inverse=True)
    shown = [address(int(f), bytes(p)) for f, p in zip(uniq["family"], uniq["peer"],
                                                        strict=True)]
    texts: list[str] = []
    text_id: dict[str, int] = {}
    uniq_text = np.empty(len(uniq), dtype=np.int64)
    uniq_ok = np.ones(len(uniq), dtype=bool)
    for i, (family, text) in enumerate(shown):
        if (selection.family is not None and family != selection.family) or \
                not selection.peer_matches(text):
            uniq_ok[i] = False
            continue
        tid = text_id.get(text)
        if tid is None:
            tid = text_id[text] = len(texts)
            texts.append(text)
        uniq_text[i] = tid
    inverse = np.asarray(inverse).reshape(-1)
    ok = uniq_ok[inverse]
    k, counts, peer_ids = k[ok], counts[ok], uniq_text[inverse[ok]]

    # Sum over local ports: one group per (netns, peer text, kind), packed in one integer
    # (netns 32 bits, peer 20 bits, kind 8 bits; MAX_PEERS is 131,072).
    if len(texts) >= 1 << 20:
        raise ValueError("more than 2**20 distinct peers in one tally")
    group = (k["netns"].astype(np.uint64) << np.uint64(28)) | \
        (peer_ids.astype(np.uint64) << np.uint64(8)) | k["kind"].astype(np.uint64)
    groups, where = np.unique(group, return_inverse=True)
    sums = np.zeros(len(groups), dtype=np.int64)
    np.add.at(sums, np.asarray(where).reshape(-1), counts)
    g_netns = (groups >> np.uint64(28)).astype(np.int64)
    g_peer = ((groups >> np.uint64(8)) & np.uint64((1 << 20) - 1)).astype(np.int64)
    g_kind = (groups & np.uint64(0xFF)).astype(np.int64)
    # Largest first; ties by netns, peer text, kind (text order, as people read them).
    text_rank = np.empty(len(texts), dtype=np.int64)
    text_rank[sorted(range(len(texts)), key=texts.__getitem__)] = np.arange(len(texts))
    order = np.lexsort((g_kind, text_rank[g_peer] if len(texts) else g_peer, g_netns, -sums))
    rows = [TallyRow(netns, texts[peer], KINDS[kind], count)
            for netns, peer, kind, count in zip(g_netns[order].tolist(),
                                                g_peer[order].tolist(),
                                                g_kind[order].tolist(),
                                                sums[order].tolist(), strict=True)]
    return rows, PortCounts(texts, peer_ids, k["port"].astype(np.int64), counts)
