/* Feature probe for `--lb auto`: the smallest cgroup/connect4 program using the helper the
 * socket LB hashes on. Loaded, never attached. */
#include <uapi/linux/bpf.h>

int nv_probe(struct bpf_sock_addr *ctx)
{
	return bpf_get_socket_cookie(ctx) != 0 || ctx->user_port != 0 || 1;
}
