"""The real ``PluginExec``: each plugin call is a process (the plugin binary from ``CNI_PATH``),
optionally entered into a host-side network namespace first (``nsenter --net``, for tests and
tools that run outside the agent's namespace). A plugin that outlives its timeout is killed with
its whole process group (a plugin may start helpers, e.g. iptables)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from overlay.cni import DEFAULT_PLUGIN_DIRS, find_plugin
from overlay.cni_runner import PluginOutput, PluginTimeout

# What plugins need besides the CNI variables: a PATH for the tools they run (iptables, sysctl).
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class SubprocessExec:
    def __init__(self, plugin_dirs: Iterable[str | Path] = DEFAULT_PLUGIN_DIRS, netns: str | None = None) -> None:
        """``netns``: a named namespace (``/run/netns/<name>``) the plugins run in; None: this
        process's own (the agent's)."""
        self.plugin_dirs = tuple(str(p) for p in plugin_dirs)
        self.netns = netns

    def run(self, plugin_type: str, env: Mapping[str, str], stdin: bytes, timeout: float) -> PluginOutput:
        path = find_plugin(plugin_type, [Path(p) for p in self.plugin_dirs])
        if path is None:
            raise FileNotFoundError(plugin_type)
        argv = [str(path)]
        if self.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env={**BASE_ENV, **env}, start_new_session=True, cwd="/")
        try:
            stdout, stderr = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.communicate()
            raise PluginTimeout(plugin_type) from None
        return PluginOutput(process.returncode, stdout, stderr)
