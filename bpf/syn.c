/* The `syn` family: syn_drop, ack_drop, syn_cookie, cookie_fail, synack_retrans.
 *
 * Mirrors tcp_conn_request() (net/ipv4/tcp_input.c), tcp_check_req() and cookie_v4_check()
 * / cookie_v6_check() (net/ipv4/syncookies.c, net/ipv6/syncookies.c) as of Linux 6.18.
 * docs/KERNELS.md explains each decision; the comments here say which kernel path a check
 * mirrors.
 *
 * syn_drop has no drop reason and no tracepoint of its own: tcp_conn_request() returns
 * after dropping a SYN and tcp_rcv_state_process() frees it with consume_skb(), exactly as
 * it frees an answered SYN. So a SYN consumed there is a drop unless this CPU queued a
 * SYN-ACK for its reversed 4-tuple while processing it ("answer evidence", per-CPU slot).
 * When the SYN-ACK waits for ARP/ND it leaves only after the consume: such SYNs are counted
 * as dropped, remembered in `pending`, and retracted if their SYN-ACK shows up within
 * GRACE_NS; user space holds their events for that long.
 */

struct answer_slot {
    u8  valid;        /* a SYN-ACK left on this CPU since the last SYN consume */
    u8  cookie;       /* ... and it carried a SYN cookie (skb->sk == NULL) */
    u8  deferred;     /* a packet was queued for neighbour resolution since then */
    u8  family;
    u16 sport;        /* SYN-ACK source port (local) */
    u16 dport;        /* SYN-ACK destination port (peer) */
    u8  saddr[16];
    u8  daddr[16];
    u32 seq;          /* SYN-ACK sequence number (our ISN) */
};
BPF_PERCPU_ARRAY(answer, struct answer_slot, 1);

/* syn_drops that may still be answered late, by the SYN-ACK's 4-tuple. */
struct pending_key {
    u32 netns;
    u8  family;
    u8  pad;
    u16 local_port;
    u16 peer_port;
    u16 pad2;
    u8  local[16];
    u8  peer[16];
};
BPF_TABLE("lru_hash", struct pending_key, u64, pending, 8192);

/* Listening sockets by (netns, address, port), for the syn_drop reason. Up to
 * LISTEN_SLOTS sockets per key: an SO_REUSEPORT group shares one key. */
#define LISTEN_SLOTS 4
struct listen_key {
    u32 netns;
    u16 port;
    u8  family;
    u8  pad;
    u8  addr[16];
};
struct listen_val { u64 sk[LISTEN_SLOTS]; };
BPF_HASH(listeners, struct listen_key, struct listen_val, 16384);

/* ---------------------------------------------------------------- listeners */

static __always_inline void listener_key_of(void *sk, u32 netns, struct listen_key *k)
{
    u16 family = 0;
    READ(family, sk, OFF_SKC_FAMILY);
    READ(k->port, sk, OFF_SKC_NUM);
    k->netns = netns;
    if (family == AF_INET6) {
        k->family = 6;
        READ(k->addr, sk, OFF_SKC_V6_RCV_SADDR);
    } else {
        k->family = 4;
        bpf_probe_read_kernel(k->addr, 4, (char *)sk + OFF_SKC_RCV_SADDR);
    }
}

static __always_inline void learn_listener(void *sk, u32 netns)
{
    struct listen_key k = {};
    listener_key_of(sk, netns, &k);
    struct listen_val *v = listeners.lookup(&k);
    if (!v) {
        struct listen_val nv = {};
        nv.sk[0] = (u64)sk;
        listeners.update(&k, &nv);
        return;
    }
    int free_slot = -1;
    #pragma unroll
    for (int i = 0; i < LISTEN_SLOTS; i++) {
        if (v->sk[i] == (u64)sk)
            return;
        if (!v->sk[i] && free_slot < 0)
            free_slot = i;
    }
    if (free_slot >= 0 && free_slot < LISTEN_SLOTS)
        v->sk[free_slot] = (u64)sk;
}

static __always_inline void forget_listener(void *sk, u32 netns)
{
    struct listen_key k = {};
    listener_key_of(sk, netns, &k);
    struct listen_val *v = listeners.lookup(&k);
    if (!v)
        return;
    int left = 0;
    #pragma unroll
    for (int i = 0; i < LISTEN_SLOTS; i++) {
        if (v->sk[i] == (u64)sk)
            v->sk[i] = 0;
        else if (v->sk[i])
            left = 1;
    }
    if (!left)
        listeners.delete(&k);
}

static __always_inline u8 netns_syncookies(void *sk)
{
    void *net = 0;
    u8 v = 1;
    READ(net, sk, OFF_SKC_NET);
    if (net)
        READ(v, net, OFF_NET_TCP_SYNCOOKIES);
    return v;
}

