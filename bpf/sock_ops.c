/* cgroup/sock_ops: how each TCP connect through a VIP ends, for passive backend health.
 *
 * TCP_CONNECT_CB      a socket connect4 sent to a backend (its nv_peers slot is its own):
 *                     ask for state-change and retransmission-timeout callbacks
 * ACTIVE_ESTABLISHED  the SYN-ACK came: established += 1 (if the pair has failed before)
 * RTO_CB in SYN_SENT  no answer before the first SYN retransmission: failed += 1
 * STATE_CB SYN_SENT -> CLOSE   refused or reset: failed += 1
 * Callbacks are switched off again after the first outcome, so an established connection
 * costs nothing more.
 */
#include "lib/lb.h"

static __always_inline struct lb4_peer *lb4_own_peer(struct bpf_sock_ops *skops)
{
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct lb4_peer *peer = lb4_peer_slot(cookie);

	return peer && peer->cookie == cookie ? peer : 0;
}

static __always_inline void lb4_count_outcome(struct bpf_sock_ops *skops, bool established)
{
	struct lb4_peer *peer = lb4_own_peer(skops);
	struct lb4_outcomes *outcomes;
	struct lb4_outcomes first = {};
	__u32 counter_id;

	if (!peer)
		return;
	counter_id = peer->counter_id;
	outcomes = nv_outcomes.lookup(&counter_id);
	if (outcomes) {
		if (established)
			__sync_fetch_and_add(&outcomes->established, 1);
		else
			__sync_fetch_and_add(&outcomes->failed, 1);
		return;
	}
	if (established)
		return;   /* only pairs that have failed are followed */
	first.failed = 1;
	if (nv_outcomes.insert(&counter_id, &first) != 0) {
		/* Another CPU created it first. */
		outcomes = nv_outcomes.lookup(&counter_id);
		if (outcomes)
			__sync_fetch_and_add(&outcomes->failed, 1);
	}
}

#define LB4_OUTCOME_FLAGS (BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG)

/* Other sock_ops programs (multi-attach) may use other callbacks: touch only ours. */
static __always_inline void lb4_follow(struct bpf_sock_ops *skops, bool on)
{
	__u32 flags = skops->bpf_sock_ops_cb_flags;

	bpf_sock_ops_cb_flags_set(skops, on ? flags | LB4_OUTCOME_FLAGS : flags & ~LB4_OUTCOME_FLAGS);
}

int nv_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		if (lb4_own_peer(skops))
			lb4_follow(skops, true);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		/* Sockets that did not go through a VIP never had the flags set: skip them cheaply. */
		if (!(skops->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG))
			break;
		lb4_count_outcome(skops, true);
		lb4_follow(skops, false);
		break;
	case BPF_SOCK_OPS_RTO_CB:
		if (skops->state == BPF_TCP_SYN_SENT) {
			lb4_count_outcome(skops, false);
			lb4_follow(skops, false);
		}
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[0] == BPF_TCP_SYN_SENT && skops->args[1] == BPF_TCP_CLOSE) {
			lb4_count_outcome(skops, false);
			lb4_follow(skops, false);
		}
		break;
	}
	return 1;
}
