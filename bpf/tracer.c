/* Entry point compiled by bcc: the shared layout, each family's handlers, and the table of
 * tracepoints that dispatches to them. The TRACEPOINT_PROBEs must live in this file (bcc
 * generates their argument structs only for the main file); they read the tracepoint
 * fields and pass plain values on. tracer/probe/load.py passes every OFF_* (BTF offsets),
 * R_* (drop reasons), SYM_* (symbol ranges), KIND_* and STAT_* (tracer/kinds.py,
 * tracer/probe/abi.py), FAMILY_*, USE_TP_* and tuning define, and bundles the local
 * includes into one text.
 *
 * Which families are built (FAMILY_*) and which probes below exist (USE_TP_*) follow from
 * the methods tracer/kinds.py declares for the selected kinds and this kernel: a hot
 * tracepoint is attached only when a selected kind needs it, and a tracepoint or field
 * this kernel lacks is never compiled against.
 *
 * Every handler returns 0: a non-zero return sends the event on to perf (~500 ns).
 */
#include <linux/types.h>
#include <linux/skbuff.h>      /* enum skb_drop_reason, the type of kfree_skb.reason */
#include <linux/socket.h>
#include <linux/in.h>

#include "refusal.h"
#if FAMILY_TIMEWAIT
#include "timewait.c"
#endif
#if FAMILY_SYN
#include "syn.c"
#endif
#if FAMILY_PAWS
#include "paws.c"
#endif

#if USE_TP_NET_NET_DEV_QUEUE
/* Every packet handed to a device. SYN-ACKs are short: the tracepoint's own len field
 * rejects data segments before any memory read, and the first read (the skb's fields)
 * rejects the ACKs of established connections by their destructor. */
TRACEPOINT_PROBE(net, net_dev_queue)
{
    if (args->len > MAX_SYNACK_LEN)
        return 0;
    syn_on_dev_queue(args->skbaddr);
    return 0;
}
#endif

#if USE_TP_NEIGH_NEIGH_EVENT_SEND_DONE
TRACEPOINT_PROBE(neigh, neigh_event_send_done)
{
    if (args->err)
        syn_on_neigh_deferred();
    return 0;
}
#endif

#if USE_TP_SKB_CONSUME_SKB
/* Every freed packet: reject on the caller's address before any memory read. A raw
 * tracepoint, because the perf form first copies the arguments into a trace record, which
 * costs ~15 ns on every consume_skb in the kernel. Its arguments are those of
 * TP_PROTO(struct sk_buff *skb, void *location) (Linux 6.3+; tracer/kinds.py requires the
 * tracefs format's `location` field for every method that uses it). */
RAW_TRACEPOINT_PROBE(consume_skb)
{
    u64 loc = ctx->args[1];
    if (loc < SYM_TCP_RCV_STATE_PROCESS_START || loc >= SYM_TCP_RCV_STATE_PROCESS_END)
        return 0;
    syn_on_consume((void *)ctx->args[0]);
    return 0;
}
#endif

#if USE_TP_TCP_TCP_RETRANSMIT_SYNACK
TRACEPOINT_PROBE(tcp, tcp_retransmit_synack)
{
    struct segment s = {};
    if (args->family == AF_INET6) {
        s.family = 6;
        bpf_probe_read_kernel(s.saddr, 16, args->saddr_v6);
        bpf_probe_read_kernel(s.daddr, 16, args->daddr_v6);
    } else {
        s.family = 4;
        bpf_probe_read_kernel(s.saddr, 4, args->saddr);
        bpf_probe_read_kernel(s.daddr, 4, args->daddr);
    }
    s.sport = args->sport;
    s.dport = args->dport;
    syn_on_retransmit_synack((void *)args->skaddr, &s);
    return 0;
}
#endif

#if USE_TP_SOCK_INET_SOCK_SET_STATE
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != IPPROTO_TCP)
        return 0;
#if FAMILY_TIMEWAIT
    if (args->oldstate == ST_CLOSE && args->newstate == ST_SYN_SENT)
        return tw_on_connect(args->family, args->dport, args->daddr, args->daddr_v6);
#endif
#if FAMILY_SYN
    syn_on_set_state((void *)args->skaddr, args->oldstate, args->newstate);
#endif
    return 0;
}
#endif

#if USE_TP_SKB_KFREE_SKB
/* Dropped packets with a reason: only the few reasons that can be a refusal get past the
 * first comparison. */
TRACEPOINT_PROBE(skb, kfree_skb)
{
    u32 reason = args->reason;
#if FAMILY_SYN
    int syn = reason == R_TCP_LISTEN_OVERFLOW || reason == R_NO_SOCKET || reason == R_TCP_FLAGS;
#else
    int syn = 0;
#endif
#if FAMILY_PAWS
    int paws = is_paws_reason(reason);
#else
    int paws = 0;
#endif
    if (!syn && !paws)
        return 0;
    if (args->protocol != 0x0800 && args->protocol != 0x86DD)
        return 0;
#ifdef HAVE_RX_SK
    void *rx_sk = (void *)args->rx_sk;
#else
    void *rx_sk = 0;
#endif
#if FAMILY_SYN
    if (syn)
        return syn_on_kfree(args->skbaddr, reason, (u64)args->location, rx_sk);
#endif
#if FAMILY_PAWS
    paws_on_kfree(args->skbaddr, reason, rx_sk);
#endif
    return 0;
}
#endif

#if USE_TP_TIMER_TIMER_CANCEL
/* Every cancelled timer in the kernel: reject on the handler before anything else. */
TRACEPOINT_PROBE(timer, timer_cancel)
{
    void *fn = 0;
    bpf_probe_read_kernel(&fn, sizeof(fn), (char *)args->timer + OFF_TIMER_FUNCTION);
    if ((u64)fn != SYM_TW_TIMER_HANDLER_START)
        return 0;
    tw_on_cancel(args->timer);
    return 0;
}
#endif
