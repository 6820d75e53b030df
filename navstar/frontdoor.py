"""The lab's front door: Admin Router in the master's namespace, its first user, and logging in.

``lab up`` starts ``navstar adminrouter`` next to the master (nginx on ``<master ip>:80``),
creates user ``admin`` with a random password kept in the lab's directory (``admin-password``,
mode 0600) and prints how to log in. ``lab_token`` logs in as that user for the ``navstar``
CLI, reusing a token while it has more than a minute left (``admin-token``).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from base64 import urlsafe_b64decode
from pathlib import Path
from typing import Protocol

import httpx

from control.auth import auth_header


class _Node(Protocol):
    ip: str


class LabState(Protocol):
    """What this module reads of ``navstar.lab.LabState`` (which imports this module)."""

    @property
    def directory(self) -> Path: ...
    @property
    def secret_file(self) -> Path: ...
    @property
    def front_door(self) -> str: ...
    @property
    def master(self) -> _Node: ...
    def secret(self) -> str | None: ...

ADMIN = "admin"


def password_file(state: LabState) -> Path:
    return state.directory / "admin-password"


def admin_password(state: LabState) -> str | None:
    try:
        return password_file(state).read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def adminrouter_args(state: LabState) -> list[str]:
    return ["adminrouter", "--listen", f"{state.master.ip}:80", "--master", "http://127.0.0.1:5050",
            "--token-file", str(state.secret_file), "--run-dir", str(state.directory / "adminrouter")]


def create_admin(state: LabState, timeout: float = 30.0) -> str:
    """Creates user ``admin`` with a random password (through Admin Router, with the cluster
    secret) and keeps the password; returns it. Raises ``RuntimeError`` when it cannot."""
    password = secrets.token_urlsafe(18)
    deadline = time.monotonic() + timeout
    last = ""
    with httpx.Client(timeout=10, headers=auth_header(state.secret())) as client:
        while time.monotonic() < deadline:
            try:
                resp = client.put(f"{state.front_door}/acs/api/v1/users/{ADMIN}",
                                  json={"password": password, "description": "the lab's first user"})
                if resp.status_code == 201:
                    _write_private(password_file(state), password + "\n")
                    return password
                if resp.status_code == 409:
                    resp = client.patch(f"{state.front_door}/acs/api/v1/users/{ADMIN}", json={"password": password})
                    if resp.status_code == 204:
                        _write_private(password_file(state), password + "\n")
                        return password
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.2)
    raise RuntimeError(f"could not create user {ADMIN} through {state.front_door}: {last}")


def _expires(token: str) -> float:
    try:
        body = token.split(".")[1]
        return float(json.loads(urlsafe_b64decode(body + "=" * (-len(body) % 4)))["exp"])
    except (IndexError, ValueError, KeyError):
        return 0.0


def lab_token(state: LabState) -> str | None:
    """A login token for the lab's ``admin`` (cached while it has a minute left); the cluster
    secret when the lab has no admin password (an older lab); None when login fails."""
    cache = state.directory / "admin-token"
    try:
        token = cache.read_text().strip()
        if _expires(token) > time.time() + 60:
            return token
    except FileNotFoundError:
        pass
    password = admin_password(state)
    if password is None:
        return state.secret()
    try:
        resp = httpx.post(f"{state.front_door}/acs/api/v1/auth/login", json={"uid": ADMIN, "password": password},
                          timeout=30)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    token = str(resp.json()["token"])
    _write_private(cache, token + "\n")
    return token
