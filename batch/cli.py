"""``navstar job run --service NAME --parallel N -- CMD``: a job for a batch framework, through
Admin Router (``/service/<name>/v1/jobs``), waited for and its tasks' results printed."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

job_cli = typer.Typer(no_args_is_help=True, help="Jobs of the batch framework (a Mesos framework run as a Marathon app).")
err = Console(stderr=True)

# Admin Router's URL and the headers that log in to it, by lab name (None: no such lab is up);
# set by the composition root (``navstar.cli``), which knows about labs.
LabFrontDoor = Callable[[str], tuple[str, dict[str, str]] | None]
_lab_front_door: LabFrontDoor | None = None


def use_lab_front_door_for_jobs(locate: LabFrontDoor) -> None:
    global _lab_front_door
    _lab_front_door = locate


def _target(url: str | None, lab: str, token: str | None) -> tuple[str, dict[str, str]]:
    token = token or os.environ.get("NAVSTAR_TOKEN")
    if url is None:
        found = _lab_front_door(lab) if _lab_front_door is not None else None
        if found is None:
            err.print(f"[red]no --url given and lab {lab!r} is not up[/] (start it with `navstar lab up`)")
            raise typer.Exit(2)
        url, headers = found
    else:
        headers = {}
    if token:
        headers = {"Authorization": f"token={token}"}
    return url.rstrip("/"), headers


def _call(method: str, url: str, headers: dict[str, str], **kwargs: Any) -> Any:
    try:
        response = httpx.request(method, url, headers=headers, timeout=kwargs.pop("timeout", 10.0), **kwargs)
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach {url}:[/] {exc}")
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        try:
            body = response.json()
            err.print(f"[red]HTTP {response.status_code}: {body.get('message', '')}[/]")
            for detail in body.get("details") or []:
                err.print(f"  {detail.get('path')}: {'; '.join(detail.get('errors', []))}")
        except ValueError:
            err.print(f"[red]HTTP {response.status_code}:[/] {response.text[:300]}")
        raise typer.Exit(1)
    return response.json()


@job_cli.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def job_run(ctx: typer.Context,
            service: Annotated[str, typer.Option("--service", help="the batch framework's service name "
                                                                   "(its app's DCOS_SERVICE_NAME)")],
            parallel: Annotated[int, typer.Option("--parallel", help="how many tasks the job runs")] = 1,
            cpus: Annotated[float, typer.Option("--cpus", help="cpus per task")] = 0.1,
            mem: Annotated[float, typer.Option("--mem", help="memory per task (MB)")] = 32,
            wait: Annotated[float, typer.Option("--wait", help="seconds to wait for the job (0: do not wait)")] = 300,
            url: Annotated[str | None, typer.Option("--url", help="Admin Router URL (default: the lab's)")] = None,
            lab: Annotated[str, typer.Option("--lab", help="lab to use when --url is not given")] = "lab",
            token: Annotated[str | None, typer.Option("--token", help="token (default: $NAVSTAR_TOKEN or the lab's)")]
            = None,
            as_json: Annotated[bool, typer.Option("--json", help="print the job's JSON")] = False) -> None:
    """Runs CMD (after --) as a job of PARALLEL tasks; exits 1 unless every task finished."""
    command = " ".join(ctx.args).strip()
    if not command:
        err.print("[red]give the command after --, e.g. navstar job run --service batch -- echo hi[/]")
        raise typer.Exit(2)
    base, headers = _target(url, lab, token)
    service_url = f"{base}/service/{service}"
    job = _call("POST", f"{service_url}/v1/jobs", headers,
                json={"cmd": command, "parallel": parallel, "cpus": cpus, "mem": mem})
    deadline = time.monotonic() + wait
    while not job["done"] and time.monotonic() < deadline:
        left = max(1.0, min(30.0, deadline - time.monotonic()))
        job = _call("GET", f"{service_url}/v1/jobs/{job['id']}", headers, params={"wait": left}, timeout=left + 10)
    if as_json:
        sys.stdout.write(json.dumps(job, indent=2) + "\n")
    else:
        table = Table(title=f"job {job['id']} on {service}: {job['cmd']}")
        for column in ("task", "agent", "state", "message"):
            table.add_column(column, overflow="fold")
        for task in job["tasks"]:
            table.add_row(task["task_id"], task["agent_id"] or "-", task["state"], task["message"])
        Console().print(table)
        Console().print(f"{job['succeeded']} of {job['parallel']} finished, {job['failed']} failed"
                        + ("" if job["done"] else " (still running)"))
    if not job["done"] or job["failed"]:
        raise typer.Exit(1)
