"""The eBPF socket LB against the real kernel: programs attached to the test's own cgroup, real
TCP and UDP sockets from processes in that cgroup, backends listening inside the test namespace.

VIPs are never routed: the programs rewrite the destination before routing, which is itself part
of what these tests prove. Every test removes its programs and pins (the fixture), and the netns
fixture removes the namespace and cgroup.
"""

from __future__ import annotations

import array
import ctypes
import errno
import json
import shutil
import struct
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from bpf import loader, maps
from bpf.loader import Features, LoaderError
from minuteman.dataplane import Backend, VipEntry, VipKey
from minuteman.ebpf import OUTCOME_WINDOW, EbpfDataplane, ebpf_available
from minuteman.health import BackendHealth, HealthConfig

PIN_ROOT = Path("/sys/fs/bpf/navstar-test")
BACKEND_IPS = ("10.77.0.1", "10.77.0.2", "10.77.0.3")
VIP = VipKey("11.0.0.10", 80, "tcp")
UDP_VIP = VipKey("11.0.0.10", 53, "udp")
CGROUP_POINTS = ["connect4", "getpeername4", "recvmsg4", "sendmsg4"]
TRACEPOINTS = ["tcp_receive_reset", "tcp_retransmit_skb"]

SERVER = r"""
import socket, sys, threading

def tcp(ip, port, name):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(1024)
    while True:
        conn, _peer = s.accept()
        conn.sendall(f"{name} {ip}:{port}".encode())
        conn.close()

def udp(ip, port, name):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(name.encode() + b" " + data, peer)

for spec in sys.argv[1:]:
    proto, ip, port, name = spec.split(":")
    threading.Thread(target=tcp if proto == "tcp" else udp, args=(ip, int(port), name), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import json, socket, sys
mode, ip, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 5.0
out = []
if mode == "udp-hold":   # a connected UDP socket: its cookie, then after a line on stdin one reply's source
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((ip, port))
    print(int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 57, 8), "little"), flush=True)   # SO_COOKIE
    sys.stdin.readline()
    s.send(b"ping")
    data, source = s.recvfrom(2048)
    print("%s:%d" % source, flush=True)
    sys.exit()
if mode == "hold":   # one long-lived connection: its peer now, and again after a line on stdin
    s = socket.create_connection((ip, port), timeout=5)
    print("%s:%d" % s.getpeername(), flush=True)
    sys.stdin.readline()
    print("%s:%d" % s.getpeername(), flush=True)
    sys.exit()
for n in range(count):
    try:
        if mode == "tcp":
            s = socket.create_connection((ip, port), timeout=timeout)
            peer = "%s:%d" % s.getpeername()
            out.append({"answer": s.recv(256).decode(), "peer": peer})
        elif mode == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5)
            s.sendto(b"ping%d" % n, (ip, port))
            data, source = s.recvfrom(2048)
            out.append({"answer": data.decode(), "source": "%s:%d" % source})
        elif mode == "udp-connected":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5)
            s.connect((ip, port))
            s.send(b"ping%d" % n)
            data, source = s.recvfrom(2048)
            out.append({"answer": data.decode(), "source": "%s:%d" % source, "peer": "%s:%d" % s.getpeername()})
        s.close()
    except OSError as exc:
        out.append({"error": exc.__class__.__name__, "errno": exc.errno})
print(json.dumps(out))
"""


