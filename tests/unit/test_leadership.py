"""Several masters without ZooKeeper: MasterInfo as Mesos encodes it, zk:// addresses, what a
follower's ports answer, and the leader's 503 while its store refuses writes."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from control.http.follower import follower_marathon_app, follower_mesos_app
from control.http.ha import LeaderRedirect, StoreGuard
from control.leadership import Leadership, MasterAddress, ip_from_mesos, ip_to_mesos, master_info
from control.state import StoreUnavailable
from control.zk import ZkUrl, ZkUrlError


def test_master_info_is_mesos_json_with_the_s_addr_ip() -> None:
    info = master_info("navstar-1", "198.18.0.2", 5050)
    # 198.18.0.2 is c6 12 00 02 in network order; Mesos stores s_addr, read little-endian.
    assert info["ip"] == 0x020012C6 == ip_to_mesos("198.18.0.2")
    assert ip_from_mesos(info["ip"]) == "198.18.0.2"
    assert info == {"id": "navstar-1", "ip": 33559238, "port": 5050, "pid": "master@198.18.0.2:5050",
                    "hostname": "198.18.0.2", "version": info["version"],
                    "address": {"hostname": "198.18.0.2", "ip": "198.18.0.2", "port": 5050}}
    parsed = MasterAddress.parse(json.dumps(info).encode())
    assert parsed == MasterAddress("navstar-1", "198.18.0.2", 5050, "198.18.0.2")
    assert parsed.url == "http://198.18.0.2:5050"


def test_master_info_from_an_older_mesos_without_address_uses_the_uint32() -> None:
    raw = json.dumps({"id": "m", "ip": ip_to_mesos("10.0.0.7"), "port": 5050, "pid": "master@10.0.0.7:5050"})
    assert MasterAddress.parse(raw.encode()).ip == "10.0.0.7"


@pytest.mark.parametrize("data", [b"not json", b"{}", b'{"id": "m", "ip": "x"}', b"[1]"])
def test_garbage_in_a_znode_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="not MasterInfo JSON"):
        MasterAddress.parse(data)


def test_zk_urls() -> None:
    url = ZkUrl.parse("zk://198.18.0.2:2181,198.18.0.3:2181/mesos")
    assert (url.hosts, url.path, str(url)) == ("198.18.0.2:2181,198.18.0.3:2181", "/mesos",
                                               "zk://198.18.0.2:2181,198.18.0.3:2181/mesos")
    for bad in ("http://a:1/mesos", "zk://a:1", "zk://a:1/", "zk:///mesos", "zk://a/mesos", "zk://a:x/mesos",
                "zk://a:70000/mesos"):
        with pytest.raises(ZkUrlError, match="zk://"):
            ZkUrl.parse(bad)


LEADER = MasterAddress("m1", "198.18.0.3", 5050, "198.18.0.3")


def test_follower_mesos_port_redirects_to_the_leader() -> None:
    current = Leadership(LEADER, (LEADER,))
    client = TestClient(follower_mesos_app(lambda: current), follow_redirects=False)
    assert client.get("/ping").text == "pong"
    resp = client.get("/master/redirect")
    assert resp.status_code == 307 and resp.headers["location"] == "http://198.18.0.3:5050"
    resp = client.post("/v1/agents?x=1", json={})
    assert resp.status_code == 307 and resp.headers["location"] == "http://198.18.0.3:5050/v1/agents?x=1"
    current = Leadership(None)
    resp = client.get("/master/state")
    assert resp.status_code == 503 and "no leader" in resp.json()["message"]


def test_follower_marathon_port_names_the_leader_and_checks_the_token() -> None:
    current = Leadership(LEADER, (LEADER,))
    client = TestClient(follower_marathon_app(lambda: current, "s3cret"))
    assert client.get("/ping").text == "pong"
    assert client.get("/v2/leader").status_code == 401
    headers = {"Authorization": "token=s3cret"}
    assert client.get("/v2/leader", headers=headers).json() == {"leader": "198.18.0.3:8080"}
    current = Leadership(None)
    assert client.post("/v2/apps", json={}, headers=headers).status_code == 503


class _Store:
    writable: str | None = None


def _guarded(store: _Store) -> TestClient:
    async def write(_request: Request) -> JSONResponse:
        return JSONResponse({"ok": True}, status_code=201)

    async def fails(_request: Request) -> JSONResponse:
        raise StoreUnavailable("ZooKeeper is not reachable (session suspended): no quorum")

    app = Starlette(routes=[Route("/v2/apps", write, methods=["GET", "POST"]),
                            Route("/v1/agents/a/statuses", fails, methods=["POST"])])
    app.add_middleware(StoreGuard, store=lambda: store)
    app.add_middleware(LeaderRedirect, address=lambda: "198.18.0.2:5050")
    return TestClient(app, follow_redirects=False)


def test_writes_get_503_json_while_the_store_refuses_and_reads_keep_serving() -> None:
    store = _Store()
    client = _guarded(store)
    assert client.post("/v2/apps").status_code == 201
    store.writable = "ZooKeeper is not reachable (session suspended): no quorum"
    refused = client.post("/v2/apps")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["reason"] == store.writable and "cannot change its state" in refused.json()["message"]
    assert client.get("/v2/apps").status_code == 201      # the handler's answer: reads pass
    # Raised by a handler (an agent's statuses): 503 with the reason, never a 500.
    raised = client.post("/v1/agents/a/statuses")
    assert raised.status_code == 503 and "no quorum" in raised.json()["reason"]
    redirect = client.get("/master/redirect")
    assert redirect.status_code == 307 and redirect.headers["location"] == "http://198.18.0.2:5050"
