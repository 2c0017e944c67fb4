/* The `paws` family: tw_paws, paws, paws_active. All three are kfree_skb with a PAWS drop
 * reason (Linux 5.19+; TCP_RFC7323_PAWS_ACK 6.14+, TCP_RFC7323_TSECR 6.15+,
 * TCP_RFC7323_TW_PAWS 6.16+); what tells them apart is the socket that refused the segment
 * (rx_sk, 6.11+) and the segment's flags. A reason this kernel lacks is defined as
 * 0xffffffff by the loader and never matches.
 */

static __always_inline int is_paws_reason(u32 reason)
{
    return reason == R_TCP_RFC7323_PAWS || reason == R_TCP_RFC7323_PAWS_ACK ||
           reason == R_TCP_RFC7323_TSECR || reason == R_TCP_RFC7323_TW_PAWS;
}

static __always_inline int paws_on_kfree(void *skb, u32 reason, void *sk)
{
    u8 state = 0;
    if (sk)
        READ(state, sk, OFF_SKC_STATE);
    struct segment s = {};
    if (parse_segment(skb, &s))
        return 0;
    u8 kind;
    if (reason == R_TCP_RFC7323_TW_PAWS) {
        /* tcp_timewait_state_process(): a reconnecting SYN older than the TIME-WAIT's
         * ts_recent. FINs, ACKs and RSTs reaching a TIME-WAIT are not refusals. */
        if (state != ST_TIME_WAIT ||
            (s.flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK)) != TCP_SYN)
            return 0;
        kind = KIND_TW_PAWS;
    } else if (reason == R_TCP_RFC7323_PAWS && state == ST_SYN_SENT) {
        /* tcp_rcv_synsent_state_process(): a SYN-ACK whose TSecr lies outside
         * [retrans_stamp, now] (PAWSActive); tcp_v4_do_rcv() answers it with a RST. A
         * segment without ACK fails the same test silently, without a counter: skip it. */
        if ((s.flags & (TCP_SYN | TCP_ACK | TCP_RST)) != (TCP_SYN | TCP_ACK))
            return 0;
        kind = KIND_PAWS_ACTIVE;
    } else {
        /* tcp_validate_incoming() on a synchronized socket (PAWSEstab, PAWSOldAck), or
         * tcp_check_req() refusing an ACK to a request sock (rx_sk is the listener). */
        kind = KIND_PAWS;
    }
    u32 netns = sk ? sk_netns(sk) : segment_netns(&s);
    report(kind, netns, &s, 1, reason, 0);
    return 0;
}
