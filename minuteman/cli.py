"""``navstar vip …``: what the local agent's load balancer serves (asks its REST API)."""

from __future__ import annotations

import json
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

vip_app = typer.Typer(no_args_is_help=True, help="Layer-4 VIPs served by this node's load balancer.")

_STATE_STYLE = {"up": "green", "draining": "yellow", "quarantined": "red", "unhealthy": "red", "unreachable": "red"}


@vip_app.command("list")
def vip_list(
    as_json: Annotated[bool, typer.Option("--json", help="print the agent's answer as JSON")] = False,
    agent: Annotated[str, typer.Option(help="the agent's local API")] = "http://127.0.0.1:62080",
) -> None:
    """VIPs with name, address, backends, their health and connection counts."""
    err = Console(stderr=True)
    url = f"{agent.rstrip('/')}/v1/vips"
    try:
        response = httpx.get(url, params={"detail": "true"}, timeout=5)
        response.raise_for_status()
        vips = response.json()
    except httpx.HTTPStatusError as exc:
        err.print(f"[red]{url} answered {exc.response.status_code}:[/] {exc.response.text[:300]}")
        raise typer.Exit(1) from None
    except (httpx.HTTPError, ValueError) as exc:
        err.print(f"[red]cannot read VIPs from {url}:[/] {exc} (is the agent running? try --agent URL)")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(vips, indent=2))
        return
    table = Table(title=f"VIPs at {agent}")
    for column in ("VIP", "name", "address", "proto", "backends (state, connections)", "status"):
        table.add_column(column, overflow="fold")
    for vip in vips:
        backends = "\n".join(
            f"{b['ip']}:{b['port']} [{_STATE_STYLE.get(b['state'], 'white')}]{b['state']}[/] {b['connections']}"
            + (f" ({b['failures']} failed)" if b["failures"] else "")
            for b in vip["backend"]) or "(none)"
        status = f"[red]{vip['error']}[/]" if vip["error"] else ("programmed" if vip["programmed"] else "pending")
        table.add_row(vip["vip"], vip["name"] or "-", f"{vip['address']}:{vip['port']}", vip["protocol"],
                      backends, status)
    Console().print(table)
