"""The shared netlink engine against a real kernel, in a namespace of the test's own."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWNEIGH
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from kernel.netlink import MessageTemplate, NetlinkRequestError, NetlinkSocket, attrs
from kernel.netns import in_netns

SENTINEL_IP = "192.0.2.77"
IFLA_IFNAME = 3


def neighbour_template(ifindex: int) -> MessageTemplate:
    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["state"] = socket.AF_INET, ifindex, 0x80
    msg["attrs"] = [("NDA_DST", SENTINEL_IP), ("NDA_LLADDR", "02:00:00:00:00:01")]
    return MessageTemplate(msg, None, RTM_NEWNEIGH, 0x1 | 0x4 | 0x400 | 0x100, {"ip": socket.inet_aton(SENTINEL_IP)})


def test_batch_answers_each_request_across_chunks(netns) -> None:
    netns.run("ip", "link", "add", "d0", "type", "bridge")
    netns.run("ip", "link", "set", "d0", "up")
    index = int(netns.run("cat", "/sys/class/net/d0/ifindex").stdout)
    good, missing = neighbour_template(index), neighbour_template(9999)
    # More than one chunk, with refusals spread among the successes.
    items = [(missing if i % 100 == 7 else good, f"10.{i // 250}.{i % 250}.1") for i in range(600)]
    sock = in_netns(netns.name, lambda: NetlinkSocket(socket.NETLINK_ROUTE))
    try:
        codes = sock.batch(lambda item, seq: item[0].render(seq, {"ip": socket.inet_aton(item[1])}), items)
    finally:
        sock.close()
    assert codes == [errno.ENODEV if template is missing else 0 for template, _ in items]
    shown = netns.run("ip", "neigh", "show", "dev", "d0", "nud", "permanent").stdout.splitlines()
    assert len(shown) == codes.count(0)


def test_get_many_returns_answers_and_raises_on_refusal(netns) -> None:
    def get_link(index: int, seq: int) -> bytes:
        msg = ifinfmsg()
        msg["index"] = index
        msg["header"]["type"], msg["header"]["flags"], msg["header"]["sequence_number"] = RTM_GETLINK, 0x1 | 0x4, seq
        msg.encode()
        return bytes(msg.data)

    ifinfomsg_size = struct.calcsize("=BxHiII")
    sock = in_netns(netns.name, lambda: NetlinkSocket(socket.NETLINK_ROUTE))
    try:
        [lo] = sock.get_many(get_link, [1], header_size=ifinfomsg_size)
        assert lo is not None and attrs(lo)[IFLA_IFNAME].rstrip(b"\0") == b"lo"
        with pytest.raises(NetlinkRequestError) as refused:
            sock.get_many(get_link, [1, 9999], header_size=ifinfomsg_size)
        assert refused.value.errno == errno.ENODEV
    finally:
        sock.close()
