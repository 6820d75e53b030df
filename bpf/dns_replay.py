"""The DNS replay table in the kernel: the real side of ``spartan_dns.offload.ReplayOffload``.

```
resolver answers a query from its own zones ──put(query tail, reply tail, stat)──► nv_dns_replay
zones change ──forget()──► nv_dns_control.generation += 1   (every stored entry stops answering)
every second ──heartbeat()──► nv_dns_control.alive_until_ns = now + 3 s
query on lo ─► tc ingress nv_dns_answer (bpf/dns_replay.c) ─hit─► the packet turned into its reply
                                                           └miss─► the resolver's socket, as before
hits(n) ◄── nv_dns_hits (per CPU, by stat, the n in use)
```

The program is attached as a tc filter (clsact ingress) on the interface the resolver's clients
reach it through — ``lo`` for the node itself and host-network tasks. A filter outlives the
process that attached it, so ``attach`` first removes one this module left behind (same
priority and name), ``close`` removes its own, and the heartbeat makes a filter whose resolver
has died stop answering within seconds.

bcc compiles the program (≈ 1 s); pyroute2 attaches it. Only this module imports them for DNS.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable

from bpf.loader import BPF_DIR, COMPILE_LOCK, LoaderError, translation_unit
from kernel.offloop import KernelThread, on_kernel_thread
from spartan_dns.offload import Countdown

log = logging.getLogger("navstar.dns.kernel")

KEY_MAX = 252           # lib/dns_replay.h
REPLY_MAX = 1024
TTLS = 8
STATS = 256
FILTER_PRIORITY = 0xD53          # ours among the interface's ingress filters
FILTER_HANDLE = 0xD53
PROGRAM = "nv_dns_answer"
ALIVE_SECONDS = 3.0


def _be32(address: str) -> int:
    """An IPv4 address as the u32 whose memory holds it in network order (little-endian host)."""
    return int.from_bytes(socket.inet_aton(address), "little")


class KernelDnsReplay:
    """Loads ``bpf/dns_replay.c``; ``attach`` puts it on an interface of the current namespace."""

    def __init__(self) -> None:
        from bcc import BPF  # the kernel layer's import: the resolver works without bcc

        try:
            with COMPILE_LOCK:
                self._bpf = BPF(text=translation_unit(BPF_DIR / "dns_replay.c").encode())
            self._program = self._bpf.load_func(PROGRAM, BPF.SCHED_CLS)
        except Exception as exc:  # bcc raises bare Exception for compile and verifier errors
            raise LoaderError(f"dns_replay.c: {exc}") from exc
        self._replay = self._bpf["nv_dns_replay"]
        self._control = self._bpf["nv_dns_control"]
        self._hits = self._bpf["nv_dns_hits"]
        self._clients = self._bpf["nv_dns_clients"]
        self._listen = self._bpf["nv_dns_listen"]
        self._generation = 1
        self._alive_until = 0
        self._attached: list[int] = []       # interface indexes
        # pyroute2's IPRoute refuses a thread whose event loop runs (the resolver's): tc on its own.
        self.kernel_thread = KernelThread("dns-replay-tc")
        self._write_control()

    # -- the seam ------------------------------------------------------------------------------
    @on_kernel_thread
    def attach(self, interfaces: Iterable[str]) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for name in interfaces:
                found = ipr.link_lookup(ifname=name)
                if not found:
                    raise LoaderError(f"dns replay: no interface {name!r}")
                index = found[0]
                with contextlib.suppress(Exception):    # already there (ours or someone's): shared
                    ipr.tc("add", "clsact", index)
                self._remove_filter(ipr, index)          # one a previous resolver left
                ipr.tc("add-filter", "bpf", index, FILTER_HANDLE, fd=self._program.fd, name=PROGRAM,
                       parent="ffff:fff2", classid=1, direct_action=True, prio=FILTER_PRIORITY)
                self._attached.append(index)

    def listen(self, addresses: Iterable[tuple[str, int]]) -> None:
        self._listen.clear()
        for address, port in addresses:
            if ipaddress.ip_address(address).version != 4:
                continue
            key = self._listen.Key(_be32(address), socket.htons(port), 0)
            self._listen[key] = ctypes.c_uint8(1)

    def clients(self, networks: Iterable[str]) -> None:
        self._clients.clear()
        for network in networks:
            net = ipaddress.ip_network(network, strict=False)
            if net.version != 4:
                continue
            self._clients[self._clients.Key(net.prefixlen, _be32(str(net.network_address)))] = ctypes.c_uint8(1)

    def put(self, query_tail: bytes, reply_tail: bytes, stat: int, countdown: Countdown | None = None) -> bool:
        if (not 0 < len(query_tail) <= KEY_MAX or not 0 < len(reply_tail) <= REPLY_MAX or not 0 <= stat < STATS
                or (countdown is not None and len(countdown.ttls) > TTLS)):
            return False
        key = self._replay.Key()
        key.len = len(query_tail)
        ctypes.memmove(key.data, query_tail, len(query_tail))
        value = self._replay.Leaf()
        value.generation, value.len, value.stat = self._generation, len(reply_tail), stat
        if countdown is not None:
            value.origin_ns, value.until_ns = int(countdown.origin * 1e9), int(countdown.until * 1e9)
            value.ttls = len(countdown.ttls)
            for i, (offset, ttl) in enumerate(countdown.ttls):
                value.ttl_offset[i], value.ttl_base[i] = offset, ttl
        ctypes.memmove(value.data, reply_tail, len(reply_tail))
        try:
            self._replay[key] = value
        except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception with the errno text
            raise OSError(f"dns replay map update: {exc}") from None
        return True

    def forget(self) -> None:
        self._generation = (self._generation + 1) & 0xFFFFFFFF or 1
        self._write_control()

    def heartbeat(self) -> None:
        self._alive_until = time.monotonic_ns() + int(ALIVE_SECONDS * 1e9)
        self._write_control()

    def hits(self, stats: int) -> dict[int, int]:
        # Only the ids in use: a walk over all 256 costs a syscall each, every second, for nothing.
        try:
            return {index: total for index in range(min(stats, len(self._hits)))
                    if (total := sum(self._hits[index]))}
        except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception with the errno text
            raise OSError(f"dns replay hits: {exc}") from None

    def close(self) -> None:
        """Detaches from every interface (the clsact qdisc stays: other filters may use it)."""
        self._alive_until = 0
        with contextlib.suppress(Exception):
            self._write_control()
        self._detach()
        self.kernel_thread.close()
        self._bpf.cleanup()

    @on_kernel_thread
    def _detach(self) -> None:
        if self._attached:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                for index in self._attached:
                    self._remove_filter(ipr, index)
            self._attached = []

    # -- inside -----------------------------------------------------------------------------------
    def _write_control(self) -> None:
        control = self._control.Leaf()
        control.generation, control.alive_until_ns = self._generation, self._alive_until
        try:
            self._control[ctypes.c_int(0)] = control
        except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception with the errno text
            raise OSError(f"dns replay control update: {exc}") from None

    @staticmethod
    def _remove_filter(ipr, index: int) -> None:
        with contextlib.suppress(Exception):     # none there: nothing to remove
            ipr.tc("del-filter", "bpf", index, FILTER_HANDLE, parent="ffff:fff2", prio=FILTER_PRIORITY)