/* Which queue of this listener is full, tested in tcp_conn_request()'s own order: the SYN
 * queue first (inet_csk_reqsk_queue_is_full, and only a drop when syncookies is 0), then
 * the accept queue (sk_acceptq_is_full: ack_backlog > max_ack_backlog). */
static __always_inline u32 queue_reason(void *sk)
{
    u32 ack_backlog = 0, max_backlog = 0;
    int qlen = 0;
    READ(ack_backlog, sk, OFF_SK_ACK_BACKLOG);
    READ(max_backlog, sk, OFF_SK_MAX_ACK_BACKLOG);
    READ(qlen, sk, OFF_ICSK_SYNQ_QLEN);
#if SYNQ_FULL_AT_MAX   /* 5.4 and 6.8.0 test qlen >= max */
    int synq_full = qlen >= (int)max_backlog;
#else
    int synq_full = qlen > (int)max_backlog;
#endif
    if (synq_full && netns_syncookies(sk) == 0)
        return REASON_SYN_QUEUE_FULL;
    if (ack_backlog > max_backlog)
        return REASON_ACCEPT_QUEUE_FULL;
    return REASON_NONE;
}

static __always_inline u32 reason_for_key(struct listen_key *k)
{
    struct listen_val *v = listeners.lookup(k);
    if (!v)
        return REASON_NONE;
    #pragma unroll
    for (int i = 0; i < LISTEN_SLOTS; i++) {
        void *sk = (void *)v->sk[i];
        if (sk) {
            u32 r = queue_reason(sk);
            if (r != REASON_NONE)
                return r;   /* SO_REUSEPORT: the full one is the one that dropped */
        }
    }
    return REASON_NONE;
}

/* The listener a SYN reached: bound to its address, or to the wildcard of its family, or
 * (IPv4 SYN) to the IPv6 wildcard of a dual-stack socket. Unknown until learned. */
static __always_inline u32 syn_drop_reason(u32 netns, struct segment *s)
{
    struct listen_key k = {};
    k.netns = netns;
    k.port = s->dport;
    k.family = s->family;
    __builtin_memcpy(k.addr, s->daddr, 16);
    u32 r = reason_for_key(&k);
    if (r != REASON_NONE)
        return r;
    __builtin_memset(k.addr, 0, 16);
    r = reason_for_key(&k);
    if (r != REASON_NONE || s->family == 6)
        return r;
    k.family = 6;
    return reason_for_key(&k);
}

/* ---------------------------------------------------------------- answer evidence */

/* A segment sent by __tcp_transmit_skb() of a full socket: it sets skb->destructor to
 * tcp_wfree (data) or __sock_wfree (pure ACK) (4.x to 6.18). A listener's SYN-ACK never
 * is one: tcp_make_synack() gives it sock_edemux or sock_wfree (request sock, fast open),
 * or no owner at all (cookie). So this test skips every ordinary ACK; a symbol missing
 * from kallsyms (0) disables its half. */
static __always_inline int from_full_tcp_socket(struct skb_view *v)
{
#if SYM_TCP_WFREE_START
    if (v->destructor == SYM_TCP_WFREE_START)
        return 1;
#endif
#if SYM_SOCK_WFREE_START
    if (v->destructor == SYM_SOCK_WFREE_START)
        return 1;
#endif
    return 0;
}

