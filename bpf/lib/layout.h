/* Map key/value layouts shared by every attach point.
 *
 * Defined once here and mirrored once in bpf/maps.py (ctypes); tests/unit/test_bpf_layout.py
 * compiles the mirror's sizes and offsets as static assertions against this header.
 * Only plain structs and constants: no bcc macros, so the layout test can include it with clang.
 */
#ifndef NAVSTAR_LAYOUT_H
#define NAVSTAR_LAYOUT_H

#include <linux/types.h>

/* Slots in one VIP's socket-LB table. A prime, and 1009 * 4 bytes plus the kernel's hash
 * element header still fits one 4 KiB allocation. Larger Maglev tables are down-sampled. */
#ifndef NAVSTAR_LB_SLOTS
#define NAVSTAR_LB_SLOTS 1009
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

/* nv_services key: a VIP as the application addresses it (network byte order). */
struct lb4_key {
	__be32 address;
	__be16 port;
	__u8 protocol;      /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

/* nv_services value. */
struct lb4_service {
	__u32 id;            /* key of this VIP's nv_maglev table */
	__u16 table_size;    /* slots in use, 1..NAVSTAR_LB_SLOTS */
	__u16 backend_count; /* backends taking new connections; 0 refuses connects */
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

/* nv_maglev value, keyed by service id: backend ids by slot. Every slot is filled, the table
 * repeated cyclically past table_size, so a reader holding an older table_size still picks a
 * live backend while the two entries are being replaced. */
struct lb4_maglev {
	__u32 backend_ids[NAVSTAR_LB_SLOTS];
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
