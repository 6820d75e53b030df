/* The socket-LB maps, pinned under NAVSTAR_PIN_DIR so they outlive the agent: every attach
 * point's translation unit includes this, and bcc opens the pin when it exists. */
#ifndef NAVSTAR_MAPS_H
#define NAVSTAR_MAPS_H

#include "layout.h"

#ifndef NAVSTAR_PIN_DIR
#error "compile with -DNAVSTAR_PIN_DIR=\"/sys/fs/bpf/<dir>\""
#endif

BPF_TABLE_PINNED("hash", struct lb4_key, struct lb4_service, nv_services,
		 NAVSTAR_MAX_SERVICES, NAVSTAR_PIN_DIR "/nv_services");
BPF_TABLE_PINNED("hash", struct lb4_backend_key, struct lb4_backend, nv_backends,
		 NAVSTAR_MAX_BACKENDS, NAVSTAR_PIN_DIR "/nv_backends");
/* No preallocation: table chunks are only paid for VIPs that exist. */
BPF_TABLE_PINNED("hash", struct lb4_maglev_key, struct lb4_maglev, nv_maglev,
		 NAVSTAR_MAX_CHUNKS, NAVSTAR_PIN_DIR "/nv_maglev", BPF_F_NO_PREALLOC);
/* New connections per (VIP, backend) counter id; per CPU so the hot path needs no atomics. */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, nv_conns,
		 NAVSTAR_MAX_BACKENDS, NAVSTAR_PIN_DIR "/nv_conns");
/* Unconnected UDP only. Entries of closed sockets are evicted, not deleted. */
BPF_TABLE_PINNED("lru_hash", struct lb4_revnat_key, struct lb4_revnat, nv_revnat,
		 NAVSTAR_MAX_REVNAT, NAVSTAR_PIN_DIR "/nv_revnat");

/* Connected sockets' VIP, direct-mapped by socket cookie: an array slot costs connect4 a few
 * stores where a hash insert (and a delete when the socket closes) would cost a lock and an
 * allocation each. */
BPF_TABLE_PINNED("array", __u32, struct lb4_peer, nv_peers, NAVSTAR_PEER_SLOTS, NAVSTAR_PIN_DIR "/nv_peers");

/* Failed TCP connects of (VIP, backend) pairs that have failed at least once; feeds passive
 * health. Small by construction, so the agent can read all of it often. */
BPF_TABLE_PINNED("hash", __u32, struct lb4_outcomes, nv_outcomes, NAVSTAR_MAX_BACKENDS,
		 NAVSTAR_PIN_DIR "/nv_outcomes", BPF_F_NO_PREALLOC);

#endif /* NAVSTAR_MAPS_H */