/* net:net_dev_queue of a packet short enough to be a SYN-ACK. */
static __always_inline int syn_on_dev_queue(void *skb)
{
    struct skb_view v = {};
    if (read_skb(skb, &v) || from_full_tcp_socket(&v))
        return 0;
    /* Under a SYN flood every SYN passes here too: look at the flags before parsing. */
    u8 flags = 0;
    bpf_probe_read_kernel(&flags, 1, v.head + v.th + 13);
    if ((flags & (TCP_SYN | TCP_ACK | TCP_RST)) != (TCP_SYN | TCP_ACK))
        return 0;
    struct segment s = {};
    if (parse_view(&v, &s) || (s.flags & (TCP_SYN | TCP_ACK | TCP_RST)) != (TCP_SYN | TCP_ACK))
        return 0;
    void *owner = 0, *dev = 0;
    READ(owner, skb, OFF_SKB_SK);
    u32 z = 0;
    struct answer_slot *a = answer.lookup(&z);
    if (!a)
        return 0;
    /* tcp_make_synack() attaches normal SYN-ACKs to their request sock, fast-open ones to
     * the child, and cookie SYN-ACKs to no socket (TCP_SYNACK_COOKIE). */
    a->valid = 1;
    a->cookie = owner == 0;
    a->family = s.family;
    a->sport = s.sport;
    a->dport = s.dport;
    a->seq = s.seq;
    __builtin_memcpy(a->saddr, s.saddr, 16);
    __builtin_memcpy(a->daddr, s.daddr, 16);

    /* A late answer (after ARP/ND) to a SYN already counted as dropped: retract it. */
    READ(dev, skb, OFF_SKB_DEV);
    struct pending_key pk = {};
    pk.netns = dev_netns(dev);
    pk.family = s.family;
    pk.local_port = s.sport;
    pk.peer_port = s.dport;
    __builtin_memcpy(pk.local, s.saddr, 16);
    __builtin_memcpy(pk.peer, s.daddr, 16);
    u64 *since = pending.lookup(&pk);
    if (!since)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 at = *since;
    pending.delete(&pk);
    a->valid = 0;                      /* its SYN is gone: nothing will consume this slot */
    if (now - at > GRACE_NS)
        return 0;
    struct peer_key k = {};
    k.netns = pk.netns;
    k.kind = KIND_SYN_DROP;
    k.family = s.family;
    k.local_port = s.sport;
    __builtin_memcpy(k.peer, s.daddr, 16);
    count_peer(&k, -1);
    emit(RECORD_RETRACT, pk.netns, &s, 0, REASON_NONE, 0, now);
    if (owner == 0)
        report(KIND_SYN_COOKIE, pk.netns, &s, 0, REASON_NONE, 0);
    return 0;
}

/* neigh:neigh_event_send_done with err 1: __neigh_event_send() queued a packet until
 * ARP/ND completes. Rare (only unresolved neighbours get there). */
static __always_inline void syn_on_neigh_deferred(void)
{
    u32 z = 0;
    struct answer_slot *a = answer.lookup(&z);
    if (a)
        a->deferred = 1;
}

/* ---------------------------------------------------------------- syn_drop, syn_cookie */

/* skb:consume_skb inside tcp_rcv_state_process(): only its TCP_LISTEN branch consumes a
 * SYN (after conn_request), on IPv4 and IPv6 alike. */
static __always_inline int syn_on_consume(void *skb)
{
    struct segment s = {};
    if (parse_segment(skb, &s) || (s.flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK)) != TCP_SYN)
        return 0;
    u32 z = 0;
    struct answer_slot *a = answer.lookup(&z);
    if (!a)
        return 0;
    int answered = a->valid && a->family == s.family && a->sport == s.dport &&
                   a->dport == s.sport && addr_eq(a->saddr, s.daddr) &&
                   addr_eq(a->daddr, s.saddr);
    int cookie = a->cookie, deferred = a->deferred;
    u32 isn = a->seq;
    a->valid = 0;
    a->deferred = 0;

#if FAMILY_TIMEWAIT
    int took_tw = tw_took_over(&s, answered, isn);   /* timewait.c */
#else
    int took_tw = 0;
#endif
    if (answered) {
        /* An ordinary answered SYN (every accepted connection) stops here, without the
         * namespace reads. */
        if (took_tw)
            report(KIND_TW_REUSE_IN, segment_netns(&s), &s, 1, REASON_NONE, 0);
        else if (cookie)
            report(KIND_SYN_COOKIE, segment_netns(&s), &s, 1, REASON_NONE, 0);
        return 0;
    }
    u32 netns = segment_netns(&s);
    u16 flags = 0;
    if (deferred) {
        /* Its SYN-ACK may be waiting for ARP/ND: decide when it leaves, or not. */
        struct pending_key pk = {};
        pk.netns = netns;
        pk.family = s.family;
        pk.local_port = s.dport;
        pk.peer_port = s.sport;
        __builtin_memcpy(pk.local, s.daddr, 16);
        __builtin_memcpy(pk.peer, s.saddr, 16);
        u64 now = bpf_ktime_get_ns();
        pending.update(&pk, &now);
        flags = EVF_PENDING;
    }
    /* The queue that was full is only worth its lookups when an event goes out: under a
     * flood most refusals are counted but capped. */
    count_refusal(KIND_SYN_DROP, netns, &s, 1);
    if (event_allowed())
        emit(KIND_SYN_DROP, netns, &s, 1, syn_drop_reason(netns, &s), flags,
             bpf_ktime_get_ns());
    return 0;
}

/* ---------------------------------------------------------------- ack_drop, cookie_fail */

/* The listener's last SYN-queue overflow was less than TCP_SYNCOOKIE_VALID ago: mirrors
 * tcp_synq_no_recent_overflow() (include/net/tcp.h), which gates cookie checking. */
