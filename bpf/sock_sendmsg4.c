/* cgroup/sendmsg4: sendto() on an unconnected UDP socket, per datagram. The backend is chosen
 * by the socket's hash, so a socket keeps talking to one backend, and the reply's source is
 * remembered for recvmsg4. */
#include "lib/lb.h"

int nv_sendmsg4(struct bpf_sock_addr *ctx)
{
	return lb4_xlate_fwd(ctx, false);
}
