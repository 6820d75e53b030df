/* cgroup/getpeername4: a socket connected through a VIP reports the VIP as its peer. */
#include "lib/lb.h"

int nv_getpeername4(struct bpf_sock_addr *ctx)
{
	lb4_xlate_rev(ctx);
	return 1;
}
