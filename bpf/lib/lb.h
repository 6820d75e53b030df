/* Socket-LB helpers shared by the attach points: VIP lookup, backend choice, reverse NAT.
 *
 * Reverse NAT has two homes. A connected socket (TCP, or UDP after connect()) has one peer, so
 * connect4 writes (cookie, VIP, backend) into the nv_peers slot its cookie selects. An
 * unconnected UDP socket may send to several VIPs, so sendmsg4 records (cookie, backend) -> VIP
 * in the LRU map nv_revnat.
 *
 * Features (-D flags, set by bpf/loader.py):
 *   NAVSTAR_RANDOM_SLOT        1: a random slot per connection; 0: a hash of the socket cookie,
 *                              so every datagram of one UDP socket reaches the same backend
 *   NAVSTAR_COUNT_CONNECTIONS  1: count new connections per backend in nv_conns
 */
#ifndef NAVSTAR_LB_H
#define NAVSTAR_LB_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>

#include "maps.h"

#ifndef NAVSTAR_RANDOM_SLOT
#define NAVSTAR_RANDOM_SLOT 0
#endif
#ifndef NAVSTAR_COUNT_CONNECTIONS
#define NAVSTAR_COUNT_CONNECTIONS 1
#endif

/* cgroup sock_addr verdicts */
#define SOCK_ADDR_ALLOW 1
#define SOCK_ADDR_REFUSE 0   /* the syscall fails with EPERM: a VIP without backends fails fast */

static __always_inline __u32 lb4_flow_hash(__u64 cookie)
{
#if NAVSTAR_RANDOM_SLOT
	return bpf_get_prandom_u32();
#else
	/* Cookies are sequential; murmur3's 64-bit finaliser spreads them over the slots. */
	__u64 h = cookie;

	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return (__u32)h;
#endif
}

static __always_inline struct lb4_service *lb4_lookup_service(__be32 address, __be16 port, __u8 protocol)
{
	struct lb4_key key = {};

	key.address = address;
	key.port = port;
	key.protocol = protocol;
	return nv_services.lookup(&key);
}

static __always_inline struct lb4_peer *lb4_peer_slot(__u64 cookie)
{
	__u32 slot = (__u32)cookie & (NAVSTAR_PEER_SLOTS - 1);

	return nv_peers.lookup(&slot);
}

/* connect4: the socket's one peer is this VIP, reached through this backend. */
static __always_inline void lb4_remember_peer(__u64 cookie, const struct lb4_backend *backend,
					      __be32 vip_address, __be16 vip_port)
{
	struct lb4_peer *peer = lb4_peer_slot(cookie);

	if (!peer)
		return;
	peer->cookie = cookie;
	peer->vip_address = vip_address;
	peer->backend_address = backend->address;
	peer->vip_port = vip_port;
	peer->backend_port = backend->port;
	peer->counter_id = backend->counter_id;
}

/* sendmsg4: this unconnected socket sent to this backend for this VIP (and connect4 for a UDP
 * socket, whose replies recvmsg4 must keep showing from the VIP after its nv_peers slot has gone
 * to a newer connect). */
static __always_inline void lb4_record_revnat(__u64 cookie, const struct lb4_backend *backend,
					      __be32 vip_address, __be16 vip_port)
{
	struct lb4_revnat_key key = {};
	struct lb4_revnat vip = {};
	struct lb4_revnat *known;

	key.cookie = cookie;
	key.address = backend->address;
	key.port = backend->port;
	/* Runs per datagram: write only when the entry is new or stale. */
	known = nv_revnat.lookup(&key);
	if (known && known->address == vip_address && known->port == vip_port)
		return;
	vip.address = vip_address;
	vip.port = vip_port;
	nv_revnat.update(&key, &vip);
}

/* connect4 and sendmsg4: a VIP destination becomes one of its backends.
 * Returns SOCK_ADDR_ALLOW (also for any non-VIP destination) or SOCK_ADDR_REFUSE. */
static __always_inline int lb4_xlate_fwd(struct bpf_sock_addr *ctx, bool connecting)
{
	__be32 vip_address = ctx->user_ip4;
	__be16 vip_port = (__be16)ctx->user_port;
	__u8 protocol = (__u8)ctx->protocol;
	struct lb4_service *service, svc;
	struct lb4_maglev_key chunk = {};
	struct lb4_backend_key member = {};
	struct lb4_maglev *table;
	struct lb4_backend *backend, be;
	__u32 slot, index;
	__u64 cookie;

	if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
		return SOCK_ADDR_ALLOW;
	service = lb4_lookup_service(vip_address, vip_port, protocol);
	if (!service)
		return SOCK_ADDR_ALLOW;
	/* One read of the value, used throughout: the agent may rewrite the element in place
	 * meanwhile (preallocated hash elements are recycled), and fields from two versions
	 * must not mix. */
	svc = *service;
	if (svc.backend_count == 0 || svc.table_size == 0)
		return SOCK_ADDR_REFUSE;
	cookie = bpf_get_socket_cookie(ctx);
	slot = lb4_flow_hash(cookie) % svc.table_size;
	chunk.service_id = svc.id;
	chunk.chunk = slot / NAVSTAR_LB_CHUNK_SLOTS;
	table = nv_maglev.lookup(&chunk);
	if (!table)
		return SOCK_ADDR_REFUSE;
	index = slot % NAVSTAR_LB_CHUNK_SLOTS;
	/* The verifier does not bound a modulo and clang drops a check it can prove, so hide the
	 * value from clang (libbpf's barrier_var) and bound it for the verifier. */
	asm volatile("" : "+r"(index));
	if (index >= NAVSTAR_LB_CHUNK_SLOTS)
		return SOCK_ADDR_REFUSE;
	member.service_id = chunk.service_id;
	member.index = table->backend_index[index];
	backend = nv_backends.lookup(&member);
	if (!backend)
		return SOCK_ADDR_REFUSE;
	be = *backend;     /* one read, as for the service */

	if (connecting)
		lb4_remember_peer(cookie, &be, vip_address, vip_port);
	if (!connecting || protocol == IPPROTO_UDP)
		lb4_record_revnat(cookie, &be, vip_address, vip_port);
#if NAVSTAR_COUNT_CONNECTIONS
	__u32 counter_id = be.counter_id;
	__u64 *connections = nv_conns.lookup(&counter_id);
	if (connections)
		*connections += 1;
#endif
	ctx->user_ip4 = be.address;
	ctx->user_port = be.port;
	return SOCK_ADDR_ALLOW;
}

/* recvmsg4 and getpeername4: a backend address this socket was sent to is reported as the VIP,
 * as long as that VIP still exists. */
static __always_inline void lb4_xlate_rev(struct bpf_sock_addr *ctx)
{
	__be32 address = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct lb4_peer *peer = lb4_peer_slot(cookie);
	struct lb4_revnat_key key = {};
	struct lb4_revnat *revnat;
	__be32 vip_address;
	__be16 vip_port;

	if (peer && peer->cookie == cookie && peer->backend_address == address && peer->backend_port == port) {
		vip_address = peer->vip_address;
		vip_port = peer->vip_port;
	} else {
		key.cookie = cookie;
		key.address = address;
		key.port = port;
		revnat = nv_revnat.lookup(&key);
		if (!revnat)
			return;
		vip_address = revnat->address;
		vip_port = revnat->port;
	}
	if (!lb4_lookup_service(vip_address, vip_port, (__u8)ctx->protocol))
		return;
	ctx->user_ip4 = vip_address;
	ctx->user_port = vip_port;
}

#endif /* NAVSTAR_LB_H */
