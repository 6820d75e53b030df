"""The HAProxy seam: check a configuration, run the master-worker process, reload it, talk to its
runtime API. ``HaproxyProcess`` drives Debian's ``/usr/sbin/haproxy``; ``FakeHaproxy`` records
calls (and refuses configurations on demand) for the unit tests.

HAProxy runs in master-worker mode (``-W -S master.sock``), in the foreground as our child. A
reload is ``reload`` on the master socket: the master re-executes itself with the new file and the
new worker takes the listening sockets from the old one over the admin socket (``expose-fd
listeners``), so no connection is refused; the old worker finishes its requests and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Protocol

log = logging.getLogger("navstar.marathon_lb.haproxy")

RUNTIME_ERRORS = ("No such", "Unknown command", "Require ", "invalid", "Invalid", "not found", "failed")
BATCH = 40     # runtime commands per admin-socket line (HAProxy reads one buffer per command line)


class HaproxyError(Exception):
    """HAProxy refused or did not answer; the message carries its words."""


class Haproxy(Protocol):
    async def check(self, config: Path) -> str | None:
        """None when ``haproxy -c`` accepts ``config``, else its complaint. Never raises."""

    async def start(self) -> None:
        """Starts HAProxy on the configuration file; returns once its admin socket answers.
        Raises HaproxyError when it exits or stays silent."""

    async def reload(self) -> None:
        """Reloads the configuration file (already checked); returns once a new worker answers.
        Raises HaproxyError when none does (the old worker keeps serving)."""

    async def runtime(self, commands: list[str]) -> str:
        """Runs admin-socket commands; their output. Raises HaproxyError on a refused command."""

    async def wait(self) -> int:
        """Waits for the HAProxy master to exit; its exit code."""

    def running(self) -> bool: ...

    def worker_pid(self) -> int | None:
        """The current worker's pid (last seen), or None."""

    async def stop(self) -> None:
        """Stops HAProxy (idempotent)."""


async def unix_request(path: Path, line: str, timeout: float = 5.0) -> str:
    """Sends one command line to a HAProxy CLI socket; everything it answers until it closes."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    try:
        writer.write(line.encode() + b"\n")
        await writer.drain()
        chunks = []
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def info_pid(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("Pid:"):
            with contextlib.suppress(ValueError):
                return int(line.split(":", 1)[1])
    return None


class HaproxyProcess:
    def __init__(self, config: Path, admin_socket: Path, master_socket: Path, binary: str = "haproxy",
                 start_timeout: float = 10.0) -> None:
        self.config = config
        self.admin_socket = admin_socket
        self.master_socket = master_socket
        self.binary = binary
        self.start_timeout = start_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._worker: int | None = None

    async def check(self, config: Path) -> str | None:
        try:
            proc = await asyncio.create_subprocess_exec(self.binary, "-c", "-f", str(config),
                                                        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            return f"cannot run {self.binary}: {exc}"
        out, _ = await proc.communicate()
        if proc.returncode == 0:
            return None
        alerts = [line for line in out.decode(errors="replace").splitlines() if "[NOTICE]" not in line]
        return "\n".join(alerts).strip() or f"haproxy -c exited {proc.returncode}"

    async def start(self) -> None:
        if self.running():
            return
        self._proc = await asyncio.create_subprocess_exec(
            self.binary, "-W", "-S", f"{self.master_socket},mode,600", "-f", str(self.config),
            stdin=asyncio.subprocess.DEVNULL)
        log.info("haproxy master started, pid %d", self._proc.pid)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise HaproxyError(f"haproxy exited with {self._proc.returncode} at start")
            pid = await self._ask_pid()
            if pid is not None:
                self._worker = pid
                return
            await asyncio.sleep(0.05)
        raise HaproxyError(f"haproxy did not answer on {self.admin_socket} within {self.start_timeout:g}s")

    async def _ask_pid(self) -> int | None:
        try:
            return info_pid(await unix_request(self.admin_socket, "show info", timeout=2.0))
        except (OSError, TimeoutError):
            return None

    async def reload(self) -> None:
        if not self.running():
            await self.start()
            return
        old = self._worker or await self._ask_pid()
        try:
            await unix_request(self.master_socket, "reload", timeout=5.0)
        except (OSError, TimeoutError) as exc:
            raise HaproxyError(f"reload on {self.master_socket}: {exc}") from exc
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            pid = await self._ask_pid()
            if pid is not None and pid != old:
                self._worker = pid
                return
            if not self.running():
                raise HaproxyError("haproxy exited during the reload")
            await asyncio.sleep(0.02)
        raise HaproxyError(f"no new worker within {self.start_timeout:g}s of the reload")

    async def runtime(self, commands: list[str]) -> str:
        output = []
        for start in range(0, len(commands), BATCH):
            batch = commands[start:start + BATCH]
            try:
                answer = await unix_request(self.admin_socket, ";".join(batch))
            except (OSError, TimeoutError) as exc:
                raise HaproxyError(f"admin socket {self.admin_socket}: {exc}") from exc
            bad = [line for line in answer.splitlines() if any(word in line for word in RUNTIME_ERRORS)]
            if bad:
                raise HaproxyError(f"runtime API refused: {'; '.join(bad)}")
            output.append(answer)
        return "".join(output)

    async def wait(self) -> int:
        if self._proc is None:
            raise HaproxyError("haproxy was never started")
        return await self._proc.wait()

    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def worker_pid(self) -> int | None:
        return self._worker

    @property
    def master_pid(self) -> int | None:
        return self._proc.pid if self.running() and self._proc else None

    async def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        # The worker is the master's child; a master killed hard leaves it to exit on its own.
        worker = self._worker
        if worker is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(worker, 0)
                os.kill(worker, signal.SIGTERM)
        self._worker = None


class FakeHaproxy:
    """Records what a real one would be asked; ``refuse`` makes ``check`` fail with that message."""

    def __init__(self) -> None:
        self.refuse: str | None = None
        self.started = 0
        self.reloads = 0
        self.commands: list[str] = []
        self.checked: list[str] = []
        self._running = False
        self._exit: asyncio.Future[int] | None = None

    async def check(self, config: Path) -> str | None:
        self.checked.append(config.read_text())
        return self.refuse

    async def start(self) -> None:
        self.started += 1
        self._running = True
        self._exit = asyncio.get_running_loop().create_future()

    async def reload(self) -> None:
        self.reloads += 1

    async def runtime(self, commands: list[str]) -> str:
        self.commands += commands
        return ""

    async def wait(self) -> int:
        assert self._exit is not None
        return await self._exit

    def running(self) -> bool:
        return self._running

    def worker_pid(self) -> int | None:
        return 1000 + self.started + self.reloads if self._running else None

    def crash(self, code: int = 137) -> None:
        self._running = False
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(code)

    async def stop(self) -> None:
        self.crash(0)
