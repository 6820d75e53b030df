"""A directory of the test's own made read-only (root): chmod does not stop root, a read-only
bind mount over it does. Undone (``umount``) when the block ends, whatever happened."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    _run("mount", "--bind", str(directory), str(directory))
    try:
        _run("mount", "-o", "remount,ro,bind", str(directory))
        yield
    finally:
        _run("umount", str(directory))