def serving_backends(netns, ips: list[str], specs: list[str]):
    """Puts ``ips`` on the namespace's loopback and serves ``specs`` (``proto:ip:port:name``)
    there until the generator is closed; yields the namespace once every server listens."""
    for ip in ips:
        netns.run("ip", "addr", "add", f"{ip}/32", "dev", "lo")
    server = netns.popen(sys.executable, "-c", SERVER, *specs, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        yield netns
    finally:
        server.kill()
        server.wait()


@pytest.fixture
def lab(netns):
    """Backends on three addresses inside the namespace: TCP :8080 and UDP :5353 on each."""
    specs = [f"tcp:{ip}:8080:b{n}" for n, ip in enumerate(BACKEND_IPS)]
    specs += [f"udp:{ip}:5353:b{n}" for n, ip in enumerate(BACKEND_IPS)]
    yield from serving_backends(netns, list(BACKEND_IPS), specs)


@pytest.fixture
def pins(netns):
    pin_dir = PIN_ROOT / netns.name
    yield pin_dir
    loader.teardown(netns.cgroup.unified_path, pin_dir)
    try:
        PIN_ROOT.rmdir()
    except OSError:
        pass


@pytest.fixture
def dataplane(lab, pins):
    dp = EbpfDataplane(lab.cgroup.unified_path, pins)
    yield dp
    dp.close()


def client(ns, mode: str, vip: VipKey | tuple[str, int], count: int, timeout: float = 5.0) -> list[dict]:
    ip, port = (vip.address, vip.port) if isinstance(vip, VipKey) else vip
    result = ns.run(sys.executable, "-c", CLIENT, mode, ip, str(port), str(count), str(timeout), timeout=120)
    return json.loads(result.stdout)


def link_ids(pin_dir: Path) -> dict[str, int]:
    """Kernel ids of the tracepoint links pinned under ``pin_dir``."""
    ids = {}
    for tp in loader.attached_tracepoints(pin_dir):
        shown = subprocess.run(["bpftool", "--json", "link", "show", "pinned", str(pin_dir / f"link_{tp}")],
                               capture_output=True, text=True, check=True)
        ids[tp] = json.loads(shown.stdout)["id"]
    return ids


def link_exists(link_id: int) -> bool:
    return subprocess.run(["bpftool", "link", "show", "id", str(link_id)], capture_output=True).returncode == 0


class Clock:
    """A monotonic clock the test moves by hand (the outcome window without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backends(port: int) -> tuple[Backend, ...]:
    return tuple(Backend(ip, port) for ip in BACKEND_IPS)


def answered_by(replies: list[dict]) -> Counter:
    assert all("error" not in r for r in replies), [r for r in replies if "error" in r][:3]
    return Counter(r["answer"].split()[0] for r in replies)


needs_bpftool = pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool is installed by scripts/setup.sh")


def test_probe_says_available():
    ok, reason = ebpf_available()
    assert ok, reason


def test_tcp_follows_the_table_and_the_peer_is_the_vip(dataplane, lab):
    # A skewed table proves the slots decide: b0 owns 4 of 7 slots, b1 2, b2 1.
    table = {VIP: VipEntry(VIP, backends(8080), lookup=(0, 0, 1, 0, 2, 1, 0))}
    result = dataplane.apply(table)
    assert result.programmed == {VIP} and not result.errors

    replies = client(lab, "tcp", VIP, 700)
    counts = answered_by(replies)
    assert set(counts) == {"b0", "b1", "b2"}
    assert 300 < counts["b0"] < 500 and 130 < counts["b1"] < 270 and 50 < counts["b2"] < 150, counts
    # The application sees the VIP as its peer; the backend saw a connection to itself.
    assert {r["peer"] for r in replies} == {"11.0.0.10:80"}
    assert {r["answer"] for r in replies if r["answer"].startswith("b1")} == {"b1 10.77.0.2:8080"}
    # Every connection was counted once, against the backend that took it.
    per_backend = dataplane.connection_counts()
    assert {b.ip: n for (vip, b), n in per_backend.items() if vip == VIP} == {
        BACKEND_IPS[int(name[1])]: n for name, n in counts.items()}


def test_udp_request_and_reply_come_from_the_vip(dataplane, lab):
    dataplane.apply({UDP_VIP: VipEntry(UDP_VIP, backends(5353))})

    unconnected = client(lab, "udp", UDP_VIP, 90)
    assert set(answered_by(unconnected)) == {"b0", "b1", "b2"}
    assert {r["source"] for r in unconnected} == {"11.0.0.10:53"}
    assert all(r["answer"].endswith(f"ping{n}") for n, r in enumerate(unconnected))

    connected = client(lab, "udp-connected", UDP_VIP, 30)
    assert {r["source"] for r in connected} == {"11.0.0.10:53"}
    assert {r["peer"] for r in connected} == {"11.0.0.10:53"}
    assert len(answered_by(connected)) >= 2
    # A TCP VIP on the same address and port number is a different service.
    assert client(lab, "tcp", ("11.0.0.10", 53), 1)[0]["error"]


def test_a_connected_udp_socket_keeps_the_vip_as_source_after_its_peer_slot_is_taken(dataplane, lab):
    dataplane.apply({UDP_VIP: VipEntry(UDP_VIP, backends(5353))})
    holder = lab.popen(sys.executable, "-c", CLIENT, "udp-hold", UDP_VIP.address, str(UDP_VIP.port), "1",
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    cookie = int(holder.stdout.readline())
    # About a million newer VIP connects later, another socket holds this one's slot.
    peers = dataplane._maps["nv_peers"]
    peers.update(struct.pack("=I", cookie % maps.DEFAULT_PEER_SLOTS), bytes(ctypes.sizeof(maps.Lb4Peer)))
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "11.0.0.10:53", "the reply still comes from the VIP"
    holder.wait(timeout=5)


def test_draining_takes_no_new_connections_and_empty_vips_refuse(dataplane, lab):
    dataplane.apply({VIP: VipEntry(VIP, backends(8080))})
    answered_by(client(lab, "tcp", VIP, 60))
    before = dataplane.connection_counts()[(VIP, Backend(BACKEND_IPS[2], 8080))]
    assert before > 0

    active, draining = backends(8080)[:2], backends(8080)[2:]
    dataplane.apply({VIP: VipEntry(VIP, active, lookup=(0, 1, 1, 0, 1), draining=draining)})
    assert set(answered_by(client(lab, "tcp", VIP, 100))) == {"b0", "b1"}
    assert dataplane.current()[VIP].draining == draining
    # The draining backend keeps its identity: its counter did not restart or move.
    assert dataplane.connection_counts()[(VIP, draining[0])] == before

    dataplane.apply({VIP: VipEntry(VIP, (), draining=backends(8080))})
    refused = client(lab, "tcp", VIP, 3)
    assert {r.get("errno") for r in refused} == {1}   # EPERM at connect(), no timeout
    # Traffic to anything but a VIP is untouched.
    assert answered_by(client(lab, "tcp", (BACKEND_IPS[1], 8080), 5)) == Counter({"b1": 5})


def test_connect_outcomes_feed_passive_health(dataplane, lab):
    clock = dataplane.clock = Clock()
    live, dead = Backend(BACKEND_IPS[0], 8080), Backend(BACKEND_IPS[2], 8099)   # nothing on :8099
    dataplane.apply({VIP: VipEntry(VIP, (live, dead))})
    replies = client(lab, "tcp", VIP, 40)
    refused = sum(1 for r in replies if r.get("errno") == errno.ECONNREFUSED)
    assert 5 < refused < 35 and refused + len([r for r in replies if "answer" in r]) == 40
    # Only backends that failed are followed; the live one costs nothing.
    assert dataplane.outcome_totals() == {dead: (0, refused)}
    # Refused connects that did not go through a VIP are not ours: from this cgroup to the
    # backend's address, and from outside the cgroup.
    assert client(lab, "tcp", (dead.ip, dead.port), 3)[0]["errno"] == errno.ECONNREFUSED
    outside = subprocess.run(["ip", "netns", "exec", lab.name, sys.executable, "-c", CLIENT, "tcp",
                              dead.ip, str(dead.port), "3"], capture_output=True, text=True, check=True)
    assert json.loads(outside.stdout)[0]["errno"] == errno.ECONNREFUSED
    assert dataplane.outcome_totals() == {dead: (0, refused)}

    # Unanswered: SYNs to b1 dropped, so the first SYN retransmission counts as a failure ...
    silent = Backend(BACKEND_IPS[1], 8080)
    drop = ["INPUT", "-p", "tcp", "-d", silent.ip, "--dport", "8080", "-j", "DROP"]
    lab.run("iptables", "-A", *drop)
    dataplane.apply({VIP: VipEntry(VIP, (silent,))})
    assert client(lab, "tcp", VIP, 1, timeout=1.6)[0]["error"] == "TimeoutError"
    assert dataplane.outcome_totals()[silent] == (0, 1)
    # ... and once it answers again, connects that have not failed within the outcome window
    # count as established.
    lab.run("iptables", "-D", *drop)
    answered_by(client(lab, "tcp", VIP, 2))
    assert dataplane.outcome_totals()[silent] == (0, 1)   # not yet: they might still fail
    clock.now += OUTCOME_WINDOW
    assert dataplane.outcome_totals()[silent] == (2, 1)

    # Totals stay monotonic when a backend leaves its VIP and comes back under a new counter.
    dataplane.apply({VIP: VipEntry(VIP, (live, dead))})
    again = sum(1 for r in client(lab, "tcp", VIP, 20) if r.get("errno") == errno.ECONNREFUSED)
    assert again > 0
    assert dataplane.outcome_totals()[dead] == (0, refused + again)


def test_a_restarted_agent_reports_only_failures_after_its_start(lab, pins):
    dead = Backend(BACKEND_IPS[2], 8099)   # nothing listens there
    first = EbpfDataplane(lab.cgroup.unified_path, pins)
    first.apply({VIP: VipEntry(VIP, (dead,))})
    assert {r.get("errno") for r in client(lab, "tcp", VIP, 6)} == {errno.ECONNREFUSED}
    assert first.outcome_totals() == {dead: (0, 6)}
    first.close()

    second = EbpfDataplane(lab.cgroup.unified_path, pins)
    try:
        assert second.outcome_totals() == {dead: (0, 0)}   # old news: not fed to health again
        client(lab, "tcp", VIP, 2)
        assert second.outcome_totals() == {dead: (0, 2)}
    finally:
        second.close()


def test_health_takes_a_refused_backend_out(dataplane, lab):
    live, dead = Backend(BACKEND_IPS[0], 8080), Backend(BACKEND_IPS[2], 8099)   # nothing on :8099
    dataplane.apply({VIP: VipEntry(VIP, (live, dead))})
    health = BackendHealth(HealthConfig(failures=5))
    health.poll(dataplane)
    assert not health.out()
    replies = client(lab, "tcp", VIP, 30)
    assert sum(1 for r in replies if r.get("errno") == errno.ECONNREFUSED) >= 5
    health.poll(dataplane)
    assert health.out() == {dead}


def test_apply_is_idempotent_minimal_and_reports_bad_vips(dataplane, lab):
    good = {VIP: VipEntry(VIP, backends(8080)), UDP_VIP: VipEntry(UDP_VIP, backends(5353))}
    bad_lookup = VipKey("11.0.0.11", 80, "tcp")
    bad_address = VipKey("11.0.0.300", 80, "tcp")
    bad_backend = VipKey("11.0.0.12", 80, "tcp")
    table = dict(good)
    table[bad_lookup] = VipEntry(bad_lookup, backends(8080), lookup=(0, 7))
    table[bad_address] = VipEntry(bad_address, backends(8080))
    table[bad_backend] = VipEntry(bad_backend, (Backend("10.77.0.1", 0),))

    result = dataplane.apply(table)
    assert result.programmed == set(good)
    assert "lookup index 7" in result.errors[bad_lookup]
    assert "11.0.0.300" in result.errors[bad_address]
    assert "port 0" in result.errors[bad_backend]
    assert dataplane.current() == good   # read back exactly as applied

    dataplane.apply(good)
    assert dataplane.last_writes == 0

    # One backend swapped in place: that one backend entry; the table of indices is unchanged,
    # and its fresh counter id has never counted (these maps are new), so it is not written.
    swapped = backends(8080)[:2] + (Backend("10.77.0.1", 8081),)
    dataplane.apply({**good, VIP: VipEntry(VIP, swapped)})
    assert dataplane.last_writes == 1
    assert dataplane.current()[VIP].backends == swapped

    result = dataplane.apply({UDP_VIP: good[UDP_VIP]})
    assert result.removed == {VIP}
    assert set(dataplane.current()) == {UDP_VIP}
    assert client(lab, "tcp", VIP, 1)[0]["error"]   # no VIP any more: nothing rewrites it


@needs_bpftool
def test_restart_keeps_serving_then_adopts(lab, pins):
    table = {VIP: VipEntry(VIP, backends(8080)), UDP_VIP: VipEntry(UDP_VIP, backends(5353))}
    first = EbpfDataplane(lab.cgroup.unified_path, pins)
    first.apply(table)
    answered_by(client(lab, "tcp", VIP, 30))
    holder = lab.popen(sys.executable, "-c", CLIENT, "hold", VIP.address, str(VIP.port), "1",
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "11.0.0.10:80"
    counted = first.connection_counts()
    old_links = link_ids(pins)
    first.close()   # the agent goes away; programs, links and maps stay
    assert all(map(link_exists, old_links.values()))

    assert len(answered_by(client(lab, "tcp", VIP, 30))) == 3
    assert {r["source"] for r in client(lab, "udp", UDP_VIP, 5)} == {"11.0.0.10:53"}
    reader = EbpfDataplane(lab.cgroup.unified_path, pins, attach=False)   # maps only, no compiler
    assert reader.current() == table
    reader.close()

    second = EbpfDataplane(lab.cgroup.unified_path, pins)
    try:
        assert second.current() == table
        second.apply(table)
        assert second.last_writes == 0
        now = second.connection_counts()
        assert sum(now.values()) == sum(counted.values()) + 30 + 5
        # The new programs replaced the old ones: one of ours per attach point and tracepoint.
        attached = loader.attached_programs(lab.cgroup.unified_path)
        assert sorted(p.attach_point for p in attached) == CGROUP_POINTS
        links = link_ids(pins)
        assert sorted(links) == TRACEPOINTS and not any(map(link_exists, old_links.values()))
        assert len(answered_by(client(lab, "tcp", VIP, 30))) == 3
        # A connection made before the restart still reports the VIP to the new programs.
        holder.stdin.write("again\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "11.0.0.10:80"
    finally:
        holder.kill()
        holder.wait()
        second.close()


OLD_SOCK_OPS = """
__attribute__((section("sockops"), used)) int nv_sockops(void *skops) { return 1; }
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


@needs_bpftool
@pytest.mark.skipif(shutil.which("clang") is None, reason="clang is installed by scripts/setup.sh")
def test_an_upgrade_detaches_the_sock_ops_program_of_an_earlier_build(netns, pins, tmp_path):
    # What an agent of the previous build left: its sock_ops program attached and pinned.
    (tmp_path / "old.c").write_text(OLD_SOCK_OPS)
    subprocess.run(["clang", "-O2", "-target", "bpf", "-c", str(tmp_path / "old.c"), "-o", str(tmp_path / "old.o")],
                   check=True, capture_output=True)
    pins.mkdir(parents=True)
    old_pin = pins / "prog_sock_ops"
    subprocess.run(["bpftool", "prog", "load", str(tmp_path / "old.o"), str(old_pin), "type", "sockops"],
                   check=True, capture_output=True)
    subprocess.run(["bpftool", "cgroup", "attach", str(netns.cgroup.unified_path), "sock_ops", "pinned",
                    str(old_pin), "multi"], check=True, capture_output=True)
    assert [p.attach_point for p in loader.attached_programs(netns.cgroup.unified_path)] == ["sock_ops"]

    dp = EbpfDataplane(netns.cgroup.unified_path, pins)
    dp.close()
    assert dp.attached() == CGROUP_POINTS + TRACEPOINTS
    assert not old_pin.exists()


@needs_bpftool
def test_detach_all_leaves_nothing(lab, pins):
    dp = EbpfDataplane(lab.cgroup.unified_path, pins)
    dp.apply({VIP: VipEntry(VIP, backends(8080))})
    assert dp.attached() == CGROUP_POINTS + TRACEPOINTS
    links = link_ids(pins)
    dp.detach_all()
    assert loader.attached_programs(lab.cgroup.unified_path) == []
    assert not any(map(link_exists, links.values()))
    assert not pins.exists()
    assert client(lab, "tcp", VIP, 1)[0]["error"]
    assert answered_by(client(lab, "tcp", (BACKEND_IPS[0], 8080), 3)) == Counter({"b0": 3})


@needs_bpftool
def test_an_agent_without_the_socket_lb_removes_the_one_an_earlier_agent_left(netns, pins):
    dp = EbpfDataplane(netns.cgroup.unified_path, pins)
    dp.apply({VIP: VipEntry(VIP, backends(8080))})
    links = link_ids(pins)
    dp.close(keep_kernel_state=True)           # as an agent stopping: everything stays to be adopted
    assert loader.attached_programs(netns.cgroup.unified_path)
    loader.teardown(netns.cgroup.unified_path, pins)     # the next agent runs --lb nfqueue (agent_main)
    assert loader.attached_programs(netns.cgroup.unified_path) == []
    assert not any(map(link_exists, links.values())) and not pins.exists()
    loader.teardown(netns.cgroup.unified_path, pins)     # nothing left: nothing to do


def test_features_switch_attach_points_and_a_layout_change_is_refused(netns, pins):
    tcp_only = Features(udp=False, peername=False, outcomes=False)
    dp = EbpfDataplane(netns.cgroup.unified_path, pins, features=tcp_only)
    dp.close()
    assert [p.attach_point for p in loader.attached_programs(netns.cgroup.unified_path)] == ["connect4"]
    assert loader.attached_tracepoints(pins) == []
    with pytest.raises(LoaderError, match="nv_maglev"):
        EbpfDataplane(netns.cgroup.unified_path, pins, features=Features(chunk_slots=251))


def test_refuses_the_root_cgroup_and_a_pin_dir_off_bpffs(netns):
    with pytest.raises(LoaderError, match="root cgroup"):
        EbpfDataplane(netns.cgroup.layout.unified, PIN_ROOT / f"x-{uuid.uuid4().hex[:6]}")
    with pytest.raises(LoaderError, match="bpffs"):
        EbpfDataplane(netns.cgroup.unified_path, Path("/tmp") / f"nv-{uuid.uuid4().hex[:6]}")


def test_many_vips_round_trip_through_batched_maps(netns, pins):
    # More entries than one batch chunk in every map; tables of one, two and many chunks.
    features = Features(udp=False, peername=False, outcomes=False, chunk_slots=100)
    dp = EbpfDataplane(netns.cgroup.unified_path, pins, features=features)
    try:
        table = {}
        for n in range(1500):
            key = VipKey(f"11.1.{n // 250}.{n % 250 + 1}", 80, "tcp")
            members = tuple(Backend(f"10.{n // 250}.{n % 250}.{i}", 8000 + i) for i in range(3))
            size = (97, 100, 101, 211, 1021)[n % 5]
            table[key] = VipEntry(key, members, lookup=tuple((i * 7 + n) % 3 for i in range(size)))
        result = dp.apply(table)
        assert not result.errors and len(result.programmed) == 1500
        assert dp.current() == table
        assert dp.apply(table).programmed == set(table) and dp.last_writes == 0

        # Shrink every table and drop a backend: extra chunks and backends go, nothing else stays.
        smaller = {k: VipEntry(k, e.backends[:2], lookup=tuple(i % 2 for i in range(53)))
                   for k, e in table.items()}
        dp.apply(smaller)
        assert dp.current() == smaller
        assert dp.apply(smaller).programmed == set(smaller) and dp.last_writes == 0
    finally:
        dp.close()


def test_apply_trusts_what_it_wrote_until_current_sees_drift_then_repairs_it(netns, pins):
    # An unchanged apply compares entries only (no map reads); current() — the reconciler's
    # drift check — reads the maps, and the next apply reads them back and repairs, removing
    # entries no VIP owns.
    features = Features(udp=False, peername=False, outcomes=False)
    dp = EbpfDataplane(netns.cgroup.unified_path, pins, features=features)
    specs = maps.map_specs()
    backend_map = loader.MapHandle.open(specs["nv_backends"], pins)
    table_map = loader.MapHandle.open(specs["nv_maglev"], pins)
    try:
        table = {}
        for n in range(3):
            key = VipKey(f"11.2.0.{n + 1}", 80, "tcp")
            members = tuple(Backend(f"10.2.{n}.{i}", 8000 + i) for i in range(4))
            table[key] = VipEntry(key, members, lookup=tuple(i % 4 for i in range(1021)))
        draining = VipKey("11.2.0.9", 80, "tcp")   # new, with draining backends: the packed path
        members = tuple(Backend(f"10.2.9.{i}", 8000) for i in range(4))
        table[draining] = VipEntry(draining, members[:2], lookup=(0, 1, 1), draining=members[2:])
        assert dp.apply(table).programmed == set(table)
        assert dp.current() == table
        lost = next(key for key, _value in backend_map.items())
        backend_map.delete(lost)
        stray_backend = struct.pack("=II", 999_999, 0)
        backend_map.update(stray_backend, bytes(ctypes.sizeof(maps.Lb4Backend)))
        stray_chunk = struct.pack("=II", 999_999, 0)
        table_map.update(stray_chunk, bytes(ctypes.sizeof(maps.Lb4Maglev)))

        assert dp.apply(table).programmed == set(table) and dp.last_writes == 0   # trusted, not read
        assert dp.current() != table
        assert dp.apply(table).programmed == set(table)
        assert dp.last_writes == 3    # the lost backend again (a fresh counter id), 2 strays deleted
        assert dp.current() == table
        assert backend_map.lookup(lost) is not None
        assert backend_map.lookup(stray_backend) is None and table_map.lookup(stray_chunk) is None
        assert dp.apply(table).programmed == set(table) and dp.last_writes == 0

        # A table chunk rewritten behind its back is drift too (current() compares bytes).
        chunk_key, chunk = next(iter(table_map.items()))
        table_map.update(chunk_key, bytes(len(chunk)))
        assert dp.current() != table
        dp.apply(table)
        assert dp.last_writes == 1 and dp.current() == table and table_map.lookup(chunk_key) == chunk

        # A change after the repair is written as a difference again: one backend swapped.
        first = next(iter(table))
        swapped = VipEntry(first, table[first].backends[:3] + (Backend("10.2.9.9", 8009),), table[first].lookup)
        dp.apply({**table, first: swapped})
        assert dp.last_writes == 1 and dp.current()[first] == swapped   # one backend (its counter is new)
        dp.apply({})
        assert dp.current() == {} and not any(True for _ in backend_map.items())
        assert not any(True for _ in table_map.items())
    finally:
        backend_map.close()
        table_map.close()
        dp.close()


def test_a_counter_id_handed_out_again_starts_from_zero(netns, pins):
    # Counter ids that have never counted since the maps were made are not written; an id given
    # up, or found counting by an agent that starts on existing maps, is zeroed when handed out
    # again (and its failures forgotten), so each (VIP, backend) pair counts from zero.
    features = Features(udp=False, peername=False, outcomes=False, max_backends=8)   # counter ids 1-7
    conns_spec = features.map_specs()["nv_conns"]
    dp = EbpfDataplane(netns.cgroup.unified_path, pins, features=features)
    conns = loader.MapHandle.open(conns_spec, pins)
    outcomes = loader.MapHandle.open(features.map_specs()["nv_outcomes"], pins)

    def count(counter_id):
        return sum(array.array("Q", conns.lookup(struct.pack("=I", counter_id))))

    def vip(n, members):
        key = VipKey(f"11.3.0.{n}", 80, "tcp")
        return key, VipEntry(key, tuple(Backend(f"10.3.{n}.{i}", 8000) for i in range(members)))

    def counted(counter_id, value):   # as the programs would have
        conns.update(struct.pack("=I", counter_id), struct.pack("=Q", value) * (conns.value_size // 8))

    try:
        first = dict([vip(1, 3)])                                   # ids 1-3
        dp.apply(first)
        assert dp.last_writes == 5                                  # 3 backends, its table, its service
        counted(2, 5)
        outcomes.update(struct.pack("=I", 2), struct.pack("=QQ", 1, 0))
        dp.apply({})                                                # 1-3 given up, 2 has counted
        second = dict([vip(2, 4)])                                  # ids 4-7: never used
        dp.apply(second)
        assert dp.last_writes == 6
        third = {**second, **dict([vip(3, 3)])}                     # ids come round again: 1-3
        dp.apply(third)
        assert dp.last_writes == 3 + 3 + 2 + 1                      # 3 zeroed, 3 backends, table, service, outcome
        assert count(2) == 0 and outcomes.lookup(struct.pack("=I", 2)) is None
        dp.close()

        # An agent starting on these maps reads which free ids have counted: 1 has, 2 and 3 not.
        dp = EbpfDataplane(netns.cgroup.unified_path, pins, features=features)
        dp.apply(second)                                            # 1-3 given up again
        counted(1, 9)
        dp.close()
        dp = EbpfDataplane(netns.cgroup.unified_path, pins, features=features)
        dp.apply(third)
        assert dp.last_writes == 1 + 3 + 2                          # only 1 zeroed
        assert count(1) == 0
    finally:
        conns.close()
        outcomes.close()
        dp.close()


def test_failed_writes_are_reported_per_vip_and_what_they_left_is_removed(netns, pins):
    # More VIPs than nv_services holds, in more than one slice (the writer thread): the kernel
    # refuses the services beyond its size; those VIPs come back as errors, the others are
    # programmed, and the next apply reads the maps back and removes what the failed ones left.
    features = Features(udp=False, peername=False, outcomes=False, max_services=300)
    dp = EbpfDataplane(netns.cgroup.unified_path, pins, features=features)
    backend_map = loader.MapHandle.open(features.map_specs()["nv_backends"], pins)
    try:
        table = {}
        for n in range(320):
            key = VipKey(f"11.4.{n // 200}.{n % 200 + 1}", 80, "tcp")
            table[key] = VipEntry(key, (Backend(f"10.4.{n // 200}.{n % 200}", 8000), Backend("10.4.9.9", 8000 + n)))
        result = dp.apply(table)
        assert len(result.programmed) == 300 and len(result.errors) == 20
        assert all(message.startswith("nv_services") for message in result.errors.values())
        programmed = {key: table[key] for key in result.programmed}
        assert dp.current() == programmed
        assert sum(1 for _ in backend_map.items()) == 640        # the failed VIPs' backends too

        result = dp.apply(programmed)
        assert result.programmed == set(programmed) and not result.errors
        assert dp.last_writes == 60                              # their 40 backends and 20 tables gone
        assert sum(1 for _ in backend_map.items()) == 600 and dp.current() == programmed
        assert dp.apply(programmed).programmed == set(programmed) and dp.last_writes == 0
    finally:
        backend_map.close()
        dp.close()
