"""Pointing a real host at its node resolver, as dcos-net did on DC/OS nodes.

On a host (not a lab namespace) the agent's resolver is only useful once the host's own programs
ask it: ``install()`` keeps the host's resolv.conf beside it (``<path>.navstar-previous``) and
writes one that names the node resolvers first, keeping the previous ``search``/``domain`` lines;
``restore()`` puts the previous file back on stop. The previous file's nameservers stay the
resolver's upstreams (``upstream_source``): reading the new file would find only ourselves.

Adopting after a crash: when the kept copy already exists, the file in place is ours (or one a
tool rewrote meanwhile) and the kept copy is the host's; it is never overwritten by ours. A
symlinked resolv.conf (systemd-resolved's stub) is kept as the link itself and comes back as one.
"""

from __future__ import annotations

import os
from pathlib import Path

from cluster.addresses import RESOLVER_ADDRESSES, resolv_conf

MARK = "# written by the navstar agent; the host's own file is kept in "
_KEPT_KEYWORDS = ("search", "domain")


class HostResolvConf:
    def __init__(self, path: str | Path = "/etc/resolv.conf",
                 resolvers: tuple[str, ...] | list[str] = RESOLVER_ADDRESSES) -> None:
        self.path = Path(path)
        self.previous = self.path.with_name(self.path.name + ".navstar-previous")
        self.resolvers = tuple(resolvers)

    def upstream_source(self) -> Path:
        """The file whose nameservers are the resolver's upstreams: the host's, wherever it is now."""
        return self.previous if self._kept() else self.path

    def _kept(self) -> bool:
        return self.previous.is_symlink() or self.previous.exists()

    def _ours(self) -> bool:
        try:
            return not self.path.is_symlink() and self.path.read_text().startswith(MARK)
        except FileNotFoundError:
            return False

    def render(self) -> str:
        try:
            host = self.previous.read_text() if self._kept() else ""
        except FileNotFoundError:           # a dangling symlink: the host had no readable file
            host = ""
        kept = [line for line in host.splitlines() if line.split()[:1] and line.split()[0] in _KEPT_KEYWORDS]
        return f"{MARK}{self.previous}\n" + resolv_conf(self.resolvers) + "".join(f"{line}\n" for line in kept)

    def install(self) -> None:
        """Idempotent: keeps the host's file once, then (re)writes ours atomically."""
        if not self._kept() and not self._ours():
            if self.path.is_symlink():
                os.symlink(os.readlink(self.path), self.previous)
            elif self.path.exists():
                self.previous.write_text(self.path.read_text())
                os.chmod(self.previous, self.path.stat().st_mode & 0o777)
            else:
                self.previous.write_text("")        # none before: restore() leaves an empty file
        staging = self.path.with_name(self.path.name + ".navstar-new")
        staging.write_text(self.render())
        os.chmod(staging, 0o644)
        os.replace(staging, self.path)              # replaces a symlink itself, never its target

    def restore(self) -> None:
        """Puts the host's file back (idempotent); a file that is not ours is left alone."""
        if not self._kept():
            return
        if (self.path.is_symlink() or self.path.exists()) and not self._ours():
            # Someone replaced ours while we ran (a DHCP client, an admin): theirs wins.
            self.previous.unlink()
            return
        os.replace(self.previous, self.path)
