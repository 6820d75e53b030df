"""nftables for the kernel layer: libnftables' JSON API, and the one kind of rule it cannot write.

``Nftables`` runs commands as one atomic transaction each and reads tables, sets and maps back
as JSON objects (``{"chain": {...}}``, ``{"rule": {...}}`` ...), in a network namespace of the
caller's choice, without starting a process. Output is stateless (counters read ``null``) and
carries handles, so a rule read back compares equal to the rule as written once ``handle`` is
dropped (see ``without_handles``).

Two limits of what Debian 12 ships are met here rather than in every caller:

* libnftables 1.0.6's JSON parser cannot declare a map whose data is a concatenation (``type
  mark : ipv4_addr . inet_service``); ``run_script`` takes such declarations in nft syntax.
* A kernel built without ``CONFIG_NFT_QUEUE`` (the lab's) has no native ``queue`` statement;
  the NFQUEUE verdict is then the xtables target, as iptables-nft writes it, through nf_tables
  netlink (libnftables can read such a rule but not write one): ``set_xt_rule`` / ``xt_rules``.

And one of speed: listing a set of 10,000 elements takes libnftables ~0.3 s; ``elements`` dumps
them over nf_tables netlink in a few milliseconds.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import nftables

from kernel.netlink import NFGENMSG_SIZE, NLMSG_ERROR, NLMSG_HEADER, attrs, errno_of, messages
from kernel.offloop import KernelThread, on_kernel_thread

Command = dict[str, Any]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWRULE, NFT_MSG_GETRULE, NFT_MSG_DELRULE = 6, 7, 8
NFT_MSG_GETSETELEM = 13
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA = 1, 2
NFTA_DATA_VALUE = 1
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_TARGET_NAME, NFTA_TARGET_REV, NFTA_TARGET_INFO = 1, 2, 3
NLMSG_DONE = 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_CREATE, NLM_F_APPEND = 0x400, 0x800
NLA_F_NESTED = 0x8000
NFQ_FLAG_BYPASS, NFQ_FLAG_CPU_FANOUT = 0x01, 0x02
_FAMILY = {"ip": socket.AF_INET, "ip6": socket.AF_INET6, "inet": 1}


class NftablesError(RuntimeError):
    """libnftables (or the kernel) refused; the message is libnftables' own."""


class NotFound(NftablesError):
    """What was read does not exist."""


class XtTarget(NamedTuple):
    """An xtables target as nf_tables holds it: name, revision and the target's info struct."""
    name: str
    revision: int
    info: bytes


def nfqueue_target(first: int, count: int = 1, cpu_fanout: bool = False) -> XtTarget:
    """``-j NFQUEUE --queue-balance first:first+count-1 --queue-bypass [--queue-cpu-fanout]``
    (struct xt_NFQ_info_v3, padded to 8 bytes as the kernel keeps it)."""
    flags = NFQ_FLAG_BYPASS | (NFQ_FLAG_CPU_FANOUT if cpu_fanout and count > 1 else 0)
    return XtTarget("NFQUEUE", 3, struct.pack("=HHH2x", first, count, flags))


def without_handles(obj: Any) -> Any:
    """A JSON object as read back, minus the kernel-assigned ``handle`` keys (at any depth)."""
    if isinstance(obj, dict):
        return {key: without_handles(value) for key, value in obj.items() if key != "handle"}
    if isinstance(obj, list):
        return [without_handles(value) for value in obj]
    return obj


