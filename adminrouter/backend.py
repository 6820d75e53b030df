"""The Python side of Admin Router, served by each master process on loopback
(``--adminrouter-listen``, default ``127.0.0.1:8101``, where DC/OS' IAM listened): the IAM face
(``acs``), the view faces (``faces``) and ``/ping``. nginx is its only client; login and the
users API are open to it, everything else behind its ``auth_request``.

The JWT signing key is kept in the master's state store (``meta``/``acs_signing_key``), made
once, so tokens survive a master restart.
"""

from __future__ import annotations

import secrets

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from adminrouter.acs import Acs, RateLimit
from adminrouter.faces import ViewFaces
from adminrouter.tokens import DEFAULT_EXPIRY, Tokens
from control.http.ha import StoreGuard
from control.master import Master
from control.mesos_state import mesos_state, state_summary
from control.state import StateStore
from control.users import Users

DEFAULT_LISTEN = "127.0.0.1:8101"


def signing_key(store: StateStore) -> str:
    """The cluster's JWT signing key, made on first use and kept in the store."""
    key = store.get("meta", "acs_signing_key")
    if not key:
        key = secrets.token_hex(32)
        store.put("meta", "acs_signing_key", key)
    return str(key)


def backend_app(master: Master, token_expiry: float = DEFAULT_EXPIRY, limit: RateLimit | None = None,
                users: Users | None = None) -> Starlette:
    users = users or Users(master.store)
    tokens = Tokens(signing_key(master.store), expiry=token_expiry, cluster_secret=master.secret,
                    still_valid=users.exists)
    acs = Acs(users, tokens, limit)
    faces = ViewFaces(master.view, lambda: master.master_id, lambda: mesos_state(master), state_summary)

    async def pong(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    app = Starlette(routes=[Route("/ping", pong), *acs.routes(), *faces.routes()])
    # The users API writes the master's store: refused with a JSON 503 while it cannot (login stays open).
    app.add_middleware(StoreGuard, store=lambda: master.store)
    app.state.acs = acs
    return app
