"""The IAM face behind Admin Router, as open DC/OS had it (``/acs/api/v1/…``).

| route | what |
|---|---|
| ``POST /acs/api/v1/auth/login`` ``{"uid", "password"[, "exp"]}`` | ``{"token": "<jwt>"}``; 401 ``ERR_INVALID_CREDENTIALS``; 400 naming the field; 429 past the per-address limit |
| ``GET /acs/api/v1/auth/validate`` | nginx's ``auth_request``: 200 (``X-Navstar-Uid``, ``X-Accel-Expires``) or 401 ``WWW-Authenticate: acsjwt`` |
| ``GET /acs/api/v1/users`` | ``{"array": [{"uid", "description", "url", "is_remote", "is_service"}]}`` (token) |
| ``GET\\|PUT\\|PATCH\\|DELETE /acs/api/v1/users/{uid}`` | one user; PUT ``{"password"[, "description"]}`` creates (201, 409 if there), PATCH sets the password (204) |
| ``GET /acs/api/v1/auth/providers`` | the one provider, ``dcos-uid-password`` |

Errors carry DC/OS's body ``{"title", "description", "code"}``. Passwords are checked in a
thread, at most two at a time (argon2 takes tens of milliseconds and 64 MiB each).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adminrouter.tokens import InvalidToken, Tokens
from control.users import UnknownUser, UserExists, Users, check_uid

log = logging.getLogger("navstar.adminrouter.acs")

CHALLENGE = {"WWW-Authenticate": "acsjwt"}
AUTH_COOKIE = "dcos-acs-auth-cookie"    # the name DC/OS's login used for the browser's token


def error(status: int, title: str, description: str, code: str, **extra: Any) -> JSONResponse:
    headers = CHALLENGE if status == 401 else None
    return JSONResponse({"title": title, "description": description, "code": code, **extra},
                        status_code=status, headers=headers)


def unauthorized(description: str = "Authentication required: send 'Authorization: token=<jwt>'") -> JSONResponse:
    return error(401, "Unauthorized", description, "ERR_MISSING_AUTH_TOKEN")


class RateLimit:
    """A token bucket per client address: ``burst`` attempts at once, ``rate`` per second after."""

    def __init__(self, rate: float = 2.0, burst: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 100_000) -> None:
        self.rate, self.burst, self.clock, self.max_clients = rate, burst, clock, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}   # address -> (tokens, at)

    def allow(self, address: str) -> bool:
        now = self.clock()
        tokens, at = self._buckets.get(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if len(self._buckets) >= self.max_clients and address not in self._buckets:
            self._buckets.clear()
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            return False
        self._buckets[address] = (tokens - 1.0, now)
        return True


def client_address(request: Request) -> str:
    """The client's address; behind nginx on loopback, the ``X-Real-IP`` nginx set."""
    peer = request.client.host if request.client else "?"
    real = request.headers.get("x-real-ip")
    if real and (peer.startswith("127.") or peer == "::1"):
        return real
    return peer


async def _json_object(request: Request) -> dict[str, Any] | JSONResponse:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        return error(400, "Bad Request", "the request body is not JSON", "ERR_MALFORMED_REQUEST")
    if not isinstance(body, dict):
        return error(400, "Bad Request", "the request body must be a JSON object", "ERR_MALFORMED_REQUEST")
    return body


def _string_field(body: dict[str, Any], name: str, required: bool = True) -> str | JSONResponse | None:
    value = body.get(name)
    if value is None:
        if required:
            return error(400, "Bad Request", f"'{name}' is required", "ERR_MALFORMED_REQUEST", field=name)
        return None
    if not isinstance(value, str):
        return error(400, "Bad Request", f"'{name}' must be a string", "ERR_MALFORMED_REQUEST", field=name)
    return value


