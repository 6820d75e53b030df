"""Cluster secret and API tokens, DC/OS style (``Authorization: token=<t>``) or bearer."""

from __future__ import annotations

import base64
import binascii
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
    """True when no secret is configured or the request carries it: as a token, or as the
    password of HTTP Basic (any principal), as Mesos frameworks authenticate."""
    if secret is None:
        return True
    header = request.headers.get("authorization")
    presented = token_from_header(header) or basic_secret(header)
    return presented is not None and hmac.compare_digest(presented, secret)


def basic_secret(value: str | None) -> str | None:
    """The secret of an ``Authorization: Basic base64(principal:secret)`` header."""
    if not value or not value.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    principal, colon, secret = decoded.partition(":")
    return secret if colon and principal and secret else None


def auth_header(secret: str | None) -> dict[str, str]:
    return {"Authorization": f"token={secret}"} if secret else {}
