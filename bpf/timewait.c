/* The `timewait` family: tw_reuse_out and tw_reuse_in.
 *
 * Neither has a drop reason or a tracepoint of its own. Both end a TIME-WAIT socket early
 * through inet_twsk_deschedule_put(), which cancels its timer: timer:timer_cancel with
 * timer->function == tw_timer_handler. Who cancelled it tells the kind:
 *  - tw_reuse_out: connect() itself, in the task that has just moved its socket
 *    CLOSE->SYN_SENT (tcp_v4_connect() -> inet_hash_connect() -> __inet_check_established()
 *    -> tcp_twsk_unique(); TWRecycled). Peer and local side come from the TIME-WAIT.
 *  - tw_reuse_in: tcp_v4_rcv()/tcp_v6_rcv() in softirq, when tcp_timewait_state_process()
 *    returned TCP_TW_SYN; the listener then processes that very SYN on the same CPU, with
 *    the ISN the TIME-WAIT dictates (tw_snd_nxt + 65537). The cancel only marks the
 *    4-tuple and that ISN here; the SYN's consume decides (syn.c): answered with exactly
 *    that ISN means tw_reuse_in, unanswered (accept queue full) stays a syn_drop. A RST
 *    killing the TIME-WAIT leaves the same mark, but the SYN that follows it gets a fresh
 *    random ISN, so it is not mistaken for a takeover.
 * Other cancels (a RST killing the TIME-WAIT, netns teardown) match neither and are ignored.
 */

#define CONNECT_WINDOW_NS 100000000   /* SYN_SENT -> hash_connect: microseconds; bound it */

struct connecting {
    u64 ts;
    u16 dport;
    u8  family;
    u8  pad[5];
    u8  daddr[16];
};
BPF_TABLE("lru_hash", u64, struct connecting, connecting, 4096);

struct tw_slot {
    u8  valid;
    u8  family;
    u16 local_port;
    u16 peer_port;
    u16 pad;
    u8  local[16];
    u8  peer[16];
    u32 isn;          /* the ISN a takeover answers with: tw_snd_nxt + 65535 + 2 */
};
BPF_PERCPU_ARRAY(tw_taken, struct tw_slot, 1);

/* sock:inet_sock_set_state CLOSE->SYN_SENT: remember which task is connecting where. */
static __always_inline int tw_on_connect(u8 family, u16 dport, const u8 *daddr4,
                                         const u8 *daddr6)
{
    struct connecting c = {};
    c.ts = bpf_ktime_get_ns();
    c.dport = dport;
    c.family = family == AF_INET6 ? 6 : 4;
    if (c.family == 6)
        bpf_probe_read_kernel(c.daddr, 16, daddr6);
    else
        bpf_probe_read_kernel(c.daddr, 4, daddr4);
    u64 task = bpf_get_current_pid_tgid();
    connecting.update(&task, &c);
    return 0;
}

/* The TIME-WAIT's 4-tuple, as the segment it would have answered: peer is the source. */
static __always_inline void tw_segment(void *tw, struct segment *s)
{
    u16 family = 0, dport = 0;
    READ(family, tw, OFF_SKC_FAMILY);
    READ(dport, tw, OFF_SKC_DPORT);
    READ(s->dport, tw, OFF_SKC_NUM);
    s->sport = bpf_ntohs(dport);
    if (family == AF_INET6) {
        s->family = 6;
        READ(s->saddr, tw, OFF_SKC_V6_DADDR);
        READ(s->daddr, tw, OFF_SKC_V6_RCV_SADDR);
    } else {
        s->family = 4;
        bpf_probe_read_kernel(s->saddr, 4, (char *)tw + OFF_SKC_DADDR);
        bpf_probe_read_kernel(s->daddr, 4, (char *)tw + OFF_SKC_RCV_SADDR);
    }
}

/* timer:timer_cancel of a TIME-WAIT timer (the caller checked the function). */
static __always_inline int tw_on_cancel(void *timer)
{
    void *tw = (char *)timer - OFF_TW_TIMER;
    struct segment s = {};
    tw_segment(tw, &s);

    u64 task = bpf_get_current_pid_tgid();
    struct connecting *c = connecting.lookup(&task);
    if (c && bpf_ktime_get_ns() - c->ts < CONNECT_WINDOW_NS && c->dport == s.sport &&
        addr_eq(c->daddr, s.saddr)) {
        connecting.delete(&task);
        report(KIND_TW_REUSE_OUT, sk_netns(tw), &s, 1, REASON_NONE, 0);
        return 0;
    }
    u32 z = 0;
    struct tw_slot *t = tw_taken.lookup(&z);
    if (t) {
        u32 snd_nxt = 0;
        READ(snd_nxt, tw, OFF_SKC_TW_SND_NXT);
        t->isn = snd_nxt + 65535 + 2;   /* tcp_timewait_state_process(), TCP_TW_SYN */
        t->valid = 1;
        t->family = s.family;
        t->peer_port = s.sport;
        t->local_port = s.dport;
        __builtin_memcpy(t->peer, s.saddr, 16);
        __builtin_memcpy(t->local, s.daddr, 16);
    }
    return 0;
}

/* Called for every SYN consumed by a listener: did it just take over a TIME-WAIT on this
 * CPU (same 4-tuple, answered with the TIME-WAIT's ISN)? Clears the mark either way, so a
 * mark never outlives its SYN. */
static __always_inline int tw_took_over(struct segment *s, int answered, u32 isn)
{
    u32 z = 0;
    struct tw_slot *t = tw_taken.lookup(&z);
    if (!t || !t->valid)
        return 0;
    t->valid = 0;
    return answered && isn == t->isn && t->family == s->family &&
           t->peer_port == s->sport && t->local_port == s->dport &&
           addr_eq(t->peer, s->saddr) && addr_eq(t->local, s->daddr);
}
