"""Users, login and tokens as Admin Router's backend serves them (issue 12, step 1)."""

from __future__ import annotations

import base64
import json

import httpx
import jwt
import pytest
from argon2 import PasswordHasher

from adminrouter.acs import RateLimit
from adminrouter.backend import backend_app, signing_key
from adminrouter.tokens import CLUSTER_UID, InvalidToken, Tokens, token_from_header
from control.agent_client import FakeAgents
from control.master import Master
from control.state_memory import MemoryStore
from control.users import UserExists, Users

pytestmark = pytest.mark.unit

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)   # argon2id, test-sized
SECRET = "cluster-secret"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def master() -> Master:
    return Master(secret=SECRET, store=MemoryStore(), agent_client=FakeAgents())


@pytest.fixture
def users(master: Master) -> Users:
    users = Users(master.store, FAST)
    users.add("alice", "wonderland", "Alice")
    return users


def client(master: Master, users: Users, limit: RateLimit | None = None, expiry: float = 3600) -> httpx.AsyncClient:
    app = backend_app(master, token_expiry=expiry, limit=limit, users=users)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("203.0.113.7", 4000)),
                             base_url="http://adminrouter")


# -- users ---------------------------------------------------------------------------------
def test_users_are_kept_in_the_store_as_argon2id_hashes_never_the_password(master: Master, users: Users) -> None:
    record = master.store.get("users", "alice")
    assert record["hash"].startswith("$argon2id$") and "wonderland" not in json.dumps(record)
    assert users.verify("alice", "wonderland") and not users.verify("alice", "wrong")
    assert not users.verify("nobody", "wonderland")
    with pytest.raises(UserExists):
        users.add("alice", "again")
    with pytest.raises(ValueError, match="uid"):
        users.add("bad uid!", "x")
    with pytest.raises(ValueError, match="password"):
        users.add("bob", "")
    assert [u.uid for u in users.list()] == ["alice"]
    assert users.remove("alice") and not users.remove("alice") and users.list() == []


def test_a_restarted_master_keeps_users_and_the_signing_key(tmp_path) -> None:
    first = Master(secret=SECRET, state_dir=str(tmp_path), agent_client=FakeAgents())
    Users(first.store, FAST).add("alice", "wonderland")
    key = signing_key(first.store)
    first.close()
    second = Master(secret=SECRET, state_dir=str(tmp_path), agent_client=FakeAgents())
    assert Users(second.store, FAST).verify("alice", "wonderland")
    assert signing_key(second.store) == key
    second.close()


# -- tokens --------------------------------------------------------------------------------
def test_both_header_forms_carry_the_token() -> None:
    assert token_from_header("token=abc") == "abc"
    assert token_from_header("Bearer abc") == "abc"
    assert token_from_header("bearer abc") == "abc"
    assert token_from_header("Basic abc") is None and token_from_header(None) is None
    assert token_from_header("token=") is None


