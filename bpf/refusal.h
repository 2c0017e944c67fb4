/* Layout shared by every handler and by tracer/probe/decode.py: the event record, the
 * counting maps, and the helpers that read kernel memory through BTF offsets.
 *
 * bcc compiles this against whatever kernel headers are installed, which may belong to
 * another kernel version (Debian's 6.1 headers on 6.18 here). So no kernel struct is ever
 * dereferenced through a header type: every field is read with bpf_probe_read_kernel at an
 * offset taken from /sys/kernel/btf/vmlinux and passed in as an OFF_* define by
 * tracer/probe/load.py. Drop-reason numbers come in the same way (R_* defines) from the
 * tracefs format file, because their values differ between kernels.
 */
#ifndef REFUSAL_H
#define REFUSAL_H

/* Kind ids (KIND_*, KIND_MAX), the retraction record (RECORD_RETRACT), event flags (EVF_*),
 * the reasons the kernel has no name for (REASON_NONE, REASON_ACCEPT_QUEUE_FULL,
 * REASON_SYN_QUEUE_FULL) and the stats slots (STAT_*) all come as defines from
 * tracer/kinds.py and tracer/probe/abi.py: declared once, in Python. */

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define ST_SYN_SENT  2
#define ST_TIME_WAIT 6
#define ST_CLOSE     7
#define ST_LISTEN    10

struct refusal_event {
    u64 ts;            /* bpf_ktime_get_ns() */
    u32 netns;         /* net->ns.inum */
    u32 reason;        /* kernel drop reason number, REASON_* above, or REASON_NONE */
    u8  kind;          /* KIND_* or RECORD_RETRACT */
    u8  family;        /* 4 or 6 */
    u16 peer_port;
    u16 local_port;
    u16 flags;         /* EVF_* */
    u8  peer[16];      /* IPv4 in the first 4 bytes */
    u8  local[16];
};

/* Per (netns, local port, kind, peer): exact counts, independent of the event stream. */
struct peer_key {
    u32 netns;
    u16 local_port;
    u8  kind;
    u8  family;
    u8  peer[16];
};

/* A TCP segment as the handlers need it, parsed from the skb. */
struct segment {
    u8  saddr[16];     /* first: 8-byte aligned for word compares */
    u8  daddr[16];
    u32 seq;
    u16 sport;
    u16 dport;
    u8  family;
    u8  flags;         /* TCP flags byte */
    unsigned long route;   /* skb->_skb_refdst of a received segment (segment_netns) */
} __attribute__((aligned(8)));

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_TABLE("lru_percpu_hash", struct peer_key, u64, peer_counts, MAX_PEERS);
BPF_PERCPU_ARRAY(kind_totals, u64, KIND_MAX);
BPF_PERCPU_ARRAY(stats, u64, STAT_MAX);

/* Events-per-second cap: per-CPU GCRA. tat is the theoretical arrival time of the next
 * event; an event passes when tat <= now + burst, and pushes tat one interval further. */
struct rate_state { u64 tat; };
BPF_PERCPU_ARRAY(rate, struct rate_state, 1);

/* 16-byte addresses, 8-byte aligned in every struct here. */
static __always_inline int addr_eq(const u8 *a, const u8 *b)
{
    const u64 *x = (const u64 *)a, *y = (const u64 *)b;
    return x[0] == y[0] && x[1] == y[1];
}

/* A tracepoint's location (a return address) lies inside [start, end). */
static __always_inline int loc_in(u64 loc, u64 start, u64 end)
{
    return loc >= start && loc < end;
}

/* ---------------------------------------------------------------- kernel reads */

#define READ(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (char *)(base) + (off))

static __always_inline u32 net_inum(void *net)
{
    u32 inum = 0;
    if (net)
        READ(inum, net, OFF_NET_INUM);
    return inum;
}

/* Namespace of a socket of any kind (full, request, TIME-WAIT): sock_common.skc_net. */
static __always_inline u32 sk_netns(void *sk)
{
    void *net = 0;
    if (!sk)
        return 0;
    READ(net, sk, OFF_SKC_NET);
    return net_inum(net);
}

static __always_inline u32 dev_netns(void *dev)
{
    void *net = 0;
    if (!dev)
        return 0;
    READ(net, dev, OFF_DEV_NET);
    return net_inum(net);
}

/* The sk_buff fields the handlers use. */
struct skb_view {
    unsigned char *head;
    unsigned long refdst;   /* _skb_refdst: the input route of a received skb */
    u64 destructor;
    u16 proto;
    u16 nh;                 /* network_header, from head */
    u16 th;                 /* transport_header, from head */
};