class Acs:
    def __init__(self, users: Users, tokens: Tokens, limit: RateLimit | None = None, hashing: int = 2) -> None:
        self.users = users
        self.tokens = tokens
        self.limit = limit or RateLimit()
        self._hashing = asyncio.Semaphore(hashing)
        self.logins = {"ok": 0, "invalid": 0, "malformed": 0, "limited": 0}

    async def _hash(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with self._hashing:
            return await run_in_threadpool(fn, *args)

    async def login(self, request: Request) -> Response:
        address = client_address(request)
        if not self.limit.allow(address):
            self.logins["limited"] += 1
            log.warning("login rate limit hit by %s", address)
            return error(429, "Too Many Requests", "too many login attempts; try again in a few seconds",
                         "ERR_RATE_LIMITED")
        body = await _json_object(request)
        if isinstance(body, JSONResponse):
            self.logins["malformed"] += 1
            return body
        fields = {}
        for name in ("uid", "password"):
            value = _string_field(body, name)
            if isinstance(value, JSONResponse):
                self.logins["malformed"] += 1
                return value
            fields[name] = value
        exp = body.get("exp")
        if exp is not None and (not isinstance(exp, int) or isinstance(exp, bool) or exp < 0):
            self.logins["malformed"] += 1
            return error(400, "Bad Request", "'exp' must be a Unix time (integer seconds)", "ERR_MALFORMED_REQUEST",
                         field="exp")
        uid, password = str(fields["uid"]), str(fields["password"])
        if not await self._hash(self.users.verify, uid, password):
            self.logins["invalid"] += 1
            log.info("login failed for %r from %s", uid, address)
            return error(401, "Unauthorized", "Invalid credentials: the uid and password do not match a user",
                         "ERR_INVALID_CREDENTIALS")
        self.logins["ok"] += 1
        now = self.tokens.clock()
        expires = min(exp, now + self.tokens.expiry) if exp else None   # 0 or absent: the default expiry
        token = self.tokens.issue(uid, expires)
        response = JSONResponse({"token": token})
        # A browser keeps the token as DC/OS's login did; Admin Router reads it when a request
        # has no Authorization header. HttpOnly and SameSite: no script and no other site sees it.
        response.set_cookie(AUTH_COOKIE, token, max_age=max(0, int((expires or now + self.tokens.expiry) - now)),
                            path="/", httponly=True, samesite="strict")
        return response

    async def logout(self, _request: Request) -> Response:
        response = Response(status_code=204)
        response.delete_cookie(AUTH_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def validate(self, request: Request) -> Response:
        header = request.headers.get("authorization")
        try:
            uid = self.tokens.check(header)
        except InvalidToken as exc:
            return unauthorized(str(exc))
        return Response(status_code=200, headers={"X-Navstar-Uid": uid,
                                                  "X-Accel-Expires": str(int(self.tokens.seconds_left(header)))})

    def _authorized(self, request: Request) -> Response | None:
        try:
            self.tokens.check(request.headers.get("authorization"))
        except InvalidToken as exc:
            return unauthorized(str(exc))
        return None

    async def list_users(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        return JSONResponse({"array": [self._user_json(u.uid, u.description) for u in self.users.list()]})

    @staticmethod
    def _user_json(uid: str, description: str) -> dict[str, Any]:
        return {"uid": uid, "description": description, "url": f"/acs/api/v1/users/{uid}",
                "is_remote": False, "is_service": False}

    async def user(self, request: Request) -> Response:
        if (denied := self._authorized(request)) is not None:
            return denied
        uid = request.path_params["uid"]
        problem = check_uid(uid)
        if problem:
            return error(400, "Bad Request", problem, "ERR_INVALID_USER_ID", field="uid")
        if request.method == "GET":
            found = self.users.get(uid)
            if found is None:
                return error(404, "Not Found", f"User with uid `{uid}` not known.", "ERR_UNKNOWN_USER_ID")
            return JSONResponse(self._user_json(found.uid, found.description))
        if request.method == "DELETE":
            if not self.users.remove(uid):
                return error(404, "Not Found", f"User with uid `{uid}` not known.", "ERR_UNKNOWN_USER_ID")
            return Response(status_code=204)
        body = await _json_object(request)
        if isinstance(body, JSONResponse):
            return body
        password = _string_field(body, "password")
        if isinstance(password, JSONResponse):
            return password
        description = _string_field(body, "description", required=False)
        if isinstance(description, JSONResponse):
            return description
        try:
            if request.method == "PUT":
                await self._hash(self.users.add, uid, password, description or "")
                return Response(status_code=201)
            await self._hash(self.users.set_password, uid, password)
            return Response(status_code=204)
        except UserExists:
            return error(409, "Conflict", f"User with uid `{uid}` already exists.", "ERR_USER_EXISTS")
        except UnknownUser:
            return error(404, "Not Found", f"User with uid `{uid}` not known.", "ERR_UNKNOWN_USER_ID")
        except ValueError as exc:
            return error(400, "Bad Request", str(exc), "ERR_MALFORMED_REQUEST", field=str(exc).split(":")[0])

    async def providers(self, _request: Request) -> Response:
        return JSONResponse({"dcos-users": {"authentication-type": "dcos-uid-password",
                                            "description": "Default DC/OS login provider", "client-method":
                                            "dcos-usercredential-post-receive-authtoken", "config": {
                                                "start_flow_url": "/acs/api/v1/auth/login"}}})

    def routes(self) -> list[Route]:
        return [
            Route("/acs/api/v1/auth/login", self.login, methods=["POST"]),
            Route("/acs/api/v1/auth/validate", self.validate, methods=["GET", "HEAD"]),
            Route("/acs/api/v1/auth/logout", self.logout, methods=["GET", "POST"]),
            Route("/acs/api/v1/auth/providers", self.providers),
            Route("/acs/api/v1/users", self.list_users),
            Route("/acs/api/v1/users/{uid}", self.user, methods=["GET", "PUT", "PATCH", "DELETE"]),
        ]
