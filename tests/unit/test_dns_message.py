"""Decoding queries and encoding replies on raw packets: FORMERR, NOTIMP, EDNS0 sizes, TC."""

from __future__ import annotations

import struct

import pytest
from dnslib import EDNS0, NS, QTYPE, RR, SOA, SRV, A, DNSRecord

from spartan_dns.message import (
    FORMERR,
    MAX_UDP_PAYLOAD,
    NOERROR,
    NOTIMP,
    Malformed,
    Reply,
    decode_query,
    encode_reply,
    ttl_offsets,
)

CLIENT = ("127.0.0.1", 5353)


def query(name: str = "web.marathon.l4lb.thisdcos.directory", qtype: str = "A", edns: int | None = None) -> bytes:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    return bytes(q.pack())


def header(data: bytes) -> tuple[int, int, int]:
    qid, flags, qdcount = struct.unpack_from("!HHH", data)
    return qid, flags & 0xF, qdcount


def test_a_plain_query_decodes_with_lowercase_name_and_512_byte_limit():
    request = decode_query(query("Web.Marathon.L4LB.thisdcos.directory"), CLIENT, tcp=False)
    assert request.qname == "web.marathon.l4lb.thisdcos.directory"
    assert request.qtype == QTYPE.A
    assert request.edns_payload is None and request.max_size == 512


@pytest.mark.parametrize(("advertised", "limit"), [(4096, MAX_UDP_PAYLOAD), (1232, 1232), (100, 512), (800, 800)])
def test_edns0_payload_size_is_honoured_within_bounds(advertised, limit):
    assert decode_query(query(edns=advertised), CLIENT, tcp=False).max_size == limit


def test_tcp_has_no_udp_limit():
    assert decode_query(query(), CLIENT, tcp=True).max_size == 65535


