"""Login tokens: HS256 JWTs as open DC/OS issued them (claims ``uid`` and ``exp``), and the
validator behind nginx's ``auth_request``.

``Tokens.issue(uid)`` signs; ``Tokens.check(header)`` takes an ``Authorization`` header value
(``token=<jwt>``, DC/OS's form, or ``Bearer <jwt>``) and returns the uid or raises
``InvalidToken`` naming why. Only HS256 is accepted, so ``alg: none`` and algorithm swaps fail;
expired and tampered tokens fail in PyJWT. Answers are cached for ``cache_seconds`` (never past
the token's own expiry), so the per-request check costs a dictionary lookup; a cached answer
still asks ``still_valid(uid)`` (a removed user's tokens stop working at once).

The cluster secret, when one is set, is also accepted (uid ``navstar:cluster``): it is what the
master's own clients and ``navstar lab up`` (creating the first user) present.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

import jwt

ALGORITHM = "HS256"
DEFAULT_EXPIRY = 5 * 24 * 3600          # DC/OS: five days
CLUSTER_UID = "navstar:cluster"


class InvalidToken(Exception):
    """The request carries no usable token; the message says why (for logs, not for clients)."""


def token_from_header(value: str | None) -> str | None:
    """The token of ``token=<t>`` or ``Bearer <t>`` (any case of the scheme), else None."""
    if not value:
        return None
    value = value.strip()
    lowered = value.lower()
    for prefix in ("token=", "bearer "):
        if lowered.startswith(prefix):
            return value[len(prefix):].strip() or None
    return None


class Tokens:
    def __init__(self, key: str, expiry: float = DEFAULT_EXPIRY, cache_seconds: float = 5.0,
                 cluster_secret: str | None = None, still_valid: Callable[[str], bool] = lambda _uid: True,
                 clock: Callable[[], float] = time.time, cache_size: int = 10_000) -> None:
        if expiry <= 0:
            raise ValueError(f"expiry must be positive, got {expiry}")
        self.key = key
        self.expiry = expiry
        self.cache_seconds = cache_seconds
        self.cluster_secret = cluster_secret
        self.still_valid = still_valid
        self.clock = clock
        self.cache_size = cache_size
        self._cache: dict[str, tuple[str, float]] = {}     # token -> (uid, good until)
        self.hits = self.misses = 0

    def issue(self, uid: str, expires_at: float | None = None) -> str:
        """A signed token for ``uid``, valid until ``expires_at`` (default: now + expiry)."""
        exp = int(expires_at if expires_at is not None else self.clock() + self.expiry)
        return jwt.encode({"uid": uid, "exp": exp}, self.key, algorithm=ALGORITHM)

    def check(self, header: str | None) -> str:
        """The uid the ``Authorization`` header value proves; raises ``InvalidToken``."""
        token = token_from_header(header)
        if token is None:
            raise InvalidToken("no 'Authorization: token=<jwt>' or bearer token")
        now = self.clock()
        cached = self._cache.get(token)
        # An entry with under a second left is checked again: nginx caches the verdict for the
        # whole seconds left (X-Accel-Expires), and 0 would mean not at all.
        if cached is not None and cached[1] - now >= 1.0 and self._still_valid(cached[0]):
            self.hits += 1
            return cached[0]
        self.misses += 1
        uid, exp = self._decode(token)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[token] = (uid, min(now + self.cache_seconds, exp))
        return uid

    def seconds_left(self, header: str | None) -> float:
        """How long a positive answer for this header may be cached elsewhere (nginx)."""
        token = token_from_header(header)
        cached = self._cache.get(token or "")
        return max(0.0, cached[1] - self.clock()) if cached else 0.0

    def _still_valid(self, uid: str) -> bool:
        return uid == CLUSTER_UID or self.still_valid(uid)

    def _decode(self, token: str) -> tuple[str, float]:
        if self.cluster_secret is not None and hmac.compare_digest(token, self.cluster_secret):
            return CLUSTER_UID, float("inf")
        try:
            claims = jwt.decode(token, self.key, algorithms=[ALGORITHM], options={"require": ["exp", "uid"]},
                                leeway=0)
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid token: {exc}") from None
        uid = claims["uid"]
        if not isinstance(uid, str) or not self._still_valid(uid):
            raise InvalidToken(f"no user {uid!r}")
        return uid, float(claims["exp"])
