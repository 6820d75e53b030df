"""The DNS replay table in the kernel (``bpf/dns_replay.c`` at tc ingress on ``lo``), in a test
namespace: own-zone and cached answers come from the kernel once the resolver has given them
(cached ones with their TTLs counted down), a zone change is never answered stale, a stopped resolver's filter falls silent, and stopping detaches it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.reference import REPO
from tests.waiting import wait_until

DNS_IP = "198.51.100.1"
NAME = "web.marathon.l4lb.thisdcos.directory"

# Runs inside the namespace: the service with the kernel offload, a blocking client beside it.
IN_PROCESS = textwrap.dedent(f"""
    import asyncio, json, socket, time
    from dnslib import A, QTYPE, RR, DNSRecord
    from bpf.dns_replay import KernelDnsReplay
    from spartan_dns.service import DnsService

    def ask(count, name="{NAME}", ttls=None):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(2)
        query = DNSRecord.question(name, "A")
        seen = []
        for qid in range(1, count + 1):
            query.header.id = qid
            client.sendto(query.pack(), ("{DNS_IP}", 53))
            reply = DNSRecord.parse(client.recv(2048))
            assert reply.header.id == qid, (reply.header.id, qid)
            seen.append(str(reply.rr[0].rdata))
            if ttls is not None:
                ttls.add(reply.rr[0].ttl)
        return sorted(set(seen))

    class Upstream:                 # answers every A question with 10.9.9.9, TTL 60
        async def exchange(self, upstream, query):
            reply = DNSRecord.parse(query).reply()
            reply.add_answer(RR(reply.q.qname, QTYPE.A, ttl=60, rdata=A("10.9.9.9")))
            return bytes(reply.pack())

    async def main():
        service = DnsService(listen=["{DNS_IP}"], port=53, upstreams=["10.0.0.53"], transport=Upstream(),
                             replay_offload=KernelDnsReplay())
        service.set_vips({{"{NAME}": "11.0.0.1"}})
        await service.start()
        out = {{}}
        out["first"] = await asyncio.to_thread(ask, 200)
        service.server.count_offloaded()
        out["kernel_after_first"] = service.stats.kernel_answers
        service.set_vips({{"{NAME}": "11.0.0.2"}})          # the zones change: nothing stale answers
        out["second"] = await asyncio.to_thread(ask, 200)
        service.server.count_offloaded()
        out["kernel_after_second"] = service.stats.kernel_answers
        out["process_answers"] = sum(n for k, n in service.stats.requests.items() if k[3] != "kernel")
        # A forwarded answer fetched 20 s ago (by the cache's clock): TTL 40 now, from the
        # resolver's cache once, then from the kernel, which counts the same seconds.
        service.forward.clock = lambda: time.monotonic() - 20.0
        await asyncio.to_thread(ask, 1, "www.example.net")
        service.forward.clock = time.monotonic
        ttls = set()
        out["forwarded"] = await asyncio.to_thread(ask, 200, "www.example.net", ttls)
        out["forwarded_ttls"] = sorted(ttls)
        before = service.stats.kernel_answers
        service.server.count_offloaded()
        out["kernel_forwarded"] = service.stats.kernel_answers - before
        await service.stop()
        print(json.dumps(out))

    asyncio.run(main())
""")


@pytest.fixture
def dns_ns(netns):
    netns.run("ip", "addr", "add", f"{DNS_IP}/32", "dev", "lo")
    return netns


def ingress_filters(netns) -> str:
    return netns.run("tc", "filter", "show", "dev", "lo", "ingress").stdout


def test_own_zone_and_cached_answers_come_from_the_kernel_and_a_zone_change_is_never_answered_stale(dns_ns) -> None:
    done = dns_ns.run(sys.executable, "-c", IN_PROCESS, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["first"] == ["11.0.0.1"] and out["second"] == ["11.0.0.2"], out
    # The resolver answered each name once per zone version; the kernel the other 199 times.
    assert out["kernel_after_first"] >= 195 and out["kernel_after_second"] >= 390, out
    assert out["process_answers"] <= 10, out
    assert out["forwarded"] == ["10.9.9.9"] and out["kernel_forwarded"] >= 195, out
    assert set(out["forwarded_ttls"]) <= {40, 39} and 40 in out["forwarded_ttls"], out   # counted down
    assert "nv_dns_answer" not in ingress_filters(dns_ns)          # stop() detached it


def test_a_stopped_resolver_falls_silent_in_the_kernel_too_and_answers_again_when_it_runs(dns_ns, tmp_path) -> None:
    vips = tmp_path / "vips.json"
    vips.write_text(json.dumps({NAME: "11.0.0.1"}))
    log = tmp_path / "dns.log"
    resolver = dns_ns.popen(sys.executable, "-m", "spartan_dns", "--listen", DNS_IP, "--port", "53",
                            "--vips", str(vips), "--upstream", "127.0.0.9", "--kernel-replay", "lo", cwd=REPO,
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    try:
        assert resolver.stdout.readline().strip() == "ready", log.read_text()
        assert "nv_dns_answer" in ingress_filters(dns_ns)

        def answers() -> bool:
            probe = dns_ns.run("dig", "+short", "+tries=1", "+time=1", "+nocookie", f"@{DNS_IP}", NAME, check=False)
            return probe.stdout.strip() == "11.0.0.1"
        assert answers()
        resolver.send_signal(signal.SIGSTOP)     # alive, but not answering: no heartbeat either
        wait_until(lambda: not answers(), 15, message="the kernel stops answering for a stopped resolver")
        resolver.send_signal(signal.SIGCONT)
        wait_until(answers, 15, message="answers again once the resolver runs")
        resolver.send_signal(signal.SIGTERM)
        resolver.wait(10)
        assert "nv_dns_answer" not in ingress_filters(dns_ns), log.read_text()
    finally:
        if resolver.poll() is None:
            resolver.send_signal(signal.SIGCONT)
            resolver.kill()
            resolver.wait(10)
