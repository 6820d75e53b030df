"""DNS messages on the wire: decoding a query into a :class:`Request`, encoding a :class:`Reply`.

dnslib does the parsing and packing; this module adds what a server needs around it: header checks
that work on packets dnslib cannot parse (so a malformed query still gets FORMERR with its ID),
EDNS0 payload sizes, and truncation (TC) of UDP answers that do not fit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dnslib import EDNS0, QTYPE, RCODE, RR, DNSHeader, DNSQuestion, DNSRecord

HEADER = struct.Struct("!HHHHHH")

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
OPCODE_MASK = 0x7800

OPCODE_QUERY = 0
CLASS_IN = 1
CLASS_ANY = 255
TYPE_OPT = 41

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended RCODE: header carries the low 4 bits, OPT the high 8

# What we advertise and accept over UDP (DNS flag day 2020: fits every path MTU without fragments).
MAX_UDP_PAYLOAD = 1232
MIN_UDP_PAYLOAD = 512
MAX_TCP_MESSAGE = 65535


@dataclass(slots=True)
class Request:
    """One query that passed the header checks and parsed."""

    raw: bytes
    client: tuple
    tcp: bool
    message: DNSRecord
    qname: str                  # lowercase, without the trailing dot ("" for the root)
    qtype: int
    qclass: int
    edns_payload: int | None    # the client's EDNS0 UDP payload size, None without EDNS0
    edns_version: int = 0

    @property
    def question(self) -> DNSQuestion:
        return self.message.q

    @property
    def max_size(self) -> int:
        """The largest reply this client can take on this transport."""
        if self.tcp:
            return MAX_TCP_MESSAGE
        if self.edns_payload is None:
            return MIN_UDP_PAYLOAD
        return max(MIN_UDP_PAYLOAD, min(self.edns_payload, MAX_UDP_PAYLOAD))


@dataclass(slots=True)
class Reply:
    """What a handler decided; the server turns it into wire bytes for one request.

    ``replay_until`` (monotonic seconds) lets the server answer byte-identical queries from the
    encoded reply until then; 0 means never (errors, stale answers)."""

    rcode: int
    answers: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    authoritative: bool = False
    source: str = "zone"        # zone | cache | upstream | stale | error
    zone: str = "."
    rotate: bool = False
    replay_until: float = 0.0
    # Answers from the cache: their TTLs count down a second at a time from this monotonic
    # instant (the cache entry's), so a stored reply can have them rewritten rather than re-made.
    ttl_origin: float | None = None
    ttl_age: int = 0            # the whole seconds already counted down in these answers


class Malformed(Exception):
    """A packet that is not a query we can read; ``reply`` is the FORMERR to send (or None: drop)."""

    def __init__(self, reason: str, reply: bytes | None):
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


def header_reply(query: bytes, rcode: int, question: bytes = b"") -> bytes:
    """A reply made from the query's header alone (ID, opcode, RD echoed): for FORMERR and NOTIMP."""
    qid, flags = struct.unpack_from("!HH", query)
    flags = FLAG_QR | (flags & (OPCODE_MASK | FLAG_RD)) | FLAG_RA | (rcode & 0xF)
    return HEADER.pack(qid, flags, 1 if question else 0, 0, 0, 0) + question


def question_bytes(data: bytes) -> bytes:
    """The raw first question (uncompressed name + type + class), or b"" if it is not plainly there."""
    offset = 12
    try:
        while True:
            length = data[offset]
            if length == 0:
                offset += 1
                break
            if length > 63:
                return b""
            offset += 1 + length
        end = offset + 4
        return data[12:end] if end <= len(data) else b""
    except IndexError:
        return b""


