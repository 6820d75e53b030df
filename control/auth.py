"""Cluster secret and API tokens, DC/OS style (``Authorization: token=<t>``) or bearer."""

from __future__ import annotations

import hmac
from pathlib import Path

from starlette.requests import Request


def read_secret(path: str | Path | None) -> str | None:
    if path is None:
        return None
    text = Path(path).read_text().strip()
    if not text:
        raise ValueError(f"secret file {path} is empty")
    return text


def token_from_header(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    for prefix in ("token=", "Bearer ", "bearer "):
        if value.startswith(prefix):
            return value[len(prefix):].strip()
    return None


def authorized(request: Request, secret: str | None) -> bool:
    """True when no secret is configured or the request carries it."""
    if secret is None:
        return True
    presented = token_from_header(request.headers.get("authorization"))
    return presented is not None and hmac.compare_digest(presented, secret)


def auth_header(secret: str | None) -> dict[str, str]:
    return {"Authorization": f"token={secret}"} if secret else {}