def test_expired_tampered_and_alg_none_tokens_are_refused() -> None:
    clock = Clock()
    tokens = Tokens("k" * 32, expiry=60, clock=clock)
    good = tokens.issue("alice")
    assert tokens.check(f"token={good}") == "alice"
    head, body, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged_body = base64.urlsafe_b64encode(json.dumps({**claims, "uid": "root"}).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        tokens.check(f"token={head}.{forged_body}.{sig}")
    unsigned = jwt.encode({"uid": "alice", "exp": int(clock.now) + 60}, None, algorithm="none")
    with pytest.raises(InvalidToken):
        tokens.check(f"token={unsigned}")
    other_key = jwt.encode({"uid": "alice", "exp": int(clock.now) + 60}, "x" * 32, algorithm="HS256")
    with pytest.raises(InvalidToken):
        tokens.check(f"Bearer {other_key}")
    # jwt checks expiry against the real clock: a token that expired long ago.
    expired = tokens.issue("alice", expires_at=1_000_000_000)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.check(f"token={expired}")


def test_answers_come_from_a_short_cache_that_never_outlives_the_token() -> None:
    clock = Clock()
    valid = {"alice"}
    tokens = Tokens("k" * 32, expiry=3600, cache_seconds=5, clock=clock, still_valid=lambda uid: uid in valid)
    header = f"token={tokens.issue('alice')}"
    assert tokens.check(header) == "alice" and (tokens.hits, tokens.misses) == (0, 1)
    assert tokens.check(header) == "alice" and tokens.hits == 1
    assert tokens.seconds_left(header) == 5
    clock.now += 6
    tokens.check(header)
    assert tokens.misses == 2
    valid.clear()                       # the user was removed: cached or not, the token stops working
    with pytest.raises(InvalidToken):
        tokens.check(header)


def test_the_cluster_secret_is_a_service_credential() -> None:
    tokens = Tokens("k" * 32, cluster_secret=SECRET, still_valid=lambda _uid: False)
    assert tokens.check(f"token={SECRET}") == CLUSTER_UID
    with pytest.raises(InvalidToken):
        tokens.check("token=not-the-secret")


# -- the HTTP face ---------------------------------------------------------------------------
async def test_login_returns_a_jwt_the_validator_accepts(master: Master, users: Users) -> None:
    async with client(master, users, expiry=3600) as http:
        resp = await http.post("/acs/api/v1/auth/login", json={"uid": "alice", "password": "wonderland"})
        assert resp.status_code == 200
        token = resp.json()["token"]
        claims = jwt.decode(token, signing_key(master.store), algorithms=["HS256"])
        assert claims["uid"] == "alice" and 3590 <= claims["exp"] - master.clock() <= 3610
        for header in (f"token={token}", f"Bearer {token}"):
            ok = await http.get("/acs/api/v1/auth/validate", headers={"Authorization": header})
            assert ok.status_code == 200 and ok.headers["x-navstar-uid"] == "alice"
        missing = await http.get("/acs/api/v1/auth/validate")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "acsjwt"


async def test_login_sets_the_browser_cookie_and_logout_clears_it(master: Master, users: Users) -> None:
    async with client(master, users, expiry=3600) as http:
        resp = await http.post("/acs/api/v1/auth/login", json={"uid": "alice", "password": "wonderland"})
        cookie = resp.headers["set-cookie"]
        assert cookie.startswith(f"dcos-acs-auth-cookie={resp.json()['token']};")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert 3590 <= int(cookie.split("Max-Age=")[1].split(";")[0]) <= 3600
        out = await http.post("/acs/api/v1/auth/logout")
        assert out.status_code == 204
        assert out.headers["set-cookie"].startswith('dcos-acs-auth-cookie="";') and "Max-Age=0" in out.headers["set-cookie"]


async def test_default_expiry_is_five_days(master: Master, users: Users) -> None:
    app = backend_app(master, users=users)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as http:
        token = (await http.post("/acs/api/v1/auth/login", json={"uid": "alice", "password": "wonderland"})).json()
    exp = jwt.decode(token["token"], options={"verify_signature": False})["exp"]
    assert abs(exp - master.clock() - 5 * 24 * 3600) < 10


async def test_wrong_password_gets_dcos_error_body(master: Master, users: Users) -> None:
    async with client(master, users) as http:
        for creds in ({"uid": "alice", "password": "nope"}, {"uid": "nobody", "password": "wonderland"}):
            resp = await http.post("/acs/api/v1/auth/login", json=creds)
            assert resp.status_code == 401
            assert resp.headers["www-authenticate"] == "acsjwt"
            body = resp.json()
            assert body["code"] == "ERR_INVALID_CREDENTIALS" and body["title"] and body["description"]


@pytest.mark.parametrize(("body", "field"), [
    ({"password": "x"}, "uid"), ({"uid": "alice"}, "password"), ({"uid": 7, "password": "x"}, "uid"),
    ({"uid": "alice", "password": "wonderland", "exp": "soon"}, "exp"),
])
async def test_malformed_login_is_400_naming_the_field(master: Master, users: Users, body, field) -> None:
    async with client(master, users) as http:
        resp = await http.post("/acs/api/v1/auth/login", json=body)
    assert resp.status_code == 400 and resp.json()["field"] == field and field in resp.json()["description"]


async def test_login_body_that_is_not_a_json_object_is_400(master: Master, users: Users) -> None:
    async with client(master, users) as http:
        assert (await http.post("/acs/api/v1/auth/login", content=b"uid=alice")).status_code == 400
        assert (await http.post("/acs/api/v1/auth/login", json=["alice"])).status_code == 400


async def test_thirty_wrong_passwords_in_a_second_meet_429(master: Master, users: Users) -> None:
    async with client(master, users, limit=RateLimit(rate=2, burst=10)) as http:
        codes = [(await http.post("/acs/api/v1/auth/login", json={"uid": "alice", "password": f"guess{i}"})).status_code
                 for i in range(30)]
    assert codes[:10] == [401] * 10 and codes.count(429) >= 15
    assert set(codes) == {401, 429}


def test_rate_limit_is_per_address_and_refills() -> None:
    clock = Clock(0)
    limit = RateLimit(rate=1, burst=2, clock=clock)
    assert [limit.allow("a") for _ in range(3)] == [True, True, False]
    assert limit.allow("b")
    clock.now += 1
    assert limit.allow("a") and not limit.allow("a")


async def test_users_api_needs_a_token_and_manages_users(master: Master, users: Users) -> None:
    async with client(master, users) as http:
        assert (await http.get("/acs/api/v1/users")).status_code == 401
        admin = {"Authorization": f"token={SECRET}"}
        put = await http.put("/acs/api/v1/users/bob", json={"password": "builder", "description": "Bob"}, headers=admin)
        assert put.status_code == 201
        again = await http.put("/acs/api/v1/users/bob", json={"password": "x"}, headers=admin)
        assert again.status_code == 409 and again.json()["code"] == "ERR_USER_EXISTS"
        listed = (await http.get("/acs/api/v1/users", headers=admin)).json()["array"]
        assert [u["uid"] for u in listed] == ["alice", "bob"]
        login = await http.post("/acs/api/v1/auth/login", json={"uid": "bob", "password": "builder"})
        bob = {"Authorization": f"token={login.json()['token']}"}
        assert (await http.get("/acs/api/v1/users/bob", headers=bob)).json()["description"] == "Bob"
        assert (await http.delete("/acs/api/v1/users/bob", headers=admin)).status_code == 204
        assert (await http.get("/acs/api/v1/auth/validate", headers=bob)).status_code == 401
        assert (await http.delete("/acs/api/v1/users/bob", headers=admin)).status_code == 404


async def test_users_api_answers_503_while_the_store_refuses_writes_and_login_still_works(
        master: Master, users: Users) -> None:
    async with client(master, users) as http:
        admin = {"Authorization": f"token={SECRET}"}
        master.store.writable = "the state directory /var/lib/navstar is read-only"  # type: ignore[attr-defined]
        put = await http.put("/acs/api/v1/users/bob", json={"password": "builder"}, headers=admin)
        assert put.status_code == 503 and "is read-only" in put.json()["reason"]
        assert (await http.delete("/acs/api/v1/users/alice", headers=admin)).status_code == 503
        login = await http.post("/acs/api/v1/auth/login", json={"uid": "alice", "password": "wonderland"})
        assert login.status_code == 200
        token = {"Authorization": f"token={login.json()['token']}"}
        assert (await http.get("/acs/api/v1/auth/validate", headers=token)).status_code == 200
        assert [u["uid"] for u in (await http.get("/acs/api/v1/users", headers=admin)).json()["array"]] == ["alice"]
        master.store.writable = None  # type: ignore[attr-defined]
        assert (await http.put("/acs/api/v1/users/bob", json={"password": "builder"}, headers=admin)).status_code == 201
