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
 * with the 8-byte key and the kernel's 48-byte hash element header, one chunk is a 4 KiB
 * allocation. A 10-backend Maglev table (1021 slots) takes two. */
#ifndef NAVSTAR_LB_CHUNK_SLOTS
#define NAVSTAR_LB_CHUNK_SLOTS 1008
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

#ifndef NAVSTAR_MAX_REVNAT
#define NAVSTAR_MAX_REVNAT 262144
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

/* nv_backends value, keyed by a __u32 backend id that is unique per (VIP, backend) pair so the
 * per-backend counter in nv_conns is also a per-VIP counter. */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 flags;          /* NAVSTAR_BACKEND_* */
	__u8 pad;
	__u32 service_id;    /* owning VIP (nv_services value id) */
	__u16 position;      /* index in the VIP's backends (or draining) list, for read-back */
	__u16 pad2;
};

/* nv_maglev key: slot s of a VIP's table is backend_ids[s % CHUNK] of chunk s / CHUNK. */
struct lb4_maglev_key {
	__u32 service_id;
	__u32 chunk;
};

/* nv_maglev value: backend ids by slot. The last chunk is filled by repeating the table from
 * its start, so a reader that still holds a previous table_size finds a live backend while a
 * table is being replaced. */
struct lb4_maglev {
	__u32 backend_ids[NAVSTAR_LB_CHUNK_SLOTS];
};

/* nv_revnat key: which backend a socket was sent to ... */
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