class Nftables:
    """libnftables in network namespace ``netns`` (None: the caller's), on a thread of its own:
    every call is safe from any thread, and blocking ones stay off the caller's event loop."""

    def __init__(self, netns: str | None = None) -> None:
        self.kernel_thread = KernelThread("nftables")
        self._nft: nftables.Nftables | None = None
        self._sock: socket.socket | None = None
        self._seq = 0
        self.kernel_thread.call(self._open, netns)

    def _open(self, netns: str | None) -> None:
        if netns is not None:
            from pyroute2.netns import setns

            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                setns(fd)   # this thread only, for good: every call runs on it
            finally:
                os.close(fd)
        nft = nftables.Nftables()
        nft.set_json_output(True)
        nft.set_stateless_output(True)
        nft.set_handle_output(True)
        self._nft = nft

    # -- libnftables ----------------------------------------------------------------------
    def _nftables(self) -> nftables.Nftables:
        if self._nft is None:
            raise NftablesError("closed")
        return self._nft

    @on_kernel_thread
    def run(self, commands: Sequence[Command]) -> None:
        """Run JSON ``commands`` (``{"add": {"rule": ...}}`` ...) as one transaction: all or none.
        Raises NftablesError (NotFound when something they name is missing)."""
        if commands:
            rc, _, error = self._nftables().json_cmd({"nftables": list(commands)})
            _check(rc, error)

    @on_kernel_thread
    def run_script(self, script: str) -> None:
        """Run ``script`` in nft syntax as one transaction (only for what JSON cannot say)."""
        nft = self._nftables()
        nft.set_json_output(False)
        try:
            rc, _, error = nft.cmd(script)
        finally:
            nft.set_json_output(True)
        _check(rc, error)

    @on_kernel_thread
    def read(self, what: Command, elements: bool = True) -> list[Command]:
        """The objects of one ``list`` command (``{"table": {"family": "ip", "name": "t"}}``), each
        ``{"<kind>": {...}}``; with ``elements=False`` sets and maps come without their elements
        (cheap however large they are). Raises NotFound if it does not exist."""
        nft = self._nftables()
        nft.set_terse_output(not elements)
        rc, output, error = nft.json_cmd({"nftables": [{"list": what}]})
        _check(rc, error)
        return [obj for obj in output["nftables"] if "metainfo" not in obj]

    def delete_table(self, family: str, name: str) -> None:
        """Delete a table and all it holds, if there is one. Raises NftablesError."""
        try:
            self.run([{"delete": {"table": {"family": family, "name": name}}}])
        except NotFound:
            pass

    # -- xtables targets over nf_tables netlink ---------------------------------------------
    def _socket(self) -> socket.socket:
        if self._sock is None:      # opened on the kernel thread: in its namespace
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            self._sock.settimeout(10.0)
            self._sock.bind((0, 0))
        return self._sock

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    @on_kernel_thread
    def set_xt_rule(self, family: str, table: str, chain: str, target: XtTarget) -> None:
        """Make ``target`` (behind a counter) the only rule of an existing chain, in one
        transaction. Raises NftablesError."""
        where = _nla(NFTA_RULE_TABLE, _str(table)) + _nla(NFTA_RULE_CHAIN, _str(chain))
        expressions = _nla(NFTA_LIST_ELEM | NLA_F_NESTED, _nla(NFTA_EXPR_NAME, _str("counter"))) + _nla(
            NFTA_LIST_ELEM | NLA_F_NESTED,
            _nla(NFTA_EXPR_NAME, _str("target")) + _nla(NFTA_EXPR_DATA | NLA_F_NESTED, (
                _nla(NFTA_TARGET_NAME, _str(target.name)) + _nla(NFTA_TARGET_REV, struct.pack("!I", target.revision))
                + _nla(NFTA_TARGET_INFO, target.info))))
        requests = [   # a DELRULE naming the chain but no rule flushes the chain
            (NFT_MSG_DELRULE, NLM_F_REQUEST | NLM_F_ACK, where),
            (NFT_MSG_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
             where + _nla(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, expressions)),
        ]
        batch, seqs = [_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, self._next_seq(), socket.AF_UNSPEC,
                                NFNL_SUBSYS_NFTABLES)], []
        for kind, flags, body in requests:
            seqs.append(self._next_seq())
            batch.append(_message(NFNL_SUBSYS_NFTABLES << 8 | kind, flags, seqs[-1], _FAMILY[family], 0, body))
        batch.append(_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self._next_seq(), socket.AF_UNSPEC,
                              NFNL_SUBSYS_NFTABLES))
        sock = self._socket()
        sock.send(b"".join(batch))
        waiting, failed = set(seqs), 0
        while waiting:
            for seq, mtype, message in messages(sock.recv(1 << 16)):
                if mtype == NLMSG_ERROR and seq in waiting:
                    waiting.discard(seq)
                    failed = failed or errno_of(message)
        if failed:
            raise (NotFound if failed == errno.ENOENT else NftablesError)(
                f"xtables rule in {family} {table} {chain}: {os.strerror(failed)}")

    def _dump(self, kind: int, family: str, request: bytes, what: str) -> list[dict[int, bytes]]:
        """The top-level attributes of each answer to one nf_tables dump request."""
        sock = self._socket()
        seq = self._next_seq()
        sock.send(_message(NFNL_SUBSYS_NFTABLES << 8 | kind, NLM_F_REQUEST | NLM_F_DUMP, seq, _FAMILY[family], 0,
                           request))
        answers: list[dict[int, bytes]] = []
        while True:
            for got, mtype, message in messages(sock.recv(1 << 20)):
                if got != seq:
                    continue
                if mtype == NLMSG_ERROR and errno_of(message):
                    code = errno_of(message)
                    raise (NotFound if code == errno.ENOENT else NftablesError)(f"{what}: {os.strerror(code)}")
                if mtype in (NLMSG_DONE, NLMSG_ERROR):
                    return answers
                answers.append(attrs(message[NLMSG_HEADER + NFGENMSG_SIZE:]))

    @on_kernel_thread
    def xt_rules(self, family: str, table: str, chain: str) -> list[tuple[str | XtTarget, ...]]:
        """The chain's rules, each as its expressions: an ``XtTarget`` for an xtables target, the
        expression's name for any other; none when the chain does not exist."""
        request = _nla(NFTA_RULE_TABLE, _str(table)) + _nla(NFTA_RULE_CHAIN, _str(chain))
        return [tuple(_expression(attrs(item)) for item in _list(rule.get(NFTA_RULE_EXPRESSIONS, b"")))
                for rule in self._dump(NFT_MSG_GETRULE, family, request, f"rules of {family} {table} {chain}")]

    @on_kernel_thread
    def elements(self, family: str, table: str, name: str) -> list[tuple[bytes, bytes | None]]:
        """The elements of a set or map as the kernel holds them: (key, data or None) bytes, a
        concatenation's fields each padded to 4 bytes. libnftables takes ~30 µs an element to
        list one (10,000 VIPs: 0.3 s); this dump, ~1 µs. Raises NotFound if there is no such set."""
        request = _nla(NFTA_SET_ELEM_LIST_TABLE, _str(table)) + _nla(NFTA_SET_ELEM_LIST_SET, _str(name))
        found = []
        for answer in self._dump(NFT_MSG_GETSETELEM, family, request, f"set {family} {table} {name}"):
            for item in _list(answer.get(NFTA_SET_ELEM_LIST_ELEMENTS, b"")):
                element = attrs(item)
                key = attrs(element.get(NFTA_SET_ELEM_KEY, b"")).get(NFTA_DATA_VALUE, b"")
                data = attrs(element[NFTA_SET_ELEM_DATA]).get(NFTA_DATA_VALUE) if NFTA_SET_ELEM_DATA in element else None
                found.append((key, data))
        return found

    # -- iptables-nft leftovers -------------------------------------------------------------
    def remove_xtables_chains(self, prefix: str, tables: Sequence[str]) -> int:
        """Remove iptables-nft chains named ``prefix…`` from ``ip`` tables ``tables`` (``mangle``,
        ``nat`` ...) and every rule that jumps or goes to them, in one transaction; how many
        chains went. Nothing there is fine."""
        try:
            chains = self.read({"chains": {"family": "ip"}})
        except NotFound:
            return 0
        doomed: dict[str, set[str]] = {}
        for obj in chains:
            chain = obj.get("chain", {})
            if chain.get("table") in tables and chain.get("name", "").startswith(prefix):
                doomed.setdefault(chain["table"], set()).add(chain["name"])
        commands: list[Command] = []
        for table, names in doomed.items():
            for obj in self.read({"table": {"family": "ip", "name": table}}):
                rule = obj.get("rule")
                if rule and rule["chain"] not in names and any(
                        verdict.get("target") in names for expr in rule.get("expr", [])
                        for key, verdict in expr.items() if key in ("jump", "goto")):
                    commands.append({"delete": {"rule": {"family": "ip", "table": table, "chain": rule["chain"],
                                                         "handle": rule["handle"]}}})
            for name in sorted(names):
                where = {"family": "ip", "table": table, "name": name}
                commands += [{"flush": {"chain": where}}, {"delete": {"chain": where}}]
        self.run(commands)
        return sum(len(names) for names in doomed.values())

    def close(self) -> None:
        """Release libnftables and the netlink socket. Idempotent."""
        def release() -> None:
            self._nft = None
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        self.kernel_thread.call(release)
        self.kernel_thread.close()


