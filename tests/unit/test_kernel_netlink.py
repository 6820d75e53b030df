"""The shared netlink engine's pure parts: templates render pyroute2's bytes; datagrams parse."""

from __future__ import annotations

import socket
import struct

import pytest
from pyroute2.netlink.rtnl import RTM_NEWNEIGH
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from kernel.netlink import MessageTemplate, MessageTemplates, attrs, errno_of, messages

SENTINEL_IP, SENTINEL_MAC = "192.0.2.77", "02:5e:ed:5e:ed:77"
FLAGS = 0x1 | 0x4 | 0x400


def neighbour(ip: str, mac: str, seq: int = 0) -> ndmsg:
    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["state"] = socket.AF_INET, 7, 0x80
    msg["attrs"] = [("NDA_DST", ip), ("NDA_LLADDR", mac)]
    msg["header"]["type"], msg["header"]["flags"], msg["header"]["sequence_number"] = RTM_NEWNEIGH, FLAGS, seq
    return msg


def encoded(msg) -> bytes:
    msg.encode()
    return bytes(msg.data)


def test_template_renders_what_pyroute2_encodes() -> None:
    template = MessageTemplate(neighbour(SENTINEL_IP, SENTINEL_MAC), None, RTM_NEWNEIGH, FLAGS,
                               {"ip": socket.inet_aton(SENTINEL_IP), "mac": bytes.fromhex("025eed5eed77")})
    got = template.render(4242, {"ip": socket.inet_aton("10.1.2.3"), "mac": bytes.fromhex("0a0b0c0d0e0f")})
    assert got == encoded(neighbour("10.1.2.3", "0a:0b:0c:0d:0e:0f", 4242))
    # A field not given keeps its sentinel.
    assert template.render(1, {}) == encoded(neighbour(SENTINEL_IP, SENTINEL_MAC, 1))


def test_template_refuses_a_sentinel_it_cannot_find() -> None:
    with pytest.raises(ValueError, match="gateway"):
        MessageTemplate(neighbour(SENTINEL_IP, SENTINEL_MAC), None, RTM_NEWNEIGH, FLAGS,
                        {"gateway": socket.inet_aton("192.0.2.99")})


def test_templates_are_built_once_per_shape() -> None:
    templates, built = MessageTemplates(), []

    def build() -> MessageTemplate:
        built.append(1)
        return MessageTemplate(neighbour(SENTINEL_IP, SENTINEL_MAC), None, RTM_NEWNEIGH, FLAGS, {})

    first = templates.get(("neigh", 7), build)
    assert templates.get(("neigh", 7), build) is first and len(built) == 1


def nlmsg(mtype: int, seq: int, payload: bytes) -> bytes:
    body = struct.pack("=IHHII", 16 + len(payload), mtype, 0, seq, 0) + payload
    return body + b"\0" * (-len(body) % 4)


def attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def test_messages_split_a_datagram_and_errno_reads_acks() -> None:
    ack, refusal = nlmsg(2, 5, struct.pack("=i", 0)), nlmsg(2, 6, struct.pack("=i", -17))
    answer = nlmsg(20, 7, b"abc")
    parsed = list(messages(ack + refusal + answer))
    assert [(seq, mtype) for seq, mtype, _ in parsed] == [(5, 2), (6, 2), (7, 20)]
    assert [errno_of(parsed[0][2]), errno_of(parsed[1][2])] == [0, 17]
    assert parsed[2][2][16:19] == b"abc"
    # A truncated or zero-length header ends the walk instead of looping.
    assert list(messages(struct.pack("=IHHI", 0, 2, 0, 1) + b"\0" * 16)) == []


def test_attrs_by_type_with_the_nested_flag_masked() -> None:
    data = attr(1, b"\x01\x02\x03") + attr(0x8000 | 4, attr(1, b"x")) + attr(3, b"")
    assert attrs(data) == {1: b"\x01\x02\x03", 4: attr(1, b"x"), 3: b""}
