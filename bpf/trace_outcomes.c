/* Raw tracepoints: TCP connects through a VIP that fail, for passive backend health.
 *
 * tcp_receive_reset    a socket in SYN_SENT got a RST: refused        (nv_outcomes.refused += 1)
 * tcp_retransmit_skb   a socket in SYN_SENT resends its SYN: no answer
 *                      within the initial RTO (1 s)                   (nv_outcomes.unanswered += 1)
 *
 * Both fire only for rare events (a RST received, a retransmission), anywhere on the host; the
 * socket cookie picks out ours: connect4 stored it, with the (VIP, backend) pair's counter id,
 * in the nv_peers slot it selects, and the first outcome clears that counter id so a socket is
 * counted once. A connect that succeeds costs nothing here: established connects are the
 * pair's new connections (nv_conns) minus its failures, worked out by the agent.
 *
 * These replace a cgroup sock_ops program, which the kernel ran 5-6 times for every TCP connect
 * in the cgroup (TIMEOUT_INIT, RWND_INIT, NEEDS_ECN, TCP_CONNECT_CB, ACTIVE_ESTABLISHED_CB, ...),
 * VIP or not. The raw tracepoint passes a plain `struct sock *`; the offsets of its two fields
 * read here come from the running kernel's BTF (bpf/btf.py), not from possibly older headers.
 */
#include "lib/lb.h"

#ifndef NAVSTAR_SK_STATE_OFFSET
#error "compile with -DNAVSTAR_SK_STATE_OFFSET=<offsetof(struct sock, __sk_common.skc_state)>"
#endif
#ifndef NAVSTAR_SK_COOKIE_OFFSET
#error "compile with -DNAVSTAR_SK_COOKIE_OFFSET=<offsetof(struct sock, __sk_common.skc_cookie)>"
#endif

#define LB4_TCP_SYN_SENT 2

static __always_inline void lb4_count_failure(const void *sk, bool refused)
{
	struct lb4_outcomes first = {};
	struct lb4_outcomes *outcomes;
	struct lb4_peer *peer;
	__u32 counter_id;
	__u64 cookie = 0;
	__u8 state = 0;

	bpf_probe_read_kernel(&state, sizeof(state), sk + NAVSTAR_SK_STATE_OFFSET);
	if (state != LB4_TCP_SYN_SENT)
		return;
	/* connect4 asked for the cookie, so a socket of ours has one (0: never got one). */
	bpf_probe_read_kernel(&cookie, sizeof(cookie), sk + NAVSTAR_SK_COOKIE_OFFSET);
	if (!cookie)
		return;
	peer = lb4_peer_slot(cookie);
	if (!peer || peer->cookie != cookie || !peer->counter_id)
		return;
	counter_id = peer->counter_id;
	peer->counter_id = 0;   /* one outcome per connect */
	outcomes = nv_outcomes.lookup(&counter_id);
	if (!outcomes) {
		/* The pair's first failure; if another CPU creates the entry first, add to that one. */
		if (refused)
			first.refused = 1;
		else
			first.unanswered = 1;
		if (nv_outcomes.insert(&counter_id, &first) == 0)
			return;
		outcomes = nv_outcomes.lookup(&counter_id);
		if (!outcomes)
			return;
	}
	if (refused)
		__sync_fetch_and_add(&outcomes->refused, 1);
	else
		__sync_fetch_and_add(&outcomes->unanswered, 1);
}

/* TP_PROTO(const struct sock *sk) */
int nv_tcp_reset(struct bpf_raw_tracepoint_args *ctx)
{
	lb4_count_failure((const void *)ctx->args[0], true);
	return 0;
}

/* TP_PROTO(const struct sock *sk, const struct sk_buff *skb, int err) */
int nv_tcp_retrans(struct bpf_raw_tracepoint_args *ctx)
{
	lb4_count_failure((const void *)ctx->args[0], false);
	return 0;
}
