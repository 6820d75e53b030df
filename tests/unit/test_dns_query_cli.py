"""`navstar dns query` against a live resolver on loopback (dig +short style output, rcode on failure)."""

from __future__ import annotations

import asyncio

from typer.testing import CliRunner

from spartan_dns.cli import dns_app
from spartan_dns.service import DnsService

VIP = "web.marathon.l4lb.thisdcos.directory"


async def run_query(*args: str):
    return await asyncio.to_thread(CliRunner().invoke, dns_app, ["query", *args])


async def test_query_prints_answers_and_rcodes():
    service = DnsService(listen=["127.0.0.1"], port=0, upstreams=[])
    service.set_vips({VIP: "11.0.0.7"})
    await service.start()
    try:
        port = str(service.addresses[0][1])
        found = await run_query(VIP, "--server", "127.0.0.1", "--port", port)
        assert (found.exit_code, found.stdout.strip()) == (0, "11.0.0.7")
        soa = await run_query("mesos", "SOA", "--server", "127.0.0.1", "--port", port)
        assert soa.exit_code == 0 and soa.stdout.startswith("ns1.mesos. root.ns1.mesos.")
        missing = await run_query("nope.marathon.l4lb.thisdcos.directory", "--server", "127.0.0.1", "--port", port)
        assert missing.exit_code == 1 and "NXDOMAIN" in missing.output
        bad_type = await run_query(VIP, "BOGUS", "--server", "127.0.0.1", "--port", port)
        assert bad_type.exit_code == 2 and "TYPE" in bad_type.output
    finally:
        await service.stop()


async def test_query_without_a_server_says_so():
    silent = await run_query("ready.spartan", "--server", "127.0.0.1", "--port", "9", "--timeout", "0.3")
    assert silent.exit_code == 1
    assert "127.0.0.1" in silent.output
