/* The DNS replay table in the kernel: a UDP query on a listen address whose bytes after the ID
 * equal a query the resolver answered from its own zones is answered here, at tc ingress, with
 * the stored reply (the query's ID kept) — the resolver process never sees it. Anything else
 * (a miss, another generation, a client outside the allowed networks, the resolver silent past
 * its heartbeat, IP options or fragments, a reply over REPLY_MAX) passes on unchanged. A cached
 * forwarded answer carries where its TTLs are: they are written counted down, as the resolver
 * would, until the answer expires.
 *
 * The packet becomes its own reply: addresses and ports swapped, the payload resized to the
 * reply, the IP checksum recomputed and the UDP checksum left 0 (allowed for IPv4).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/udp.h>

#include "lib/dns_replay.h"

#define HEADERS (ETH_HLEN + 20 + 8)

BPF_PERCPU_ARRAY(nv_dns_scratch, struct dns_replay_key, 1);      /* the key is too big for the stack */
BPF_TABLE("lru_hash", struct dns_replay_key, struct dns_replay_value, nv_dns_replay, DNS_REPLAY_ENTRIES);
BPF_ARRAY(nv_dns_control, struct dns_replay_control, 1);
BPF_PERCPU_ARRAY(nv_dns_hits, u64, DNS_REPLAY_STATS);
BPF_LPM_TRIE(nv_dns_clients, struct dns_replay_client, u8, DNS_REPLAY_CLIENTS);
BPF_HASH(nv_dns_listen, struct dns_replay_listen, u8, DNS_REPLAY_LISTEN);

static __always_inline u16 ipv4_checksum(struct iphdr *ip) {
    u32 sum = 0;
    u16 *words = (u16 *)ip;
#pragma unroll
    for (int i = 0; i < 10; i++)
        sum += words[i];
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return ~sum;
}

int nv_dns_answer(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != htons(ETH_P_IP))
        return TC_ACT_OK;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP || (ip->frag_off & htons(0x3fff)))
        return TC_ACT_OK;
    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > end)
        return TC_ACT_OK;
    struct dns_replay_listen where = {.addr = ip->daddr, .port = udp->dest};
    if (!nv_dns_listen.lookup(&where))
        return TC_ACT_OK;
    u32 saddr = ip->saddr, daddr = ip->daddr;
    struct dns_replay_client client = {.prefixlen = 32, .addr = saddr};
    if (!nv_dns_clients.lookup(&client))
        return TC_ACT_OK;               /* the resolver drops it and counts the drop */
    u32 zero = 0;
    u64 now = bpf_ktime_get_ns();
    struct dns_replay_control *control = nv_dns_control.lookup(&zero);
    if (!control || now > control->alive_until_ns)
        return TC_ACT_OK;               /* the resolver stopped: it answers (or not) itself */
    u32 len = ntohs(udp->len);
    if (len < 8 + 12 || len - 10 > DNS_REPLAY_KEY_MAX)
        return TC_ACT_OK;
    len -= 10;                          /* UDP header and the query ID */
    struct dns_replay_key *key = nv_dns_scratch.lookup(&zero);
    if (!key)
        return TC_ACT_OK;
    __builtin_memset(key, 0, sizeof(*key));
    key->len = len;
    if (len < 1 || len > DNS_REPLAY_KEY_MAX || bpf_skb_load_bytes(skb, HEADERS + 2, key->data, len) < 0)
        return TC_ACT_OK;
    struct dns_replay_value *value = nv_dns_replay.lookup(key);
    if (!value || value->generation != control->generation || (value->until_ns && now >= value->until_ns))
        return TC_ACT_OK;
    u32 reply_len = value->len;
    if (reply_len < 1 || reply_len > DNS_REPLAY_REPLY_MAX)
        return TC_ACT_OK;
    u16 client_port = udp->source, server_port = udp->dest;
    struct ethhdr reply_eth = {.h_proto = htons(ETH_P_IP)};
    __builtin_memcpy(reply_eth.h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(reply_eth.h_source, eth->h_dest, ETH_ALEN);
    if (bpf_skb_change_tail(skb, HEADERS + 2 + reply_len, 0))
        return TC_ACT_OK;
    /* The same length in a form whose bounds the verifier keeps across spills (unchanged here). */
    u32 n = ((reply_len - 1) & (DNS_REPLAY_REPLY_MAX - 1)) + 1;
    if (bpf_skb_store_bytes(skb, HEADERS + 2, value->data, n, 0))
        return TC_ACT_SHOT;
    if (value->origin_ns && now > value->origin_ns) {
        /* A cached answer: its TTLs, as the resolver would count them down by whole seconds. */
        u32 age = (now - value->origin_ns) / 1000000000ULL;
#pragma unroll
        for (int i = 0; i < DNS_REPLAY_TTLS; i++) {
            if (i >= value->ttls)
                break;
            u32 base = value->ttl_base[i];
            u32 ttl = htonl(base > age ? base - age : 0);
            u32 offset = value->ttl_offset[i];
            if (offset < 12 || offset + 4 > 2 + n || bpf_skb_store_bytes(skb, HEADERS + offset, &ttl, 4, 0))
                return TC_ACT_SHOT;
        }
    }
    struct iphdr reply_ip = {.version = 4, .ihl = 5, .ttl = 64, .protocol = IPPROTO_UDP,
                             .tot_len = htons(20 + 8 + 2 + n), .frag_off = htons(0x4000),
                             .saddr = daddr, .daddr = saddr};
    reply_ip.check = ipv4_checksum(&reply_ip);
    struct udphdr reply_udp = {.source = server_port, .dest = client_port, .len = htons(8 + 2 + n), .check = 0};
    if (bpf_skb_store_bytes(skb, 0, &reply_eth, sizeof(reply_eth), 0) ||
        bpf_skb_store_bytes(skb, ETH_HLEN, &reply_ip, sizeof(reply_ip), 0) ||
        bpf_skb_store_bytes(skb, ETH_HLEN + 20, &reply_udp, sizeof(reply_udp), 0))
        return TC_ACT_SHOT;
    u32 stat = value->stat;
    u64 *hits = nv_dns_hits.lookup(&stat);
    if (hits)
        *hits += 1;
    return TC_ACT_OK;
}