def _check(rc: int, error: str) -> None:
    if rc != 0:
        # "internal:0:0-0: Error: Could not process rule: No such file or directory" and the like
        message = " ".join(line.strip().removeprefix("internal:0:0-0: ") for line in error.splitlines() if line.strip())
        raise (NotFound if "No such file or directory" in message else NftablesError)(message or f"error {rc}")


def _str(value: str) -> bytes:
    return value.encode() + b"\0"


def _nla(kind: int, payload: bytes) -> bytes:
    header = struct.pack("=HH", 4 + len(payload), kind)
    return header + payload + b"\0" * (-len(payload) % 4)


def _message(kind: int, flags: int, seq: int, family: int, res_id: int, body: bytes = b"") -> bytes:
    length = NLMSG_HEADER + NFGENMSG_SIZE + len(body)
    return struct.pack("=IHHII", length, kind, flags, seq, 0) + struct.pack("!BBH", family, 0, res_id) + body


def _list(data: bytes) -> list[bytes]:
    """The payloads of a nested list (NFTA_LIST_ELEM items), in order."""
    items, offset = [], 0
    while offset + 4 <= len(data):
        length, _ = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        items.append(data[offset + 4:offset + length])
        offset += (length + 3) & ~3
    return items


def _expression(expr: dict[int, bytes]) -> str | XtTarget:
    name = expr.get(NFTA_EXPR_NAME, b"").rstrip(b"\0").decode()
    if name != "target":
        return name
    data = attrs(expr.get(NFTA_EXPR_DATA, b""))
    return XtTarget(data.get(NFTA_TARGET_NAME, b"").rstrip(b"\0").decode(),
                    struct.unpack("!I", data.get(NFTA_TARGET_REV, b"\0\0\0\0"))[0], data.get(NFTA_TARGET_INFO, b""))