/* All of them in one probe read when BTF puts them within SKB_SPAN bytes (6.x layouts:
 * 112 bytes from _skb_refdst to head), else one read each. Every probe read costs ~10 ns
 * and this runs for every refusal. */
static __always_inline int read_skb(void *skb, struct skb_view *v)
{
#if SKB_SPAN
    u8 span[SKB_SPAN];
    if (bpf_probe_read_kernel(span, sizeof(span), (char *)skb + SKB_SPAN_START))
        return -1;
    __builtin_memcpy(&v->head, span + OFF_SKB_HEAD - SKB_SPAN_START, 8);
    __builtin_memcpy(&v->refdst, span + OFF_SKB_REFDST - SKB_SPAN_START, 8);
    __builtin_memcpy(&v->destructor, span + OFF_SKB_DESTRUCTOR - SKB_SPAN_START, 8);
    __builtin_memcpy(&v->proto, span + OFF_SKB_PROTOCOL - SKB_SPAN_START, 2);
    __builtin_memcpy(&v->nh, span + OFF_SKB_NETWORK_HEADER - SKB_SPAN_START, 2);
    __builtin_memcpy(&v->th, span + OFF_SKB_TRANSPORT_HEADER - SKB_SPAN_START, 2);
#else
    READ(v->head, skb, OFF_SKB_HEAD);
    READ(v->refdst, skb, OFF_SKB_REFDST);
    READ(v->destructor, skb, OFF_SKB_DESTRUCTOR);
    READ(v->proto, skb, OFF_SKB_PROTOCOL);
    READ(v->nh, skb, OFF_SKB_NETWORK_HEADER);
    READ(v->th, skb, OFF_SKB_TRANSPORT_HEADER);
#endif
    if (!v->head || v->nh == 0xffff || v->th == 0xffff)
        return -1;
    return 0;
}

/* The IP header (ip_len bytes) and the first 14 bytes of TCP into buf: one read when TCP
 * follows the IP header directly (no IPv4 options, no IPv6 extension headers). */
static __always_inline int read_headers(struct skb_view *v, u8 *buf, const u32 ip_len)
{
    if (v->th == v->nh + ip_len)
        return bpf_probe_read_kernel(buf, ip_len + 14, v->head + v->nh);
    if (bpf_probe_read_kernel(buf, ip_len, v->head + v->nh))
        return -1;
    return bpf_probe_read_kernel(buf + ip_len, 14, v->head + v->th);
}

/* Parse the IP and TCP headers at head + network_header / transport_header. Both offsets
 * are valid on receive (set by ip_rcv_core/ipv6_rcv) and on transmit (set by the TCP/IP
 * output path), and transport_header already skips IPv6 extension headers. */
static __always_inline int parse_view(struct skb_view *v, struct segment *s)
{
    u8 buf[54];
    u8 *tcp;
    if (v->proto == bpf_htons(0x0800)) {
        if (read_headers(v, buf, 20) || buf[9] != 6)
            return -1;
        s->family = 4;
        __builtin_memcpy(s->saddr, &buf[12], 4);
        __builtin_memcpy(s->daddr, &buf[16], 4);
        tcp = buf + 20;
    } else if (v->proto == bpf_htons(0x86DD)) {
        /* Without extension headers the next header must be TCP (with them, the offset
         * the TCP layer set is trusted). */
        if (read_headers(v, buf, 40) || (v->th == v->nh + 40 && buf[6] != 6))
            return -1;
        s->family = 6;
        __builtin_memcpy(s->saddr, &buf[8], 16);
        __builtin_memcpy(s->daddr, &buf[24], 16);
        tcp = buf + 40;
    } else {
        return -1;
    }
    s->sport = ((u16)tcp[0] << 8) | tcp[1];
    s->dport = ((u16)tcp[2] << 8) | tcp[3];
    s->seq = ((u32)tcp[4] << 24) | ((u32)tcp[5] << 16) | ((u32)tcp[6] << 8) | tcp[7];
    s->flags = tcp[13];
    s->route = v->refdst;
    return 0;
}

static __always_inline int parse_segment(void *skb, struct segment *s)
{
    struct skb_view v = {};
    if (read_skb(skb, &v))
        return -1;
    return parse_view(&v, s);
}

/* Namespace of a received segment once TCP has it. tcp_v4_rcv/tcp_v6_rcv set skb->dev =
 * NULL, but the input route stays attached (noref) while the segment is processed, and
 * its device (loopback or the ingress device, or a VRF master) lives in the same
 * namespace. */
