"""Named network namespaces this project made: who runs in them, and removing them whole."""

from __future__ import annotations

import os
import signal
import subprocess


def namespace_pids(namespace: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []


def remove_namespace(namespace: str) -> None:
    """SIGKILLs every process in ``namespace`` and deletes it. Idempotent. Only for namespaces the
    caller created: whatever runs in them is the caller's."""
    for pid in namespace_pids(namespace):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
