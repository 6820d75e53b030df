/* Map key/value layouts shared by every attach point.
 *
 * Defined once here and mirrored once in bpf/maps.py (ctypes); tests/unit/test_bpf_layout.py
 * compiles the mirror's sizes and offsets as static assertions against this header.
 * Only plain structs and constants: no bcc macros, so the layout test can include it with clang.
 */
#ifndef NAVSTAR_LAYOUT_H
#define NAVSTAR_LAYOUT_H

#include <linux/types.h>

/* A VIP's slot table (its Maglev lookup, any length) is stored in chunks of this many slots:
 * with the 8-byte key and the kernel's 48-byte hash element header, one chunk is one 4 KiB
 * allocation, and a Maglev table for up to 20 backends (<= 2011 slots) fits in one. */
#ifndef NAVSTAR_LB_CHUNK_SLOTS
#define NAVSTAR_LB_CHUNK_SLOTS 2016
#endif

#ifndef NAVSTAR_MAX_CHUNKS
#define NAVSTAR_MAX_CHUNKS 131072
#endif

#ifndef NAVSTAR_MAX_SERVICES
#define NAVSTAR_MAX_SERVICES 65536
#endif

#ifndef NAVSTAR_MAX_BACKENDS
#define NAVSTAR_MAX_BACKENDS 262144
#endif

/* Slots of nv_peers, a power of two. */
#ifndef NAVSTAR_PEER_SLOTS
#define NAVSTAR_PEER_SLOTS 1048576
#endif

#ifndef NAVSTAR_MAX_REVNAT
#define NAVSTAR_MAX_REVNAT 65536
#endif

/* lb4_backend.flags */
#define NAVSTAR_BACKEND_DRAINING 0x1
/* lb4_service.flags: the table was made from the backend list because minuteman gave none
 * (P2C balancing); read back, such a VIP reports an empty lookup again. */
#define NAVSTAR_SERVICE_IMPLICIT_TABLE 0x1

/* nv_services key: a VIP as the application addresses it (network byte order). */
struct lb4_key {
	__be32 address;
	__be16 port;
	__u8 protocol;      /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

/* nv_services value. */
struct lb4_service {
	__u32 id;            /* service_id of this VIP's nv_maglev chunks */
	__u32 table_size;    /* slots in the table (the Maglev table size) */
	__u16 backend_count; /* backends taking new connections; 0 refuses connects */
	__u16 flags;         /* NAVSTAR_SERVICE_* */
};

/* nv_backends key: a VIP's backend by its index in the VIP's backend list (the numbers in its
 * Maglev table); draining backends, which no table names, from NAVSTAR_DRAINING_INDEX up. */
struct lb4_backend_key {
	__u32 service_id;
	__u32 index;
};

#define NAVSTAR_DRAINING_INDEX 0x10000

/* nv_backends value. counter_id stays with the (VIP, backend) pair while the backend is in the
 * VIP, whatever its index, so its nv_conns counter keeps counting. */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 flags;          /* NAVSTAR_BACKEND_* */
	__u8 pad;
	__u32 counter_id;    /* index into nv_conns */
};

/* nv_maglev key: slot s of a VIP's table is entry s % CHUNK of chunk s / CHUNK. */
struct lb4_maglev_key {
	__u32 service_id;
	__u32 chunk;
};

/* nv_maglev value: backend indices by slot, exactly the Maglev lookup minuteman computed. The
 * last chunk is filled by repeating the table from its start, so a reader that still holds a
 * previous table_size finds a live backend while a table is being replaced. */
struct lb4_maglev {
	__u16 backend_index[NAVSTAR_LB_CHUNK_SLOTS];
};

/* nv_peers value: a connected socket's VIP and the backend it got, in slot cookie % SLOTS.
 * The cookie says whose it is: a slot taken over by a later socket only means the earlier
 * one's getpeername shows its backend again, never someone else's VIP. */
struct lb4_peer {
	__u64 cookie;
	__be32 vip_address;
	__be32 backend_address;
	__be16 vip_port;
	__be16 backend_port;
	__u32 counter_id;    /* the (VIP, backend) pair, for nv_outcomes; 0 once an outcome is counted */
};

/* nv_outcomes value, keyed by counter id: TCP connects through the VIP to that backend that
 * failed. Created at a pair's first failure (healthy pairs cost nothing), then kept counting. */
struct lb4_outcomes {
	__u64 refused;       /* a RST answered the SYN */
	__u64 unanswered;    /* no SYN-ACK before the first SYN retransmission */
};

/* nv_revnat key: which backend an unconnected socket sent to ... */
struct lb4_revnat_key {
	__u64 cookie;        /* bpf_get_socket_cookie() */
	__be32 address;      /* backend */
	__be16 port;
	__u16 pad;
};

/* ... and the VIP the application asked for (recvmsg4 and getpeername4 report it). */
struct lb4_revnat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

#endif /* NAVSTAR_LAYOUT_H */