static __always_inline u32 segment_netns(struct segment *s)
{
    unsigned long refdst = s->route & ~1UL;    /* SKB_DST_NOREF flag bit */
    void *dev = 0;
    if (!refdst)
        return 0;
    READ(dev, (void *)refdst, OFF_DST_DEV);
    return dev_netns(dev);
}

/* ---------------------------------------------------------------- counting and events */

static __always_inline void bump_stat(u32 slot)
{
    u64 *v = stats.lookup(&slot);
    if (v)
        *v += 1;
}

/* The per-kind total first and unconditionally: a failed insert into the per-peer table
 * (full, or evicted by another CPU in between) must never lose a refusal from the totals.
 * An insert is counted only when this call created the entry (BPF_NOEXIST), so two CPUs
 * racing on the same new peer count one insert and `evicted` is not overstated. */
static __always_inline void count_peer(struct peer_key *k, s64 delta)
{
    u32 kind = k->kind;
    u64 *t = kind_totals.lookup(&kind);
    if (t)
        *t += delta;                   /* per-CPU value: no atomics needed */
    u64 *v = peer_counts.lookup(k);
    if (!v) {
        u64 zero = 0;
        if (peer_counts.insert(k, &zero) == 0)
            bump_stat(STAT_INSERTS);
        v = peer_counts.lookup(k);
        if (!v)
            return;
    }
    *v += delta;
}

/* Event-rate cap (--max-events-per-second); RATE_INTERVAL_NS 0 means no cap. Its clock
 * is jiffies, not bpf_ktime_get_ns(): reading the clock source costs tens of ns on a VM
 * and this runs for every refusal of a flood; only events that pass read it. Within a
 * tick the cap lets a burst through, the long-run rate is the same. */
static __always_inline int rate_allows(void)
{
#if RATE_INTERVAL_NS > 0
    u64 now = bpf_jiffies64() * NS_PER_JIFFY;
    u32 z = 0;
    struct rate_state *r = rate.lookup(&z);
    if (!r)
        return 1;
    u64 tat = r->tat > now ? r->tat : now;
    if (tat > now + RATE_BURST_NS)
        return 0;
    r->tat = tat + RATE_INTERVAL_NS;
#endif
    return 1;
}

/* Never wake the reader: a wake-up per event costs microseconds under a flood. User space
 * drains the ring between polls (every 100 ms), and the ring holds far more than that. */
static __always_inline void submit(struct refusal_event *e)
{
    events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

/* Put one record on the ring buffer; a full ring is counted, never silent. */
static __always_inline void emit(u8 kind, u32 netns, struct segment *s, int peer_is_src,
                                 u32 reason, u16 flags, u64 now)
{
    struct refusal_event *e = events.ringbuf_reserve(sizeof(struct refusal_event));
    if (!e) {
        bump_stat(STAT_LOST);
        return;
    }
    e->ts = now;
    e->netns = netns;
    e->reason = reason;
    e->kind = kind;
    e->family = s->family;
    e->flags = flags;
    if (peer_is_src) {
        e->peer_port = s->sport;
        e->local_port = s->dport;
        __builtin_memcpy(e->peer, s->saddr, 16);
        __builtin_memcpy(e->local, s->daddr, 16);
    } else {
        e->peer_port = s->dport;
        e->local_port = s->sport;
        __builtin_memcpy(e->peer, s->daddr, 16);
        __builtin_memcpy(e->local, s->saddr, 16);
    }
    submit(e);
}

/* Count one refusal, always and exactly. peer_is_src: the peer is the segment's source
 * (inbound) or its destination. */
static __always_inline void count_refusal(u8 kind, u32 netns, struct segment *s,
                                          int peer_is_src)
{
    struct peer_key k = {};
    k.netns = netns;
    k.kind = kind;
    k.family = s->family;
    k.local_port = peer_is_src ? s->dport : s->sport;
    __builtin_memcpy(k.peer, peer_is_src ? s->saddr : s->daddr, 16);
    count_peer(&k, 1);
}

/* May an event go out now? Counts the ones the rate cap holds back. Callers compute
 * anything only the event needs (a reason) after this says yes. */
static __always_inline int event_allowed(void)
{
    if (rate_allows())
        return 1;
    bump_stat(STAT_SUPPRESSED);
    return 0;
}

/* Count one refusal and emit its event unless the rate cap holds it back. */
static __always_inline void report(u8 kind, u32 netns, struct segment *s, int peer_is_src,
                                   u32 reason, u16 flags)
{
    count_refusal(kind, netns, s, peer_is_src);
    if (event_allowed())
        emit(kind, netns, s, peer_is_src, reason, flags, bpf_ktime_get_ns());
}

#endif /* REFUSAL_H */