def decode_query(data: bytes, client: tuple, tcp: bool) -> Request:
    """Checks and parses one query. Raises :class:`Malformed` with the reply to send, if any."""
    if len(data) < 12:
        raise Malformed("short", None)          # no header: nothing to answer to
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & FLAG_QR:
        raise Malformed("response", None)       # never answer a response (reflection loops)
    opcode = (flags & OPCODE_MASK) >> 11
    if opcode != OPCODE_QUERY:
        raise Malformed("opcode", header_reply(data, NOTIMP, question_bytes(data) if qdcount == 1 else b""))
    if qdcount != 1:
        raise Malformed("qdcount", header_reply(data, FORMERR))
    try:
        message = DNSRecord.parse(data)
    except Exception:  # noqa: BLE001 - dnslib raises DNSError, struct.error, RecursionError, UnicodeError…
        raise Malformed("unparsable", header_reply(data, FORMERR)) from None
    edns_payload = None
    edns_version = 0
    opts = [rr for rr in message.ar if rr.rtype == TYPE_OPT]
    if opts:
        if len(opts) > 1 or any(rr.rtype == TYPE_OPT for rr in message.rr + message.auth):
            raise Malformed("opt", header_reply(data, FORMERR))
        edns_payload = opts[0].rclass
        edns_version = (opts[0].ttl >> 16) & 0xFF
    question = message.q
    labels = question.qname.label
    if any(not 0 < len(label) <= 63 for label in labels) or sum(len(label) + 1 for label in labels) + 1 > 255:
        raise Malformed("name", header_reply(data, FORMERR))    # RFC 1035 §2.3.4 limits
    return Request(
        raw=data, client=client, tcp=tcp, message=message,
        qname=name_key(labels), qtype=question.qtype, qclass=question.qclass,
        edns_payload=edns_payload, edns_version=edns_version,
    )


def name_key(labels: tuple[bytes, ...]) -> str:
    """The lowercase presentation of a name, unambiguous even for labels holding dots or backslashes
    (``str(DNSLabel)`` is not: it would make the one label ``a.b`` equal to the name ``a.b``)."""
    return b".".join(label.replace(b"\\", b"\\\\").replace(b".", b"\\.") for label in labels).lower().decode("latin-1")


def encode_reply(request: Request, reply: Reply, rotation: int = 0) -> bytes:
    """Packs ``reply`` for ``request``; over UDP an answer that does not fit comes back with TC set."""
    query = request.message
    header = DNSHeader(id=query.header.id, qr=1, opcode=OPCODE_QUERY, aa=int(reply.authoritative),
                       rd=query.header.rd, ra=1, rcode=reply.rcode & 0xF)
    answers = reply.answers
    if rotation and len(answers) > 1:
        shift = rotation % len(answers)
        answers = answers[shift:] + answers[:shift]
    additional = list(reply.additional)
    opt = None
    if request.edns_payload is not None:
        opt = EDNS0(udp_len=MAX_UDP_PAYLOAD, ext_rcode=reply.rcode >> 4)
        additional.append(opt)
    message = DNSRecord(header, questions=[query.q], rr=list(answers), auth=list(reply.authority), ar=additional)
    wire = bytes(message.pack())
    if len(wire) <= request.max_size:
        return wire
    # Too big for this client over UDP: header and question only, TC set, so it retries over TCP.
    truncated = DNSRecord(DNSHeader(id=header.id, qr=1, aa=header.aa, tc=1, rd=header.rd, ra=1,
                                    rcode=header.rcode), questions=[query.q], ar=[opt] if opt else [])
    return bytes(truncated.pack())


def ttl_offsets(wire: bytes) -> list[tuple[int, int]]:
    """(offset, TTL) of every resource record's TTL field in a packed message, OPT excluded (its
    TTL field holds EDNS flags). dnslib packs messages but does not say where fields landed."""
    _qid, _flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(wire)
    offset = HEADER.size
    for _ in range(qdcount):
        offset = _skip_name(wire, offset) + 4
    found = []
    for _ in range(ancount + nscount + arcount):
        offset = _skip_name(wire, offset)
        rtype, _rclass, ttl, rdlength = struct.unpack_from("!HHIH", wire, offset)
        if rtype != TYPE_OPT:
            found.append((offset + 4, ttl))
        offset += 10 + rdlength
    if offset != len(wire):
        raise ValueError(f"message is {len(wire)} bytes, its records end at {offset}")
    return found


def _skip_name(wire: bytes, offset: int) -> int:
    while True:
        length = wire[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:       # a compression pointer ends the name
            return offset + 2
        offset += 1 + length


def rcode_name(rcode: int) -> str:
    return "BADVERS" if rcode == BADVERS else RCODE.get(rcode, str(rcode))


_TYPE_LABELS = {"A", "AAAA", "SRV", "SOA", "NS", "PTR", "TXT", "MX", "CNAME", "ANY", "HTTPS", "SVCB",
                "CAA", "DS", "DNSKEY", "NAPTR", "AXFR", "IXFR"}


def type_label(qtype: int) -> str:
    """A bounded metrics label for a query type."""
    name = QTYPE.get(qtype, "")
    return name if name in _TYPE_LABELS else "other"
