"""One NFQUEUE queue, read by a process of its own (started by ``minuteman.nfqueue``).

```
agent ══ socketpair (frames) ══► worker: {"vips", "drop", "full"} → FlowBalancer.update
kernel ─ first packet of a VIP flow (queue N) ─► worker: mark = FlowBalancer.mark_for(packet)
       ◄─ verdict: accept, with the mark (the NAT hooks DNAT by it) ─┘
worker ══ Report every 0.1 s (connections, health samples) ══► agent
```

A process, not a thread: queue workers of one process would take turns on the GIL, and with the
queues fanned out by CPU each worker is pinned to the CPU whose packets it reads, so the packet,
its verdict and the handshake that follows stay on one CPU (no cross-CPU wake-ups). The worker
ends with the agent (parent-death signal, or end of its socket); the queue then has no reader
and ``--queue-bypass`` lets new VIP flows through unmarked, to be rejected at once.

    python -m minuteman.nfqueue_worker --queue 50 --control-fd 5 [--cpu 0]
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import select
import signal
import socket
import sys
import threading
import time

from minuteman.flow_balancer import REPORT_INTERVAL, FlowBalancer, FrameReader, frame

log = logging.getLogger("navstar.minuteman.nfqueue_worker")

QUEUE_MAXLEN = 8192           # packets the kernel holds for the worker before it drops new ones
COPY_BYTES = 128              # of each queued packet: the IPv4 header (≤ 60 bytes) and the ports
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:      # the agent ended before the signal was asked for
        sys.exit(0)


class QueueWorker:
    def __init__(self, queue: int, control: socket.socket, cpu: int | None = None) -> None:
        from netfilterqueue import NetfilterQueue

        self.queue = queue
        self.control = control
        self.balancer = FlowBalancer()
        self._frames = FrameReader()
        self._closed_flows = None
        self._lock = threading.Lock()     # the balancer: packets on one thread, table and reports on another
        self._mark_for = self.balancer.mark_for
        if cpu is not None:
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError as exc:      # a cpuset without that CPU: serve unpinned
                log.warning("queue %d: cannot pin to CPU %d: %s", queue, cpu, exc)
        # The table before the queue: a worker that read packets with an empty table would
        # reject every new VIP flow until the table came.
        while (took_table := self._read_control()) is False:
            pass
        if took_table is None:
            sys.exit(0)
        self._nfq = NetfilterQueue()
        self._nfq.bind(queue, self._on_packet, max_len=QUEUE_MAXLEN, range=COPY_BYTES)

    def _on_packet(self, packet) -> None:
        # Every packet gets a verdict, even when balancing fails: unmarked, the filter rule
        # rejects it rather than leaving the client hanging.
        try:
            with self._lock:
                mark = self._mark_for(packet.get_payload(), packet.indev)
        except Exception:     # a bug must not lose the verdict
            log.exception("queue %d: balancing failed", self.queue)
            mark = 0
        if mark:
            packet.set_mark(mark)
        packet.accept()

    def run(self) -> None:
        """Packets on this thread (a blocking read loop, without the GIL while it waits: two
        system calls per packet, the read and the verdict); the table and the reports on another."""
        self.control.sendall(frame({"ready": self.queue}))
        threading.Thread(target=self._control_loop, name="control", daemon=True).start()
        self._nfq.run(True)

    def _control_loop(self) -> None:
        """Until the agent goes or asks us to stop; the queue unbinds as the process ends. Any
        failure here ends the process too (the agent starts another, which gets the whole table
        afresh): a worker must never go on marking packets with a table it no longer gets."""
        status = 1
        try:
            poller = select.poll()
            poller.register(self.control.fileno(), select.POLLIN)
            next_report = time.monotonic() + REPORT_INTERVAL
            while True:
                if poller.poll(REPORT_INTERVAL * 1000) and self._read_control() is None:
                    status = 0
                    break
                now = time.monotonic()
                if now >= next_report:
                    next_report = now + REPORT_INTERVAL
                    self._report()
        except BaseException:
            log.exception("queue %d: control failed; ending", self.queue)
        finally:
            os._exit(status)

    def _read_control(self) -> bool | None:
        """Take what the agent sent: True once a whole table was taken, None when told to stop
        (or the agent is gone), False otherwise."""
        data = self.control.recv(1 << 20)
        if not data:
            return None        # the agent is gone
        full = False
        for message in self._frames.feed(data):
            if message.get("stop"):
                return None
            with self._lock:
                self.balancer.update(message.get("vips", {}), message.get("drop", ()), message.get("full", False))
            full = full or bool(message.get("full"))
        return full

    def _report(self) -> None:
        if self.balancer.needs_closed_flows:
            closed = self._closed_flows_source().closed_flows()
            with self._lock:
                self.balancer.flows_closed(closed)
        with self._lock:
            report = self.balancer.take_report()
        if report:
            self.control.sendall(frame({"report": report}))

    def _closed_flows_source(self):
        if self._closed_flows is None:
            from minuteman.netfilter_kernel import KernelNetfilter

            self._closed_flows = KernelNetfilter()
        return self._closed_flows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minuteman.nfqueue_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True, help="the agent's end of a socketpair")
    parser.add_argument("--cpu", type=int, help="pin to this CPU (the queue gets this CPU's packets)")
    parser.add_argument("--nice", type=int, help="scheduling niceness (new connections wait on this process)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s queue {args.queue} %(levelname)s %(message)s")
    die_with_parent()
    if args.nice is not None:
        try:     # before any thread starts: threads take their creator's niceness
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        except OSError as exc:
            log.warning("queue %d: cannot run at nice %d: %s", args.queue, args.nice, exc)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    control = socket.socket(fileno=args.control_fd)
    QueueWorker(args.queue, control, args.cpu).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
