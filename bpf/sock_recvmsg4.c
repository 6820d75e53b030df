/* cgroup/recvmsg4: a UDP reply from a backend is reported as coming from the VIP the
 * application sent to (recvfrom's source address). */
#include "lib/lb.h"

int nv_recvmsg4(struct bpf_sock_addr *ctx)
{
	lb4_xlate_rev(ctx);
	return 1;   /* recvmsg4 must always allow */
}