static __always_inline int recent_overflow(void *sk)
{
    u32 last = 0;
    u8 reuse = 0;
    int found = 0;
    READ(reuse, sk, OFF_SKC_REUSEPORT_BYTE);
    if (reuse & SKC_REUSEPORT_MASK) {
        void *cb = 0;
        READ(cb, sk, OFF_SK_REUSEPORT_CB);
        if (cb) {
            READ(last, cb, OFF_REUSE_SYNQ_OVERFLOW_TS);
            found = 1;
        }
    }
    if (!found)
        READ(last, sk, OFF_TP_TS_RECENT_STAMP);
    u32 now = (u32)bpf_jiffies64();
    return (u32)(now - last) <= SYNCOOKIE_VALID_JIFFIES;
}

/* skb:kfree_skb with one of the three reasons a syn-family refusal can have. */
static __always_inline int syn_on_kfree(void *skb, u32 reason, u64 loc, void *sk)
{
    u8 state = 0;
    if (sk)
        READ(state, sk, OFF_SKC_STATE);

    u8 kind;
    if (reason == R_TCP_LISTEN_OVERFLOW) {
        /* tcp_check_req() -> syn_recv_sock() found the accept queue full (6.15+). */
        kind = KIND_ACK_DROP;
    } else if (reason == R_NO_SOCKET) {
        /* Valid cookie, but cookie_v4_check()/cookie_v6_check() could not create the child
         * (accept queue full). NO_SOCKET anywhere else is a closed port (RST sent). */
        if (!loc_in(loc, SYM_COOKIE_V4_CHECK_START, SYM_COOKIE_V4_CHECK_END) &&
            !loc_in(loc, SYM_COOKIE_V6_CHECK_START, SYM_COOKIE_V6_CHECK_END))
            return 0;
        kind = KIND_ACK_DROP;
    } else {
        /* TCP_FLAGS: an ACK reached a listener and tcp_v{4,6}_do_rcv() reset it. It is a
         * failed cookie only if cookie_v{4,6}_check() really checked it: syncookies on,
         * ACK without SYN/RST, and a SYN-queue overflow in the last two minutes. */
        if (!sk || state != ST_LISTEN)
            return 0;
        if (!loc_in(loc, SYM_TCP_V4_DO_RCV_START, SYM_TCP_V4_DO_RCV_END) &&
            !loc_in(loc, SYM_TCP_V6_DO_RCV_START, SYM_TCP_V6_DO_RCV_END))
            return 0;
        if (netns_syncookies(sk) == 0 || !recent_overflow(sk))
            return 0;
        kind = KIND_COOKIE_FAIL;
    }
    struct segment s = {};
    if (parse_segment(skb, &s))
        return 0;
    if (kind == KIND_COOKIE_FAIL && (s.flags & (TCP_SYN | TCP_RST | TCP_ACK)) != TCP_ACK)
        return 0;
    u32 netns = sk ? sk_netns(sk) : segment_netns(&s);
    if (sk && state == ST_LISTEN)
        learn_listener(sk, netns);
    report(kind, netns, &s, 1, reason, 0);
    return 0;
}

/* ---------------------------------------------------------------- synack_retrans */

/* tcp:tcp_retransmit_synack: tcp_rtx_synack() fires it after the SYN-ACK left and
 * TCPSynRetrans was counted. The caller fills s from the request sock's addresses. */
static __always_inline int syn_on_retransmit_synack(void *lsk, struct segment *sp)
{
    struct segment s = *sp;
    u32 netns = sk_netns(lsk);
    u8 state = 0;
    if (lsk)
        READ(state, lsk, OFF_SKC_STATE);
    /* A Fast Open SYN-ACK is retransmitted by the child socket (SYN_RECV), not the
     * listener: only a listener is learned, or children would fill its slots. */
    if (state == ST_LISTEN)
        learn_listener(lsk, netns);
    /* The answer slot now holds this retransmission, not an answer to a new SYN. */
    u32 z = 0;
    struct answer_slot *a = answer.lookup(&z);
    if (a && a->valid && a->sport == s.sport && a->dport == s.dport &&
        addr_eq(a->daddr, s.daddr))
        a->valid = 0;
    report(KIND_SYNACK_RETRANS, netns, &s, 0, REASON_NONE, 0);
    return 0;
}

/* ---------------------------------------------------------------- listener lifecycle */

/* sock:inet_sock_set_state of a TCP socket. */
static __always_inline int syn_on_set_state(void *sk, int oldstate, int newstate)
{
    if (newstate == ST_LISTEN)
        learn_listener(sk, sk_netns(sk));
    else if (oldstate == ST_LISTEN && newstate == ST_CLOSE)
        /* Only LISTEN->CLOSE of the listener itself: its children show LISTEN->SYN_RECV. */
        forget_listener(sk, sk_netns(sk));
    return 0;
}
