/* Feature probe for `--lb auto`: the smallest cgroup/connect4 program. Loaded, never attached. */
#include <uapi/linux/bpf.h>

int nv_probe(struct bpf_sock_addr *ctx)
{
	return ctx->user_port != 0 || 1;
}
