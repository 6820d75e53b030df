"""Debian's ZooKeeper 3.8 as the masters' ensemble: configuration, command line, readiness.

One server per master, in the master's namespace, listening on the master's address
(client port 2181, quorum 2888, election 3888), data in the lab's state directory. The
four-letter words ``ruok``, ``srvr`` and ``mntr`` are whitelisted: readiness and the drills
ask a server whether it serves (``srvr`` answers ``Mode: leader|follower``; a server below
quorum answers that it is not serving requests).
"""

from __future__ import annotations

import socket
from pathlib import Path

CLIENT_PORT = 2181
QUORUM_PORT = 2888
ELECTION_PORT = 3888
CLASSPATH = "/usr/share/java/*:/usr/share/zookeeper/*:/etc/zookeeper/conf"
MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
# Short ticks: a lab on one machine detects a dead peer or client in seconds. Sessions may
# last 2-20 ticks (1-10 s).
TICK_MS = 500


def zk_url(ips: list[str], path: str = "/mesos") -> str:
    return "zk://" + ",".join(f"{ip}:{CLIENT_PORT}" for ip in ips) + path


def write_config(home: Path, server_id: int, ips: list[str]) -> Path:
    """``home/zoo.cfg`` and ``home/data/myid`` for server ``server_id`` (1-based, the index
    of its address in ``ips``, 1-based). Returns the configuration's path."""
    if not 1 <= server_id <= len(ips):
        raise ValueError(f"server id {server_id}: expected 1..{len(ips)}")
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "myid").write_text(f"{server_id}\n")
    lines = [
        f"tickTime={TICK_MS}", "initLimit=10", "syncLimit=4",
        f"dataDir={data}", f"clientPort={CLIENT_PORT}", f"clientPortAddress={ips[server_id - 1]}",
        "4lw.commands.whitelist=ruok,srvr,mntr,stat",
        "admin.enableServer=false", "maxClientCnxns=200",
        "autopurge.purgeInterval=1", "autopurge.snapRetainCount=3",
        *(f"server.{n}={ip}:{QUORUM_PORT}:{ELECTION_PORT}" for n, ip in enumerate(ips, 1)),
    ]
    config = home / "zoo.cfg"
    config.write_text("\n".join(lines) + "\n")
    return config


def server_argv(config: Path, heap_mb: int = 96) -> list[str]:
    return ["java", f"-Xmx{heap_mb}m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.log.dir=" + str(config.parent),
            "-cp", CLASSPATH, MAIN, str(config)]


def four_letter(ip: str, word: str, timeout: float = 1.0) -> str:
    """The server's answer to a four-letter word ('' when it does not answer)."""
    try:
        with socket.create_connection((ip, CLIENT_PORT), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def mode(ip: str) -> str | None:
    """``leader``/``follower``/``standalone`` for a server in a quorum, None otherwise."""
    for line in four_letter(ip, "srvr").splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None
