"""The netfilter seam's real implementation: one nftables table, VIP routes, conntrack reads.

Everything goes through the kernel layer — libnftables (``kernel.nftables``), netlink
(``kernel.netlink``) and pyroute2 on a ``KernelThread`` — and no process is started. Kernel state
it owns, all in the node's network namespace:

* table ``ip navstar-minuteman``:

  - set ``minuteman`` (``ipv4_addr . inet_proto . inet_service``, e.g. ``11.0.0.1 . tcp . 80``):
    the VIPs;
  - map ``backends`` (backend id → address . port): where a mark sends a flow;
  - ``queue-prerouting`` / ``queue-output`` (mangle priority, after conntrack): the first packet
    of a new flow (conntrack state NEW, not DNATed yet) to a VIP in the set jumps to
    ``nfqueue``, whose one rule queues it (``queue num N-M bypass``, with ``fanout`` by CPU);
    the agent's verdict puts a mark on it naming the backend. With no agent the packet goes on
    unmarked (bypass). A flow stays NEW until its first reply: one already DNATed (a SYN
    retransmitted to a slow backend, the next datagram of one-way UDP) goes on without userspace;
  - ``dnat-prerouting`` / ``dnat-output`` / ``snat-postrouting``: a marked first packet is DNATed
    to the backend its mark names (one map lookup, whatever the number of VIPs), and masqueraded
    when the mark asks for source NAT (hairpin); conntrack applies that NAT to the rest of the flow;
  - ``reject-input`` / ``reject-forward`` / ``reject-output`` (filter priority): a new VIP flow
    that was not DNATed jumps to ``refuse`` and is rejected at once (TCP reset / ICMP port
    unreachable) instead of hanging;
  - ``clear-mark`` (postrouting, after NAT): the mark has done its work and is cleared, so it
    cannot follow the packet any further: a VXLAN device keeps the mark on the packet it wraps,
    whose own way out (through these same hooks) would otherwise be DNATed by it;

* ``local 11.0.0.0/8 dev lo`` (the named-VIP pool) and ``local <vip>/32`` for address VIPs
  outside it (protocol 211, preferred source the node's IP) so VIP packets reach the hooks.

The table is read back as JSON and compared with what it should be, chain by chain; a repair
rewrites, in one transaction, only the chains that differ, keeping the set and the map. The
queue rule is an xtables target written over nf_tables netlink where the kernel has no native
``queue`` statement (see ``kernel.nftables``), and the map is declared in nft syntax (libnftables
1.0.6's JSON cannot declare its type): a table built from nothing takes three transactions, in
an order where a new VIP flow is at worst refused (as with the agent down), never misrouted.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_GET, NFCTAttrTuple, nfct_msg

from kernel.netlink import MessageTemplate, MessageTemplates, NetlinkRequestError, NetlinkSocket, attrs
from kernel.nftables import Command, Nftables, NftablesError, NotFound, nfqueue_target, without_handles
from kernel.offloop import KernelThread
from minuteman.dataplane import Backend, Protocol_, VipKey
from minuteman.netfilter import (
    IPPROTO,
    MARK_ID_MASK,
    MARK_SNAT,
    MARK_TAG,
    ROUTE_PROTO,
    Flow,
    FlowState,
    NetfilterError,
    RouteInfo,
)

TABLE = "navstar-minuteman"
VIP_SET = "minuteman"
BACKEND_MAP = "backends"
QUEUE_CHAIN = "nfqueue"
REFUSE_CHAIN = "refuse"
# Left by earlier versions (iptables-nft chains NAVSTAR-MM*, ipsets): removed when the table is built.
LEGACY_CHAIN_PREFIX = "NAVSTAR-MM"
LEGACY_TABLES = ("mangle", "filter", "raw", "nat")
LEGACY_SETS = ("navstar-mm-vips", "navstar-mm-udp")
IPSET_ERR_BUSY = 4100          # a set still referenced (by a rule being destroyed)

NETLINK_NETFILTER = 12
NFNLGRP_CONNTRACK_DESTROY = 3
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
CTA_STATUS, CTA_PROTOINFO, CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 3, 4, 1, 1

T = TypeVar("T")
_PROTOCOL_OF = {number: name for name, number in IPPROTO.items()}

_IN_TABLE = {"family": "ip", "table": TABLE}
_TABLE = {"family": "ip", "name": TABLE}


def _mark_is(value: int, bits: int) -> Command:
    """``meta mark`` whose top ``bits`` equal those of ``value`` (as libnftables writes it)."""
    return {"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": {"prefix": {"addr": value, "len": bits}}}}


# The first packet of a VIP flow not yet DNATed: conntrack state first (read off the packet,
# cheap), then the set (a hash lookup), so a flow's later packets skip the lookup.
_NEW_VIP_FLOW: list[Command] = [
    {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
    {"match": {"op": "!", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
    {"match": {"op": "==", "left": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}},
                                               {"meta": {"key": "l4proto"}},
                                               {"payload": {"protocol": "th", "field": "dport"}}]},
               "right": f"@{VIP_SET}"}},
]
_DNAT_BY_MARK: list[Command] = [
    {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}},
    _mark_is(MARK_TAG, 8),
    {"dnat": {"family": "ip", "addr": {"map": {"key": {"&": [{"meta": {"key": "mark"}}, MARK_ID_MASK]},
                                               "data": f"@{BACKEND_MAP}"}}}},
]


def _hook(kind: str, hook: str, prio: int) -> dict[str, Any]:
    return {"type": kind, "hook": hook, "prio": prio, "policy": "accept"}


# Chain → (its hook, or None for a regular chain; its rules as libnftables reads them back).
# The rules of QUEUE_CHAIN are not JSON: see _queue_rule.
_CHAINS: dict[str, tuple[dict[str, Any] | None, list[list[Command]]]] = {
    **{f"queue-{hook}": (_hook(kind, hook, -150), [[*_NEW_VIP_FLOW, {"jump": {"target": QUEUE_CHAIN}}]])
       for hook, kind in (("prerouting", "filter"), ("output", "route"))},
    QUEUE_CHAIN: (None, []),
    **{f"reject-{hook}": (_hook("filter", hook, 0), [[*_NEW_VIP_FLOW, {"jump": {"target": REFUSE_CHAIN}}]])
       for hook in ("input", "forward", "output")},
    REFUSE_CHAIN: (None, [
        [{"reject": {"type": "tcp reset"}}],      # nft adds (and hides) its "meta l4proto tcp"
        [{"reject": {"type": "icmp", "expr": "port-unreachable"}}],
    ]),
    "dnat-prerouting": (_hook("nat", "prerouting", -100), [_DNAT_BY_MARK]),
    "dnat-output": (_hook("nat", "output", -100), [_DNAT_BY_MARK]),
    "snat-postrouting": (_hook("nat", "postrouting", 100), [[_mark_is(MARK_TAG | MARK_SNAT, 9), {"masquerade": None}]]),
    "clear-mark": (_hook("filter", "postrouting", 200),
                   [[_mark_is(MARK_TAG, 8), {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 0}}]]),
}
_SET = {**_IN_TABLE, "name": VIP_SET, "type": ["ipv4_addr", "inet_proto", "inet_service"]}
_SET_READ = {"family": "ip", "name": VIP_SET, "table": TABLE, "type": _SET["type"]}
_MAP_READ = {"family": "ip", "name": BACKEND_MAP, "table": TABLE, "type": "mark", "map": "ipv4_addr . inet_service"}
_TABLE_AND_MAP = (f"add table ip {TABLE}; delete table ip {TABLE}; add table ip {TABLE}; "
                  f"add map ip {TABLE} {BACKEND_MAP} {{ type mark : ipv4_addr . inet_service; }}")


def _chain_object(name: str) -> dict[str, Any]:
    hook, _ = _CHAINS[name]
    return {**_IN_TABLE, "name": name, **(hook or {})}


class _Base:
    """The table as read back: set and map declarations, chains, rules by chain."""

    def __init__(self, objects: list[Command]) -> None:
        self.set: dict | None = None
        self.map: dict | None = None
        self.chains: dict[str, dict] = {}
        self.rules: dict[str, list[list[Command]]] = {}
        for obj in without_handles(objects):
            if "set" in obj:
                self.set = obj["set"] if obj["set"]["name"] == VIP_SET else self.set
            elif "map" in obj:
                self.map = obj["map"] if obj["map"]["name"] == BACKEND_MAP else self.map
            elif "chain" in obj:
                self.chains[obj["chain"]["name"]] = obj["chain"]
            elif "rule" in obj:
                self.rules.setdefault(obj["rule"]["chain"], []).append(obj["rule"]["expr"])

    def declarations_intact(self) -> bool:
        return self.set == _SET_READ and self.map == _MAP_READ

    def chains_to_write(self) -> list[str]:
        """Chains missing, declared otherwise, or with other rules (QUEUE_CHAIN's are not JSON)."""
        return [name for name, (_, rules) in _CHAINS.items()
                if self.chains.get(name) != _chain_object(name)
                or (name != QUEUE_CHAIN and self.rules.get(name, []) != rules)]

    def foreign_chains(self) -> list[str]:
        return sorted(set(self.chains) - set(_CHAINS))


class KernelNetfilter:
    """The real seam; must be created in (and used from) the node's network namespace."""

    def __init__(self, node_ip: str | None = None) -> None:
        self.node_ip = node_ip
        self._nft = Nftables()
        self._conntrack = NetlinkSocket(NETLINK_NETFILTER)
        self._templates = MessageTemplates()
        # pyroute2's sync API runs an event loop of its own: it lives on a thread without one.
        self._pyroute2 = KernelThread("minuteman-pyroute2")
        self._ipr: IPRoute | None = None
        self._events: socket.socket | None = None

    def _route_call(self, fn: Callable[[IPRoute], T]) -> T:
        def call() -> T:
            if self._ipr is None:
                self._ipr = IPRoute()
            return fn(self._ipr)
        return self._pyroute2.call(call)

    # -- the table ------------------------------------------------------------------------
    def _read_base(self) -> _Base | None:
        """Our table as it is, None if there is none. Read through the ruleset: libnftables
        skips set elements there without elements (~2 ms), but not when listing one table."""
        try:
            objects = self._nft.read({"ruleset": {"family": "ip"}}, elements=False)
        except NftablesError as exc:
            raise NetfilterError(f"reading table {TABLE}: {exc}") from None
        ours = [obj for obj in objects if _in_our_table(obj)]
        return _Base(ours) if any("table" in obj for obj in ours) else None

    def _queue_rule_intact(self, queue: int, queues: int, cpu_fanout: bool) -> bool:
        try:
            return self._nft.xt_rules("ip", TABLE, QUEUE_CHAIN) == [("counter", nfqueue_target(queue, queues, cpu_fanout))]
        except NftablesError as exc:
            raise NetfilterError(f"reading chain {QUEUE_CHAIN}: {exc}") from None

    def base_intact(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> bool:
        base = self._read_base()
        return (base is not None and base.declarations_intact() and not base.chains_to_write()
                and not base.foreign_chains() and self._queue_rule_intact(queue, queues, cpu_fanout))

    def ensure_base(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> None:
        base = self._read_base()
        try:
            if base is None or not base.declarations_intact():
                self._build_table(base)
                base = _Base([])
            self._nft.run(self._chain_repairs(base))
            if not self._queue_rule_intact(queue, queues, cpu_fanout):
                self._nft.set_xt_rule("ip", TABLE, QUEUE_CHAIN, nfqueue_target(queue, queues, cpu_fanout))
        except NftablesError as exc:
            raise NetfilterError(f"table {TABLE}: {exc}") from None

    def _build_table(self, base: _Base | None) -> None:
        """The table from nothing (the map declared, its entries kept if it had any); then what
        earlier versions left is removed, now that it is no longer needed."""
        keep = self.backend_ids() if base is not None and base.map == _MAP_READ else {}
        self._nft.run_script(_TABLE_AND_MAP)
        self._nft.run([{"add": {"set": _SET}}, *_map_changes(keep, ())])
        self._remove_legacy()

    @staticmethod
    def _chain_repairs(base: _Base) -> list[Command]:
        """One transaction putting every chain that differs right (and foreign ones away)."""
        flush, delete, add, rules = [], [], [], []   # in this order: a jump's target exists first
        for name in base.foreign_chains():
            where = {**_IN_TABLE, "name": name}
            flush.append({"flush": {"chain": where}})
            delete.append({"delete": {"chain": where}})
        for name in base.chains_to_write():
            where = {**_IN_TABLE, "name": name}
            if name in base.chains:
                flush.append({"flush": {"chain": where}})
                if base.chains[name] != _chain_object(name):      # another hook: declared anew
                    delete.append({"delete": {"chain": where}})
            if name not in base.chains or base.chains[name] != _chain_object(name):
                add.append({"add": {"chain": _chain_object(name)}})
            rules += [{"add": {"rule": {**_IN_TABLE, "chain": name, "expr": expr}}} for expr in _CHAINS[name][1]]
        return flush + delete + add + rules

    def _remove_legacy(self) -> None:
        """iptables-nft chains and ipsets of earlier versions. Best effort: they hold no VIP
        of ours once the table serves, so a failure is only left for the next build."""
        try:
            self._nft.remove_xtables_chains(LEGACY_CHAIN_PREFIX, LEGACY_TABLES)
        except NftablesError:
            return

        def destroy_sets(_: IPRoute) -> None:
            from pyroute2 import IPSet
            from pyroute2.netlink.exceptions import NetlinkError

            with IPSet() as ipset:
                for name in LEGACY_SETS:
                    # The rules that used it are destroyed just after their transaction: until
                    # then the set is busy.
                    for _ in range(40):
                        try:
                            ipset.destroy(name)
                        except NetlinkError as exc:
                            if exc.code == IPSET_ERR_BUSY:
                                time.sleep(0.025)
                                continue
                        break
        self._route_call(destroy_sets)

    def remove_base(self) -> None:
        try:
            self._nft.delete_table("ip", TABLE)
        except NftablesError as exc:
            raise NetfilterError(f"removing table {TABLE}: {exc}") from None
        self._remove_legacy()
        self.set_routes(set())

    # -- the VIP set ----------------------------------------------------------------------
    def vip_members(self) -> set[VipKey]:
        try:
            elements = self._nft.elements("ip", TABLE, VIP_SET)
        except NotFound:
            return set()
        except NftablesError as exc:
            raise NetfilterError(f"reading set {VIP_SET}: {exc}") from None
        members = set()
        for key, _ in elements:
            # ipv4_addr . inet_proto . inet_service, each field in a 4-byte register
            protocol = _PROTOCOL_OF.get(key[4])
            if len(key) == 12 and protocol is not None:
                members.add(VipKey(socket.inet_ntoa(key[:4]), int.from_bytes(key[8:10], "big"), protocol))
        return members

    def update_vips(self, add: Iterable[VipKey], remove: Iterable[VipKey]) -> dict[VipKey, str]:
        add, remove = list(add), list(remove)
        try:
            self._nft.run(_set_changes(add, remove))
            return {}
        except NftablesError:
            pass
        # One bad member fails the whole transaction: find which, one at a time (a member
        # already gone is not an error).
        errors: dict[VipKey, str] = {}
        for key, changes in [*((k, _set_changes((), [k])) for k in remove), *((k, _set_changes([k], ())) for k in add)]:
            try:
                self._nft.run(changes)
            except NotFound:
                if key in add:
                    errors[key] = f"set {VIP_SET}: no such set"
            except NftablesError as exc:
                errors[key] = f"set {VIP_SET}: {exc}"
        return errors

    # -- the NAT map ----------------------------------------------------------------------
    def backend_ids(self) -> dict[int, Backend]:
        try:
            objects = self._nft.read({"map": {**_IN_TABLE, "name": BACKEND_MAP}})
        except NotFound:
            return {}      # no map yet
        except NftablesError as exc:
            # Not "empty": every backend would get a second id, and the first ones would stay.
            raise NetfilterError(f"reading map {BACKEND_MAP}: {exc}") from None
        ids = {}
        for obj in objects:
            for key, value in obj.get("map", {}).get("elem", []):
                address, port = value["concat"]
                ids[int(key)] = Backend(address, int(port))
        return ids

    def update_backend_ids(self, add: dict[int, Backend], remove: Iterable[int]) -> None:
        try:
            self._nft.run(_map_changes(add, remove))
        except NftablesError as exc:
            raise NetfilterError(f"map {BACKEND_MAP}: {exc}") from None

    # -- routes ---------------------------------------------------------------------------
    def local_routes(self) -> set[str]:
        return self._route_call(_our_routes)

    def set_routes(self, prefixes: set[str]) -> dict[str, str]:
        def sync(ipr: IPRoute) -> dict[str, str]:
            lo = ipr.link_lookup(ifname="lo")[0]
            have = _our_routes(ipr)
            errors: dict[str, str] = {}
            for prefix in have - prefixes:
                try:
                    ipr.route("del", dst=prefix, table=255, type="local", proto=ROUTE_PROTO, oif=lo, scope=254)
                except Exception as exc:   # gone already is fine; anything else is reported
                    if getattr(exc, "code", None) != 3:
                        errors[prefix] = f"route {prefix}: {exc}"
            for prefix in sorted(prefixes - have):
                # The node IP as source keeps local clients off the VIP as their address; if it is
                # not (yet) local here the kernel refuses it, and VIP-sourced flows get SNAT instead.
                for extra in ([{"prefsrc": self.node_ip}] if self.node_ip else []) + [{}]:
                    try:
                        ipr.route("add", dst=prefix, table=255, type="local", proto=ROUTE_PROTO,
                                  oif=lo, scope=254, **extra)
                        errors.pop(prefix, None)
                        break
                    except Exception as exc:   # pyroute2's NetlinkError; one bad route is one error
                        errors[prefix] = f"route {prefix}: {exc}"
            return errors
        return self._route_call(sync)

    def route_to(self, ip: str) -> RouteInfo | None:
        def lookup(ipr: IPRoute) -> RouteInfo | None:
            try:
                route, = ipr.route("get", dst=ip)
            except Exception:     # unreachable: no route
                return None
            return RouteInfo(route.get_attr("RTA_OIF"), route.get_attr("RTA_PREFSRC") or self.node_ip or "")
        return self._route_call(lookup)

    # -- flows ----------------------------------------------------------------------------
    def flow_states(self, flows: list[Flow]) -> list[FlowState | None]:
        def render(flow: Flow, seq: int) -> bytes:
            return self._flow_template(flow.protocol).render(seq, _flow_values(flow))
        try:
            answers = self._conntrack.get_many(render, flows)
        except NetlinkRequestError as exc:
            raise NetfilterError(f"conntrack: {exc}") from None
        return [None if answer is None else _flow_state(answer) for answer in answers]

    def _flow_template(self, protocol: Protocol_) -> MessageTemplate:
        """A conntrack GET by original tuple, encoded by pyroute2 once per protocol."""
        def build() -> MessageTemplate:
            flow = Flow(protocol, _S_CLIENT, _S_SPORT, _S_VIP, _S_DPORT)
            return MessageTemplate(nfct_msg.create_from(tuple_orig=_tuple(flow)), NFNL_SUBSYS_CTNETLINK,
                                   IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_ACK, _flow_values(flow))
        return self._templates.get(("ct-get", protocol), build)

    def closed_flows(self) -> list[Flow]:
        if self._events is None:
            self._events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            self._events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._events.bind((0, 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))
            self._events.setblocking(False)
        flows = []
        while True:
            try:
                data = self._events.recv(1 << 16)
            except BlockingIOError:
                return flows
            except OSError:      # ENOBUFS: events were lost; the counts heal as flows end
                continue
            offset = 0
            while offset < len(data):
                length = struct.unpack_from("=I", data, offset)[0]
                msg = nfct_msg(data[offset:offset + length])
                msg.decode()
                offset += (length + 3) & ~3
                flow = _flow_of(msg)
                if flow is not None:
                    flows.append(flow)

    def close(self) -> None:
        self._conntrack.close()
        self._nft.close()
        if self._events is not None:
            self._events.close()

        def shut() -> None:
            if self._ipr is not None:
                self._ipr.close()
        self._pyroute2.call(shut)
        self._pyroute2.close()


def _in_our_table(obj: Command) -> bool:
    (kind, body), = obj.items()
    return body.get("name" if kind == "table" else "table") == TABLE


def _set_changes(add: Iterable[VipKey], remove: Iterable[VipKey]) -> list[Command]:
    def elements(keys: Iterable[VipKey]) -> list[dict]:
        return [{"concat": [key.address, key.protocol, key.port]} for key in keys]
    where = {**_IN_TABLE, "name": VIP_SET}
    remove, add = elements(remove), elements(add)
    return ([{"delete": {"element": {**where, "elem": remove}}}] if remove else []) + \
        ([{"add": {"element": {**where, "elem": add}}}] if add else [])


def _map_changes(add: dict[int, Backend], remove: Iterable[int]) -> list[Command]:
    """Commands that take ``remove`` out of the NAT map and put ``add`` in."""
    where = {**_IN_TABLE, "name": BACKEND_MAP}
    remove = sorted(set(remove))
    return ([{"delete": {"element": {**where, "elem": remove}}}] if remove else []) + \
        ([{"add": {"element": {**where, "elem": [[key, {"concat": [b.ip, b.port]}] for key, b in sorted(add.items())]}}}]
         if add else [])


def _our_routes(ipr) -> set[str]:
    return {f"{r.get_attr('RTA_DST')}/{r['dst_len']}" for r in ipr.get_routes(table=255, proto=ROUTE_PROTO)}


# Sentinels of the conntrack template: TEST-NET-1 addresses and ports that occur nowhere else
# in the message.
_S_CLIENT, _S_VIP = "192.0.2.11", "192.0.2.22"
_S_SPORT, _S_DPORT = 0xA1B1, 0xA2B2


def _flow_values(flow: Flow) -> dict[str, bytes]:
    return {"client": socket.inet_aton(flow.src), "sport": struct.pack("!H", flow.sport),
            "vip": socket.inet_aton(flow.dst), "dport": struct.pack("!H", flow.dport)}


def _tuple(flow: Flow) -> NFCTAttrTuple:
    return NFCTAttrTuple(saddr=flow.src, daddr=flow.dst, proto=IPPROTO[flow.protocol],
                         sport=flow.sport, dport=flow.dport)


def _flow_state(answer: bytes) -> FlowState:
    top = attrs(answer)
    status = struct.unpack("!I", top[CTA_STATUS][:4])[0] if CTA_STATUS in top else 0
    tcp = attrs(attrs(top.get(CTA_PROTOINFO, b"")).get(CTA_PROTOINFO_TCP, b""))
    state = tcp[CTA_PROTOINFO_TCP_STATE][0] if CTA_PROTOINFO_TCP_STATE in tcp else None
    return FlowState(bool(status & IPS_SEEN_REPLY), bool(status & IPS_ASSURED), state)


def _flow_of(msg) -> Flow | None:
    orig = msg.get_attr("CTA_TUPLE_ORIG")
    if orig is None:
        return None
    ip, proto = orig.get_attr("CTA_TUPLE_IP"), orig.get_attr("CTA_TUPLE_PROTO")
    protocol = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}.get(proto.get_attr("CTA_PROTO_NUM"))
    if protocol is None:
        return None
    return Flow(protocol, ip.get_attr("CTA_IP_V4_SRC"), proto.get_attr("CTA_PROTO_SRC_PORT"),
                ip.get_attr("CTA_IP_V4_DST"), proto.get_attr("CTA_PROTO_DST_PORT"))

