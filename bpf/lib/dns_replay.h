/* Layouts of the DNS replay maps (bpf/dns_replay.c), mirrored in bpf/dns_replay.py. */
#ifndef NAVSTAR_DNS_REPLAY_H
#define NAVSTAR_DNS_REPLAY_H

#define DNS_REPLAY_KEY_MAX 252          /* query bytes after the ID */
#define DNS_REPLAY_REPLY_MAX 1024       /* reply bytes after the ID; a power of two (see the mask) */
#define DNS_REPLAY_ENTRIES 16384        /* ≈ 22 MiB preallocated: the hot answers, not every one */
#define DNS_REPLAY_STATS 256
#define DNS_REPLAY_CLIENTS 256
#define DNS_REPLAY_LISTEN 16

struct dns_replay_key {
    __u32 len;
    __u8 data[DNS_REPLAY_KEY_MAX];      /* zero after len */
};

#define DNS_REPLAY_TTLS 8                /* records whose TTLs a cached answer counts down */

struct dns_replay_value {
    __u32 generation;                   /* answers only while it equals the control's */
    __u16 len;
    __u16 stat;                         /* index into nv_dns_hits: the resolver's stats key */
    __u64 origin_ns;                    /* 0: TTLs as stored; else they count down from here */
    __u64 until_ns;                     /* 0: until the zones change; else the answer's expiry */
    __u32 ttl_base[DNS_REPLAY_TTLS];    /* each TTL at origin_ns */
    __u16 ttl_offset[DNS_REPLAY_TTLS];  /* where it sits, from the start of the DNS message */
    __u8 ttls;
    __u8 pad[7];
    __u8 data[DNS_REPLAY_REPLY_MAX];
};

struct dns_replay_control {
    __u32 generation;                   /* bumped when the zones change: every entry is stale */
    __u32 pad;
    __u64 alive_until_ns;               /* CLOCK_MONOTONIC; the resolver's heartbeat pushes it on */
};

struct dns_replay_client {              /* LPM trie key: allowed client networks */
    __u32 prefixlen;
    __u32 addr;                         /* network byte order */
};

struct dns_replay_listen {
    __u32 addr;                         /* network byte order */
    __u16 port;                         /* network byte order */
    __u16 pad;
};

#endif
