"""Fuzz: at least 100,000 malformed and mutated packets at the running resolver, over UDP and TCP,
while valid queries keep being answered; the server must neither die nor log a traceback."""

from __future__ import annotations

import json
import random
import re
import select
import socket
import struct
import subprocess
import sys
from pathlib import Path

from dnslib import EDNS0, DNSRecord
from pyroute2 import netns as pyroute2_netns

from tests.unit.test_dns_message import pointer_chain_packet

REPO = Path(__file__).resolve().parents[2]
DNS_IP = "198.51.100.1"
BLACKHOLE_UPSTREAM = "127.0.0.3"        # a socket nobody reads: forwarded queries time out
PACKETS = 100_000
BATCH = 500
VIPS = {f"svc{i}.marathon.l4lb.thisdcos.directory": f"11.0.1.{i}" for i in range(1, 21)}
QTYPES = (1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 65, 251, 252, 255, 0, 65535)


def valid_query(rng: random.Random, name: str | None = None) -> bytes:
    query = DNSRecord.question(name or rng.choice([*VIPS, "ready.spartan", "www.example.com", "mesos"]))
    query.header.id = rng.randrange(65536)
    if rng.random() < 0.5:
        query.add_ar(EDNS0(udp_len=rng.choice([0, 512, 1232, 4096, 65535]), version=rng.choice([0, 0, 0, 1])))
    return bytes(query.pack())


def mutant(rng: random.Random, seeds: list[bytes], chains: list[bytes]) -> bytes:
    kind = rng.random()
    base = rng.choice(seeds)
    if kind < 0.30:                                 # flip a few bytes of a valid query
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind < 0.50:                                 # cut short
        return base[: rng.randrange(len(base))]
    if kind < 0.65:                                 # noise
        return rng.randbytes(rng.randrange(0, 600))
    if kind < 0.75:                                 # a valid header with counts and flags at random
        return struct.pack("!HHHHHH", *(rng.randrange(65536) for _ in range(6))) + base[12:]
    if kind < 0.85:                                 # type/class/opcode games on a valid query
        data = bytearray(base)
        name_end = data.index(0, 12)
        data[name_end + 1:name_end + 3] = struct.pack("!H", rng.choice(QTYPES))
        data[name_end + 3:name_end + 5] = struct.pack("!H", rng.choice((1, 3, 4, 254, 255, 0)))
        data[2] = (data[2] & 0x87) | (rng.randrange(16) << 3)
        return bytes(data)
    if kind < 0.93:                                 # labels too long, names too long, pointer loops
        return rng.choice([
            base[:12] + b"\x7f" + b"a" * 127 + b"\x00\x00\x01\x00\x01",
            base[:12] + (b"\x3f" + b"b" * 63) * 5 + b"\x00\x00\x01\x00\x01",
            base[:12] + b"\xc0\x0c\x00\x01\x00\x01",
            base[:12] + b"\x01a\xc0\x0c\x00\x01\x00\x01",
        ])
    if kind < 0.94:                                 # deep pointer chains (RecursionError in dnslib)
        return rng.choice(chains)
    data = bytearray(base)                          # insert/delete a run of bytes
    at = rng.randrange(len(data))
    if rng.random() < 0.5:
        data[at:at] = rng.randbytes(rng.randint(1, 40))
    else:
        del data[at:at + rng.randint(1, 10)]
    return bytes(data)


def in_namespace(name: str, family: int, kind: int) -> socket.socket:
    pyroute2_netns.pushns(name)
    try:
        return socket.socket(family, kind)
    finally:
        pyroute2_netns.popns()


def ask_valid(sock: socket.socket, rng: random.Random) -> bool:
    """One valid VIP query; True when the right answer came back (two tries, each waiting the
    socket's generous timeout for the reply with its id; late replies to an earlier try are skipped)."""
    name = rng.choice(list(VIPS))
    for _ in range(2):
        query = DNSRecord.question(name)
        sock.send(query.pack())
        try:
            while (reply := DNSRecord.parse(sock.recv(4096))).header.id != query.header.id:
                pass
        except TimeoutError:
            continue
        return [str(rr.rdata) for rr in reply.rr] == [VIPS[name]]
    return False


