/* cgroup/connect4: TCP connect() and UDP connect() to a VIP go to a backend chosen from the
 * VIP's table; the socket never sees the VIP on the wire, so no NAT follows the flow. */
#include "lib/lb.h"

int nv_connect4(struct bpf_sock_addr *ctx)
{
	return lb4_xlate_fwd(ctx, true);
}
