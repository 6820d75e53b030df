"""Netlink requests in bulk: one socket engine and one message template, for every subsystem.

``NetlinkSocket`` sends thousands of requests (rtnetlink neighbours and routes, nfnetlink
conntrack and sets) in chunked ``send`` calls and matches the kernel's answers to them by
sequence number. ``MessageTemplate`` lets pyroute2 stay the one definition of a message's layout
while a message costs about a microsecond instead of pyroute2's hundreds: pyroute2 encodes one
message per shape with sentinel values, and each request is that encoding with its own values
where the sentinels were.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

NLMSG_ERROR = 2
NLMSG_HEADER = 16           # struct nlmsghdr
NFGENMSG_SIZE = 4           # struct nfgenmsg, ahead of an nfnetlink message's attributes
_SEQ = struct.Struct("=I")


class NetlinkRequestError(OSError):
    """The kernel refused a request with ``errno``."""

    def __init__(self, code: int, what: str = "netlink request") -> None:
        super().__init__(code, f"{what}: {os.strerror(code)}")


class MessageTemplate:
    """One encoded message cut at its variable fields, so rendering is one ``bytes.join``.

    ``msg`` is a pyroute2 message holding a sentinel value in each variable field; ``fields``
    maps each field's name to its sentinel's bytes (every place the sentinel occurs is that
    field). ``subsys`` is the nfnetlink subsystem (the type is ``subsys << 8 | kind`` and the
    family AF_INET), or None for rtnetlink and other families whose type is ``kind`` alone.
    """

    def __init__(self, msg: Any, subsys: int | None, kind: int, flags: int, fields: dict[str, bytes]) -> None:
        if subsys is None:
            msg["header"]["type"] = kind
        else:
            msg["nfgen_family"] = socket.AF_INET
            msg["header"]["type"] = (subsys << 8) | kind
        msg["header"]["flags"] = flags
        msg.encode()
        self.data = bytes(msg.data)
        spots = [(8, "seq", 4)]
        for name, sentinel in fields.items():
            at = self.data.find(sentinel, NLMSG_HEADER)
            if at < 0:
                raise ValueError(f"template: field {name} not found in the encoded message")
            while at >= 0:
                spots.append((at, name, len(sentinel)))
                at = self.data.find(sentinel, at + 1)
        pieces: list[bytes | str] = []   # constant bytes, and field names where values go
        at = 0
        for offset, name, size in sorted(spots):
            pieces += [self.data[at:offset], name]
            at = offset + size
        pieces.append(self.data[at:])
        self._pieces = tuple(pieces)
        self._defaults = {**fields, "seq": self.data[8:12]}

    def render(self, seq: int, values: dict[str, bytes]) -> bytes:
        """The message with sequence number ``seq`` and ``values`` (a field not given keeps its
        sentinel)."""
        values = {**self._defaults, **values, "seq": _SEQ.pack(seq)}
        return b"".join([values[piece] if piece.__class__ is str else piece  # type: ignore[misc]
                         for piece in self._pieces])


class MessageTemplates:
    """Templates by shape, each built (by pyroute2) the first time that shape is asked for."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], MessageTemplate] = {}

    def get(self, shape: tuple[Any, ...], build: Callable[[], MessageTemplate]) -> MessageTemplate:
        template = self._cache.get(shape)
        if template is None:
            template = self._cache[shape] = build()
        return template


class NetlinkSocket:
    """Requests over one netlink socket of ``protocol`` (``socket.NETLINK_ROUTE``,
    ``NETLINK_NETFILTER``, ...), opened by the caller's thread in its network namespace.

    Synchronous on purpose: the kernel handles a netlink request inside the ``send`` call, so its
    answers are queued by the time ``send`` returns. Messages go out in chunks of ``CHUNK``, one
    ``send`` each. A lock serialises callers, so any thread may use it.
    """

    # Bounded: the kernel queues one answer per request, and more at once overflow the socket's
    # receive buffer (ENOBUFS).
    CHUNK = 256

    def __init__(self, protocol: int) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self._seq = 0
        self.lock = threading.Lock()
        # One receive buffer for good: ``recv(1 << 20)`` would allocate (and fault in) a fresh
        # megabyte per answer, which costs more than the kernel's whole answer.
        self._buffer = memoryview(bytearray(1 << 16))

    def _recv(self) -> bytes:
        return bytes(self._buffer[:self.sock.recv_into(self._buffer)])

    def _send_chunk(self, render: Callable[[T, int], bytes], chunk: list[T]) -> list[int]:
        seqs = []
        for _ in chunk:
            self._seq = (self._seq + 1) & 0xFFFFFFFF or 1     # 32 bits on the wire; 0 is unused
            seqs.append(self._seq)
        self.sock.send(b"".join([render(item, seq) for item, seq in zip(chunk, seqs, strict=True)]))
        return seqs

    def _chunks(self, items: list[T]) -> Iterator[list[T]]:
        for start in range(0, len(items), self.CHUNK):
            yield items[start:start + self.CHUNK]

    def batch(self, render: Callable[[T, int], bytes], items: list[T]) -> list[int]:
        """Send one acked request per item (``render(item, seq)``); the errno of each (0 = ok)."""
        results: list[int] = []
        with self.lock:
            for chunk in self._chunks(items):
                seqs = self._send_chunk(render, chunk)
                waiting, acks = set(seqs), {}
                while waiting:
                    for seq, mtype, message in messages(self._recv()):
                        if mtype == NLMSG_ERROR and seq in waiting:
                            waiting.discard(seq)
                            acks[seq] = errno_of(message)
                results.extend(acks[seq] for seq in seqs)
        return results

    def get_many(self, render: Callable[[T, int], bytes], items: list[T],
                 header_size: int = NFGENMSG_SIZE) -> list[bytes | None]:
        """One acked GET per item: each answer's attributes (after the nlmsghdr and the family's
        ``header_size`` bytes), None where the kernel said ENOENT. Any other refusal raises
        NetlinkRequestError."""
        answers: list[bytes | None] = []
        with self.lock:
            for chunk in self._chunks(items):
                seqs = self._send_chunk(render, chunk)
                waiting, got, failed = set(seqs), {}, 0
                while waiting:
                    for seq, mtype, message in messages(self._recv()):
                        if seq not in waiting:
                            continue
                        if mtype == NLMSG_ERROR:
                            waiting.discard(seq)
                            code = errno_of(message)
                            if code and code != errno.ENOENT:
                                failed = code
                        else:
                            got[seq] = message[NLMSG_HEADER + header_size:]
                if failed:
                    raise NetlinkRequestError(failed)
                answers.extend(got.get(seq) for seq in seqs)
        return answers

    def close(self) -> None:
        self.sock.close()


def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(seq, type, message bytes) of each netlink message in one datagram."""
    offset = 0
    while offset + NLMSG_HEADER <= len(data):
        length, mtype, _, seq = struct.unpack_from("=IHHI", data, offset)
        if length < NLMSG_HEADER:
            return
        yield seq, mtype, data[offset:offset + length]
        offset += (length + 3) & ~3


def errno_of(message: bytes) -> int:
    """The errno of an NLMSG_ERROR message (0: the ack of a request that went in)."""
    code: int = struct.unpack_from("=i", message, NLMSG_HEADER)[0]
    return -code


def attrs(data: bytes) -> dict[int, bytes]:
    """Top-level netlink attributes by type (nested flag masked). Reading two fields of an answer
    this way costs microseconds; a full pyroute2 decode costs hundreds."""
    out, offset = {}, 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out
