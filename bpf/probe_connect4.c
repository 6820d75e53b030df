/* Feature probe for `--lb auto`: a cgroup/connect4 program with socket storage (which needs
 * kernel BTF), the two things the socket LB relies on beyond hash maps. Loaded, never attached. */
#include <uapi/linux/bpf.h>

struct probe_peer {
	__u32 address;
};

BPF_SK_STORAGE(nv_probe_peers, struct probe_peer);

int nv_probe(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct probe_peer *peer;

	if (!sk)
		return 1;
	peer = nv_probe_peers.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (peer)
		peer->address = ctx->user_ip4;
	return 1;
}
