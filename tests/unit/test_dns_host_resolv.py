"""The agent on a real host points /etc/resolv.conf at its resolver and puts the host's back."""

from __future__ import annotations

import os
from pathlib import Path

from spartan_dns.host_resolv import HostResolvConf
from spartan_dns.upstream import resolv_conf_upstreams

HOST = "# from DHCP\nsearch corp.example lab.example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\noptions edns0\n"


def nameservers(path: Path) -> list[str]:
    return [line.split()[1] for line in path.read_text().splitlines() if line.startswith("nameserver")]


def test_install_keeps_the_hosts_file_and_its_search_and_restore_puts_it_back(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text(HOST)
    os.chmod(path, 0o640)
    host = HostResolvConf(path)
    host.install()
    assert nameservers(path) == ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
    assert "search corp.example lab.example" in path.read_text() and "192.0.2.53" not in path.read_text()
    assert host.upstream_source() == host.previous and host.previous.read_text() == HOST
    # The resolver's upstreams are still the host's, not itself.
    assert [u.host for u in resolv_conf_upstreams(host.upstream_source(), skip=host.resolvers)] == [
        "192.0.2.53", "192.0.2.54"]
    host.restore()
    assert path.read_text() == HOST and (path.stat().st_mode & 0o777) == 0o640
    assert not host.previous.exists() and host.upstream_source() == path
    host.restore()                                   # idempotent
    assert path.read_text() == HOST


def test_a_restarted_agent_adopts_the_kept_copy_and_never_keeps_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text(HOST)
    HostResolvConf(path).install()                   # then the agent is killed: no restore
    again = HostResolvConf(path)
    again.install()
    again.install()
    assert again.previous.read_text() == HOST
    again.restore()
    assert path.read_text() == HOST


def test_a_symlinked_resolv_conf_comes_back_as_the_same_link(tmp_path: Path) -> None:
    stub = tmp_path / "stub-resolv.conf"
    stub.write_text("nameserver 127.0.0.53\nsearch home.arpa\n")
    path = tmp_path / "resolv.conf"
    path.symlink_to(stub)
    host = HostResolvConf(path)
    host.install()
    assert not path.is_symlink() and "search home.arpa" in path.read_text()
    assert stub.read_text() == "nameserver 127.0.0.53\nsearch home.arpa\n"      # the target untouched
    host.restore()
    assert path.is_symlink() and os.readlink(path) == str(stub)


def test_a_file_someone_else_wrote_meanwhile_wins_over_the_kept_copy(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text(HOST)
    host = HostResolvConf(path)
    host.install()
    path.write_text("nameserver 192.0.2.99\n")      # a DHCP renewal rewrote it
    host.restore()
    assert path.read_text() == "nameserver 192.0.2.99\n" and not host.previous.exists()


def test_no_file_before_means_an_empty_one_after(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    host = HostResolvConf(path)
    host.install()
    assert nameservers(path)[0] == "198.51.100.1"
    host.restore()
    assert path.read_text() == ""