def test_fuzzing_does_not_stop_valid_answers(netns, tmp_path):
    netns.run("ip", "addr", "add", f"{DNS_IP}/32", "dev", "lo")
    blackhole = in_namespace(netns.name, socket.AF_INET, socket.SOCK_DGRAM)
    blackhole.bind((BLACKHOLE_UPSTREAM, 53))
    vips = tmp_path / "vips.json"
    vips.write_text(json.dumps(VIPS))
    log = tmp_path / "dns.log"
    server = netns.popen(sys.executable, "-m", "spartan_dns", "--listen", DNS_IP, "--port", "53",
                         "--vips", str(vips), "--upstream", BLACKHOLE_UPSTREAM, "--upstream-timeout", "0.5",
                         "--overall-timeout", "1", "--max-inflight", "200", "--tcp-idle-timeout", "2",
                         "--metrics-listen", "127.0.0.1:61991",
                         cwd=REPO, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    try:
        assert server.stdout.readline().strip() == "ready", log.read_text()
        rng = random.Random(20240605)
        seeds = [valid_query(rng) for _ in range(200)]
        chains = [pointer_chain_packet(rng.randrange(65536), links) for links in (1200, 3000, 5000)]
        fuzz = in_namespace(netns.name, socket.AF_INET, socket.SOCK_DGRAM)
        valid = in_namespace(netns.name, socket.AF_INET, socket.SOCK_DGRAM)
        fuzz.connect((DNS_IP, 53))
        valid.connect((DNS_IP, 53))
        valid.settimeout(10.0)
        fuzz.setblocking(False)
        sent = answered_valid = checks = fuzz_replies = 0
        while sent < PACKETS:
            for _ in range(BATCH):
                try:
                    fuzz.send(mutant(rng, seeds, chains) or b"\x00")
                    sent += 1
                except BlockingIOError:              # the send buffer is full: wait until it drains
                    select.select([], [fuzz], [], 1.0)
                except OSError:                      # e.g. ECONNREFUSED from a reply ICMP: keep going
                    pass
            while True:                              # drain whatever the server answered to the noise
                try:
                    fuzz.recv(4096)
                    fuzz_replies += 1
                except (BlockingIOError, OSError):
                    break
            checks += 1
            answered_valid += ask_valid(valid, rng)
        tcp_frames = _fuzz_tcp(netns.name, rng, seeds, chains)
        assert sent >= PACKETS and tcp_frames >= 500
        assert answered_valid == checks, f"{checks - answered_valid} of {checks} valid queries unanswered"
        assert ask_valid(valid, rng)
        assert server.poll() is None, "the resolver died"
        metrics = netns.run("curl", "-sL", "http://127.0.0.1:61991/metrics").stdout
        seen = sum(float(v) for v in re.findall(r"^navstar_dns_(?:requests|dropped)_total\{[^}]*\} (\S+)$",
                                                metrics, re.M))
        assert seen >= 0.9 * PACKETS, f"the server only saw {seen:.0f} of {sent} packets"
        assert fuzz_replies > 0
        for sock in (fuzz, valid):
            sock.close()
    finally:
        blackhole.close()
        if server.poll() is None:
            server.terminate()
            server.wait(10)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


def _fuzz_tcp(namespace: str, rng: random.Random, seeds: list[bytes], chains: list[bytes]) -> int:
    """Garbage framed over TCP: random frames, lying length prefixes, abrupt closes."""
    frames = 0
    for _ in range(50):
        conn = in_namespace(namespace, socket.AF_INET, socket.SOCK_STREAM)
        conn.settimeout(2)
        try:
            conn.connect((DNS_IP, 53))
            for _ in range(rng.randint(5, 20)):
                body = mutant(rng, seeds, chains)
                length = len(body) if rng.random() < 0.8 else rng.randrange(65536)
                conn.sendall(struct.pack("!H", length) + body)
                frames += 1
        except OSError:
            pass
        finally:
            conn.close()
    return frames