@pytest.mark.parametrize("packet", [b"", b"\x12", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00"])
def test_packets_shorter_than_a_header_are_dropped(packet):
    with pytest.raises(Malformed) as caught:
        decode_query(packet, CLIENT, tcp=False)
    assert caught.value.reply is None


def test_responses_are_never_answered():
    packet = bytearray(query())
    packet[2] |= 0x80
    with pytest.raises(Malformed) as caught:
        decode_query(bytes(packet), CLIENT, tcp=False)
    assert caught.value.reply is None and caught.value.reason == "response"


def test_unsupported_opcode_gets_notimp_with_the_question():
    packet = bytearray(query("x.spartan"))
    packet[2] |= 2 << 3                     # STATUS
    with pytest.raises(Malformed) as caught:
        decode_query(bytes(packet), CLIENT, tcp=False)
    reply = DNSRecord.parse(caught.value.reply)
    assert reply.header.rcode == NOTIMP and reply.header.id == struct.unpack("!H", packet[:2])[0]
    assert str(reply.q.qname) == "x.spartan."


@pytest.mark.parametrize("qdcount", [0, 2])
def test_question_count_other_than_one_is_formerr(qdcount):
    packet = bytearray(query())
    packet[4:6] = struct.pack("!H", qdcount)
    with pytest.raises(Malformed) as caught:
        decode_query(bytes(packet), CLIENT, tcp=False)
    assert header(caught.value.reply)[1] == FORMERR


def test_truncated_packet_is_formerr_with_its_id():
    packet = query()[:20]
    with pytest.raises(Malformed) as caught:
        decode_query(packet, CLIENT, tcp=False)
    qid, rcode, qdcount = header(caught.value.reply)
    assert (qid, rcode, qdcount) == (struct.unpack("!H", packet[:2])[0], FORMERR, 0)


def test_compression_pointer_loop_is_formerr():
    packet = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    with pytest.raises(Malformed) as caught:
        decode_query(packet, CLIENT, tcp=False)
    assert header(caught.value.reply) == (7, FORMERR, 0)


def pointer_chain_packet(qid: int, links: int = 3000) -> bytes:
    """A query whose second answer RR's owner name is a chain of ``links`` pointers, each to the one
    before (stored in the first RR's RDATA): dnslib follows it recursively and hits RecursionError."""
    question = b"\x01a\x00\x00\x01\x00\x01"
    first_rr = b"\x00" + struct.pack("!HHIH", 0xFF00, 1, 0, 1 + 2 * links)
    start = 12 + len(question) + len(first_rr)
    chain = b"\x00" + b"".join(struct.pack("!H", 0xC000 | (start if i == 1 else start + 1 + 2 * (i - 2)))
                              for i in range(1, links + 1))
    second_rr = struct.pack("!HHHIH", 0xC000 | (start + 1 + 2 * (links - 1)), 1, 1, 0, 4) + b"\x01\x02\x03\x04"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 2, 0, 0) + question + first_rr + chain + second_rr


def test_long_backward_pointer_chain_is_formerr_not_recursion_error():
    packet = pointer_chain_packet(9)
    with pytest.raises(RecursionError):
        DNSRecord.parse(packet)             # what the server must survive
    with pytest.raises(Malformed) as caught:
        decode_query(packet, CLIENT, tcp=False)
    assert header(caught.value.reply)[:2] == (9, FORMERR)


def test_two_opt_records_are_formerr():
    q = DNSRecord.question("x.spartan")
    q.add_ar(EDNS0(udp_len=1232))
    q.add_ar(EDNS0(udp_len=1232))
    with pytest.raises(Malformed) as caught:
        decode_query(bytes(q.pack()), CLIENT, tcp=False)
    assert header(caught.value.reply)[:2] == (q.header.id, FORMERR)


def many_addresses(count: int) -> Reply:
    return Reply(NOERROR, [RR("big.example.", QTYPE.A, ttl=5, rdata=A(f"10.0.{i // 250}.{i % 250}"))
                           for i in range(count)], rotate=True)


def test_reply_echoes_id_question_case_and_rd_and_sets_ra():
    request = decode_query(query("Ready.Spartan"), CLIENT, tcp=False)
    wire = encode_reply(request, Reply(NOERROR, [RR("Ready.Spartan.", QTYPE.A, ttl=5, rdata=A("127.0.0.1"))],
                                       authoritative=True))
    reply = DNSRecord.parse(wire)
    assert reply.header.id == request.message.header.id
    assert str(reply.q.qname) == "Ready.Spartan."
    assert reply.header.rd == 1 and reply.header.ra == 1 and reply.header.aa == 1 and reply.header.qr == 1
    assert [str(rr.rdata) for rr in reply.rr] == ["127.0.0.1"]


def test_oversize_udp_answer_is_truncated_with_tc_and_fits_with_edns():
    plain = decode_query(query("big.example"), CLIENT, tcp=False)
    truncated = DNSRecord.parse(encode_reply(plain, many_addresses(40)))
    assert truncated.header.tc == 1 and truncated.rr == [] and str(truncated.q.qname) == "big.example."
    sized = decode_query(query("big.example", edns=4096), CLIENT, tcp=False)
    full = DNSRecord.parse(encode_reply(sized, many_addresses(40)))
    assert full.header.tc == 0 and len(full.rr) == 40
    assert [rr.rtype for rr in full.ar] == [QTYPE.OPT] and full.ar[0].rclass == MAX_UDP_PAYLOAD
    over_tcp = decode_query(query("big.example"), CLIENT, tcp=True)
    assert len(DNSRecord.parse(encode_reply(over_tcp, many_addresses(200))).rr) == 200


def test_rotation_shifts_the_answer_order():
    request = decode_query(query("big.example"), CLIENT, tcp=False)
    first = [str(rr.rdata) for rr in DNSRecord.parse(encode_reply(request, many_addresses(3))).rr]
    second = [str(rr.rdata) for rr in DNSRecord.parse(encode_reply(request, many_addresses(3), rotation=1)).rr]
    assert second == first[1:] + first[:1]


@pytest.mark.parametrize("name", [b"\x7f" + b"a" * 127 + b"\x00", (b"\x3f" + b"b" * 63) * 5 + b"\x00"])
def test_labels_over_63_and_names_over_255_octets_are_formerr(name):
    packet = struct.pack("!HHHHHH", 3, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
    with pytest.raises(Malformed) as caught:
        decode_query(packet, CLIENT, tcp=False)
    assert header(caught.value.reply)[:2] == (3, FORMERR)


def test_a_label_holding_a_dot_does_not_pass_for_two_labels():
    one_label = struct.pack("!HHHHHH", 5, 0x0100, 1, 0, 0, 0) + b"\x0dready.spartan\x00\x00\x01\x00\x01"
    request = decode_query(one_label, CLIENT, tcp=False)
    assert request.qname == "ready\\.spartan"
    assert decode_query(query("READY.spartan"), CLIENT, tcp=False).qname == "ready.spartan"


def test_ttl_offsets_find_every_records_ttl_but_opts():
    msg = DNSRecord.question("_web._tcp.marathon.mesos", "SRV").reply()
    msg.add_answer(RR("_web._tcp.marathon.mesos", 33, ttl=60, rdata=SRV(0, 0, 80, "web-a.marathon.mesos")))
    msg.add_answer(RR("_web._tcp.marathon.mesos", 33, ttl=61, rdata=SRV(0, 0, 81, "web-b.marathon.mesos")))
    msg.add_auth(RR("mesos", 2, ttl=62, rdata=NS("ns1.mesos")))
    msg.add_auth(RR("mesos", 6, ttl=63, rdata=SOA("ns1.mesos", "root.ns1.mesos", (1, 2, 3, 4, 5))))
    msg.add_ar(RR("web-a.marathon.mesos", 1, ttl=64, rdata=A("9.0.1.5")))
    msg.add_ar(EDNS0(udp_len=1232, flags="do"))
    wire = bytes(msg.pack())
    found = ttl_offsets(wire)
    assert [ttl for _offset, ttl in found] == [60, 61, 62, 63, 64]       # names compressed, OPT left out
    assert all(int.from_bytes(wire[o:o + 4], "big") == ttl for o, ttl in found)
    with pytest.raises(ValueError):
        ttl_offsets(wire + b"\0")
