"""``navstar marathon-lb`` and ``navstar marathon-lb-autoscale`` (registered by ``navstar.cli``)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from marathon_lb.marathon import Auth

TokenFileOpt = Annotated[str | None, typer.Option("--token-file", help="file holding the cluster secret (sent as 'Authorization: token=…')")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="NAVSTAR_TOKEN", help="the cluster secret or a login token")]
CredentialsOpt = Annotated[str | None, typer.Option(
    "--auth-credentials", envvar="MARATHON_LB_AUTH_CREDENTIALS",
    help="uid:password, exchanged for a login token at Admin Router (Marathon URL …/service/marathon)")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def make_auth(token_file: str | None, token: str | None, credentials: str | None) -> Auth:
    if credentials is not None:
        uid, sep, password = credentials.partition(":")
        if not sep or not uid or not password:
            raise _fail("--auth-credentials: expected uid:password")
        return Auth(credentials=(uid, password))
    if token_file is not None:
        try:
            text = Path(token_file).read_text().strip()
        except OSError as exc:
            raise _fail(f"--token-file: {exc}") from None
        if not text:
            raise _fail(f"--token-file: {token_file} is empty")
        return Auth(token=text)
    return Auth(token=token or None)


def _logging() -> None:
    logging.basicConfig(level=os.environ.get("NAVSTAR_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _port(name: str, value: int, allow_zero: bool = False) -> int:
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise _fail(f"{name}: {value} is not a port")
    return value


def marathon_lb(
    marathon: Annotated[str, typer.Option(help="Marathon's URL (http://<master>:8080, or http://<master>/service/marathon)")],
    group: Annotated[str, typer.Option(help="serve apps whose HAPROXY_GROUP names this group ('*': every app)")] = "external",
    haproxy_dir: Annotated[str | None, typer.Option(help="haproxy.cfg and sockets (default: $MESOS_SANDBOX/haproxy, else /run/navstar/marathon-lb)")] = None,
    token_file: TokenFileOpt = None, token: TokenOpt = None, auth_credentials: CredentialsOpt = None,
    mesos: Annotated[str | None, typer.Option(help="Mesos API, for agent addresses not in DNS (default: beside --marathon)")] = None,
    stats_port: Annotated[int, typer.Option(help="HAProxy's stats page, health check, config and metrics")] = 9090,
    http_port: Annotated[int, typer.Option(help="the HTTP frontend routing HAPROXY_{n}_VHOST by Host (0: none)")] = 80,
    bind_address: Annotated[str, typer.Option(help="address every frontend binds ('*': all)")] = "*",
    haproxy: Annotated[str, typer.Option(help="the haproxy binary")] = "haproxy",
    min_slots: Annotated[int, typer.Option(help="server slots per backend (more tasks than slots: a reload)")] = 8,
    coalesce: Annotated[float, typer.Option(help="seconds to gather a burst of events into one re-read")] = 0.2,
    resync: Annotated[float, typer.Option(help="re-read apps at least this often (s), events or not")] = 60.0,
    max_backoff: Annotated[float, typer.Option(help="longest wait (s) between reconnects to Marathon")] = 10.0,
    status_listen: Annotated[str | None, typer.Option(help="also serve /_marathon_lb/* on host:port")] = None,
) -> None:
    """Run marathon-lb: HAProxy serving the apps of --group, following Marathon's events."""
    from marathon_lb.service import Options, run

    auth = make_auth(token_file, token, auth_credentials)
    if not marathon.startswith(("http://", "https://")):
        raise _fail(f"--marathon: expected an http(s) URL, got {marathon!r}")
    if not group or any(c.isspace() or c == "," for c in group):
        raise _fail(f"--group: {group!r} is not a group name")
    if min_slots < 1:
        raise _fail(f"--min-slots: must be at least 1, got {min_slots}")
    for name, value in (("--coalesce", coalesce), ("--resync", resync), ("--max-backoff", max_backoff)):
        if value < 0 or (name != "--coalesce" and value == 0):
            raise _fail(f"{name}: must be positive, got {value:g}")
    listen: tuple[str, int] | None = None
    if status_listen:
        host, _, port = status_listen.rpartition(":")
        if not port.isdigit():
            raise _fail(f"--status-listen: expected host:port, got {status_listen!r}")
        listen = (host or "127.0.0.1", _port("--status-listen", int(port)))
    sandbox = os.environ.get("MESOS_SANDBOX")
    run_dir = Path(haproxy_dir) if haproxy_dir else Path(sandbox) / "haproxy" if sandbox else Path("/run/navstar/marathon-lb")
    _logging()
    opts = Options(marathon=marathon, group=group, run_dir=run_dir, auth=auth, mesos=mesos,
                   stats_port=_port("--stats-port", stats_port), http_port=_port("--http-port", http_port, True),
                   bind_address=bind_address, haproxy=haproxy, min_slots=min_slots, coalesce=coalesce,
                   resync=resync, max_backoff=max_backoff, status_listen=listen)
    asyncio.run(run(opts))


def marathon_lb_autoscale(
    marathon: Annotated[str, typer.Option(help="Marathon's URL")],
    haproxy: Annotated[str, typer.Option(help="marathon-lb's stats URL(s), comma-separated (http://<lb>:9090)")],
    apps: Annotated[str, typer.Option(help="<app>_<servicePort> backends to watch, comma-separated")],
    target_rps: Annotated[float, typer.Option(help="requests per second each instance should take")] = 1000,
    interval: Annotated[float, typer.Option(help="seconds between samples")] = 60.0,
    samples: Annotated[int, typer.Option(help="samples averaged (and taken before the first decision)")] = 10,
    cooldown: Annotated[int, typer.Option(help="intervals to wait after a scale before the next one")] = 5,
    tolerance: Annotated[float, typer.Option(help="hold while rps per instance is within target × (1 ± this)")] = 0.1,
    min_instances: Annotated[int, typer.Option(help="never fewer instances")] = 1,
    max_instances: Annotated[int, typer.Option(help="never more instances")] = 100,
    token_file: TokenFileOpt = None, token: TokenOpt = None, auth_credentials: CredentialsOpt = None,
) -> None:
    """Scale apps to a target of requests per second per instance, from marathon-lb's stats."""
    from marathon_lb.autoscale import Policy, run_autoscale

    auth = make_auth(token_file, token, auth_credentials)
    try:
        policy = Policy(target_rps=target_rps, samples=samples, cooldown=cooldown, tolerance=tolerance,
                        min_instances=min_instances, max_instances=max_instances)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if interval <= 0:
        raise _fail(f"--interval: must be positive, got {interval:g}")
    names = [a.strip() for a in apps.split(",") if a.strip()]
    from marathon_lb.autoscale import parse_backend

    for name in names:
        if parse_backend(name) is None:
            raise _fail(f"--apps: {name!r} is not <app>_<servicePort>")
    if not names:
        raise _fail("--apps: name at least one <app>_<servicePort>")
    urls = [u.strip().rstrip("/") for u in haproxy.split(",") if u.strip()]
    for url in [marathon, *urls]:
        if not url.startswith(("http://", "https://")):
            raise _fail(f"expected an http(s) URL, got {url!r}")
    _logging()
    asyncio.run(run_autoscale(marathon, urls, names, policy, interval, auth))
